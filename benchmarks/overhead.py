"""What a cache hit costs: TieredCache against LangChain's own caches, side by side.

Method: every contender caches the same real answer (one ChatOpenAI call to the
local simulator, so the stored value has usage, metadata and ids like a real
one). Then rounds interleave the contenders in a shuffled order, each round
timing ``--calls`` consecutive hits per contender with ``perf_counter``, so
drift on the machine (other processes, CPU frequency) spreads over all of
them alike. Two levels: ``lookup`` (the BaseCache call alone, with the prompt
and llm_string LangChain would pass) and ``invoke`` (the whole
``ChatOpenAI.invoke`` on a hit). Figures are percentiles over every timed
call; ratios compare medians.

    python benchmarks/overhead.py            # full run, writes benchmarks/results/overhead.*
    python benchmarks/overhead.py --quick    # a smoke run for CI (not for publishing)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from langchain_core.caches import BaseCache, InMemoryCache
from langchain_core.load import dumps
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from llmcache import DiskTier, TieredCache
from llmcache.simulator import Simulator, SimulatorConfig
from llmcache.stats import percentile

PROMPT = "Estimate the nutrients of one serving of dolsot bibimbap: carbs, protein, fat, sodium."
RESULTS = Path(__file__).with_name("results")
PERCENTILES = ("median_us", "p90_us", "p99_us")


@dataclass
class Contender:
    name: str
    cache: BaseCache
    model: ChatOpenAI
    samples: dict[str, list[float]] = field(default_factory=lambda: {"lookup": [], "invoke": []})


def _sqlite_cache(directory: Path) -> BaseCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.cache import SQLiteCache

    return SQLiteCache(database_path=str(directory / "langchain.db"))


def build_contenders(base_url: str, directory: Path) -> list[Contender]:
    caches: dict[str, BaseCache] = {
        "langchain InMemoryCache": InMemoryCache(),
        "langchain-community SQLiteCache": _sqlite_cache(directory),
        "TieredCache L1 (memory)": TieredCache(l2=None),
        "TieredCache L2 (disk, L1 off)": TieredCache(l1=None, l2=DiskTier(directory / "disk")),
    }
    contenders = []
    for name, cache in caches.items():
        model = ChatOpenAI(
            model="gpt-4o-mini", temperature=0, base_url=base_url, api_key="sim", cache=cache
        )
        model.invoke(PROMPT)  # the miss that stores a real answer
        contenders.append(Contender(name, cache, model))
    return contenders


def _timed(call: Callable[[], Any], calls: int, into: list[float]) -> None:
    gc.collect()
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        call()
        into.append(clock() - start)


def measure(contenders: list[Contender], rounds: int, calls: int, seed: int) -> None:
    prompt = dumps([HumanMessage(PROMPT)])
    rng = random.Random(seed)
    for contender in contenders:  # every contender must be answering from its cache
        llm_string = contender.model._get_llm_string()
        if not isinstance(contender.cache.lookup(prompt, llm_string), list):
            raise SystemExit(f"{contender.name}: the warm-up answer is not in the cache")
    for _ in range(rounds):
        order = contenders[:]
        rng.shuffle(order)
        for contender in order:
            lookup = partial(contender.cache.lookup, prompt, contender.model._get_llm_string())
            _timed(lookup, calls, contender.samples["lookup"])
            _timed(partial(contender.model.invoke, PROMPT), calls // 2, contender.samples["invoke"])


def summarize(contenders: list[Contender]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for contender in contenders:
        table[contender.name] = {
            level: {
                "median_us": percentile(us, 50),
                "p90_us": percentile(us, 90),
                "p99_us": percentile(us, 99),
                "calls": len(us),
            }
            for level, samples in contender.samples.items()
            for us in [[s * 1e6 for s in samples]]
        }
    return table


def goals(table: dict[str, Any]) -> list[dict[str, Any]]:
    def median(name: str, level: str) -> float:
        return float(table[name][level]["median_us"])

    memory, sqlite = "langchain InMemoryCache", "langchain-community SQLiteCache"
    l1, disk = "TieredCache L1 (memory)", "TieredCache L2 (disk, L1 off)"
    checks = [
        (
            "L1 hit through invoke vs InMemoryCache (x, lower is better)",
            median(l1, "invoke") / median(memory, "invoke"),
            "<=",
            1.10,
        ),
        (
            "disk L2 lookup speed-up vs SQLiteCache (x)",
            median(sqlite, "lookup") / median(disk, "lookup"),
            ">=",
            10.0,
        ),
        (
            "disk L2 invoke speed-up vs SQLiteCache (x)",
            median(sqlite, "invoke") / median(disk, "invoke"),
            ">=",
            3.0,
        ),
    ]
    return [
        {
            "goal": what,
            "measured": round(value, 3),
            "target": f"{op} {target}",
            "met": value <= target if op == "<=" else value >= target,
        }
        for what, value, op, target in checks
    ]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Cache-hit overhead ({report['mode']} run, {report['date']})",
        "",
        f"Python {report['python']}, {report['machine']}; {report['rounds']} interleaved rounds "
        f"of {report['calls']} lookups and {report['calls'] // 2} invokes per contender. "
        "Microseconds per call.",
        "",
        "| contender | lookup median | p90 | p99 | invoke median | p90 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, levels in report["results"].items():
        lookup, invoke = levels["lookup"], levels["invoke"]
        cells = [lookup[k] for k in PERCENTILES] + [invoke[k] for k in PERCENTILES]
        lines.append(f"| {name} | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")
    lines += ["", "| goal | measured | target | met |", "|---|---:|---|---|"]
    for goal in report["goals"]:
        met = "yes" if goal["met"] else "no"
        lines.append(f"| {goal['goal']} | {goal['measured']} | {goal['target']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds, calls = (2, 100) if args.quick else (args.rounds, args.calls)
    with tempfile.TemporaryDirectory() as tmp, Simulator(SimulatorConfig()) as sim:
        contenders = build_contenders(sim.base_url, Path(tmp))
        measure(contenders, rounds, calls, args.seed)
    report = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "rounds": rounds,
        "calls": calls,
        "results": summarize(contenders),
    }
    report["goals"] = goals(report["results"])
    text = markdown(report)
    print(text)
    stem = "overhead-quick" if args.quick else "overhead"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
