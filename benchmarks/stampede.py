"""Stampedes: identical prompts in flight at once, TieredCache against LangChain's InMemoryCache.

Two workloads, each on an empty cache, through the real ``ChatOpenAI.ainvoke``
over HTTP to the local simulator (which counts the upstream requests and
answers after ``--latency-ms``):

* ``identical``: ``--identical`` (50) copies of one prompt under ``asyncio.gather``.
* ``zipf``: a ``--batch`` (500) of prompts drawn with Zipf-distributed repeats
  (exponent ``--zipf-s`` over ``--distinct`` prompts, seeded) run through an
  ``asyncio.Semaphore(--concurrency)``, the pattern of a progress-bar batch job.

Contenders: LangChain's ``InMemoryCache``; ``TieredCache`` (memory L1 + disk L2,
the default shape) with ``coalesce=False``, which shows the cache without
coalescing; and ``TieredCache`` as shipped. Every round gives each contender a
fresh cache and prompts no round has used, in a shuffled order, all in one
event loop against one simulator. Reported per contender: upstream calls (the
simulator's count; every round gives the same, as the draws are seeded per
round) and wall time (median, min and max over rounds).

    python benchmarks/stampede.py            # full run, writes benchmarks/results/stampede.*
    python benchmarks/stampede.py --quick    # a smoke run for CI (not for publishing)
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _results import write_results
from langchain_core.caches import BaseCache, InMemoryCache
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from llmcache import DiskTier, TieredCache
from llmcache.simulator import Simulator, SimulatorConfig

RESULTS = Path(__file__).with_name("results")
SETTINGS = ("rounds", "latency_ms", "identical", "batch", "distinct", "zipf_s", "concurrency")
CONTENDERS = ("langchain InMemoryCache", "TieredCache coalesce=False", "TieredCache")


def make_cache(name: str, directory: Path) -> BaseCache:
    if name == "langchain InMemoryCache":
        return InMemoryCache()
    path = directory / uuid.uuid4().hex
    return TieredCache(l2=DiskTier(path), coalesce=name == "TieredCache")


def zipf_prompts(count: int, distinct: int, s: float, rng: random.Random, salt: str) -> list[str]:
    weights = [1 / rank**s for rank in range(1, distinct + 1)]
    ranks = rng.choices(range(distinct), weights=weights, k=count)
    return [f"[{salt}] question {rank}: nutrients of dish {rank}?" for rank in ranks]


async def identical(model: ChatOpenAI, salt: str, copies: int) -> None:
    prompt = f"[{salt}] the same question, asked {copies} times at once"
    await asyncio.gather(*(model.ainvoke(prompt) for _ in range(copies)))


async def zipf(model: ChatOpenAI, prompts: list[str], concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def ask(prompt: str) -> None:
        async with limit:
            await model.ainvoke(prompt)

    await asyncio.gather(*(ask(prompt) for prompt in prompts))


async def measure(args: argparse.Namespace, sim: Simulator, directory: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        workload: {name: {"calls": [], "seconds": []} for name in CONTENDERS}
        for workload in ("identical", "zipf")
    }
    distinct_drawn: list[int] = []
    for _ in range(args.rounds):
        draw = random.Random(rng.random())  # the same draw for every contender of a round
        round_prompts = zipf_prompts(args.batch, args.distinct, args.zipf_s, draw, "")
        distinct_drawn.append(len(set(round_prompts)))
        runs = [(workload, name) for name in CONTENDERS for workload in ("identical", "zipf")]
        rng.shuffle(runs)
        for workload, name in runs:
            cache = make_cache(name, directory)
            model = ChatOpenAI(
                model="gpt-4o-mini", temperature=0, max_retries=0, timeout=120,
                base_url=sim.base_url, api_key=SecretStr("sim"), cache=cache,
            )  # fmt: skip
            salt = uuid.uuid4().hex[:12]  # prompts no earlier run has seen
            before = sim.requests
            start = time.perf_counter()
            if workload == "identical":
                await identical(model, salt, args.identical)
            else:
                await zipf(model, [f"[{salt}]{p}" for p in round_prompts], args.concurrency)
            seconds = time.perf_counter() - start
            samples[workload][name]["calls"].append(sim.requests - before)
            samples[workload][name]["seconds"].append(seconds)
            if isinstance(cache, TieredCache):
                await cache.aclose()
    return {"samples": samples, "distinct_drawn": distinct_drawn}


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for workload, by_name in measured["samples"].items():
        # What a perfect cache pays: one call per distinct prompt of each round.
        drawn = measured["distinct_drawn"]
        distinct = len(drawn) if workload == "identical" else sum(drawn)
        table[workload] = {
            name: {
                "calls_per_distinct": round(sum(values["calls"]) / distinct, 3),
                "calls_median": statistics.median(values["calls"]),
                "calls_min": min(values["calls"]),
                "calls_max": max(values["calls"]),
                "seconds_median": round(statistics.median(values["seconds"]), 3),
                "seconds_min": round(min(values["seconds"]), 3),
                "seconds_max": round(max(values["seconds"]), 3),
            }
            for name, values in by_name.items()
        }
    return table


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    distinct = report["distinct_drawn"]
    lines = [
        f"# Stampedes ({report['mode']} run, {report['date']})",
        "",
        f"Python {report['python']}, {report['machine']}. Simulator latency "
        f"{settings['latency_ms']:g} ms per request; rounds: {settings['rounds']}, each contender "
        "on a fresh cache and fresh prompts, in a shuffled order. Upstream calls are the "
        "simulator's count; seconds are wall time (median, min-max over rounds).",
        "",
        f"## {settings['identical']} identical prompts at once (asyncio.gather)",
        "",
        HEADER,
        "|---|---:|---:|---:|---|",
    ]
    lines += _rows(report["results"]["identical"])
    lines += [
        "",
        f"## {settings['batch']} prompts, Zipf repeats (s={settings['zipf_s']:g} over "
        f"{settings['distinct']} prompts; {min(distinct)}-{max(distinct)} distinct drawn), "
        f"Semaphore({settings['concurrency']})",
        "",
        HEADER,
        "|---|---:|---:|---:|---|",
    ]
    lines += _rows(report["results"]["zipf"])
    return "\n".join(lines) + "\n"


HEADER = "| contender | upstream calls | per distinct prompt | wall s (median) | min-max |"


def _rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, row in results.items():
        calls = f"{row['calls_median']:g}"
        if row["calls_min"] != row["calls_max"]:
            calls += f" ({row['calls_min']}-{row['calls_max']})"
        rows.append(
            f"| {name} | {calls} | {row['calls_per_distinct']:.2f} | {row['seconds_median']:.3f} | "
            f"{row['seconds_min']:.3f}-{row['seconds_max']:.3f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--identical", type=int, default=50)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.latency_ms = 1, 100.0
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(SimulatorConfig(latency_ms=args.latency_ms)) as sim,
    ):
        measured = asyncio.run(measure(args, sim, Path(tmp)))
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "settings": {name: getattr(args, name) for name in (*SETTINGS, "seed")},
        "distinct_drawn": measured["distinct_drawn"],
        "results": summarize(measured),
        "samples": measured["samples"],
    }
    text = markdown(report)
    write_results(args.out, "stampede", quick=args.quick, report=report, text=text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
