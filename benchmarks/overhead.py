"""What a cache hit costs: TieredCache against LangChain's own caches, side by side.

Method: every contender caches the same real answer (one ChatOpenAI call to the
local simulator, so the stored value has usage, metadata and ids like a real
one). Each contender lives in worker processes of its own, as a cache does in
an application: contenders sharing one interpreter would share its heap,
garbage collector and CPU caches, and the one with the largest footprint
(SQLite's) would slow the others' hits. Rounds interleave the contenders in a
shuffled order, each round timing ``--calls`` consecutive hits per contender
with ``perf_counter`` while the others wait, so drift on the machine spreads
over all of them alike; ``--processes`` workers per contender take turns
round by round, so no single process's hash seed and memory layout (worth a
percent or two on every call) decides a ratio. Two levels: ``lookup`` (the BaseCache call alone,
with the prompt and llm_string LangChain would pass) and ``invoke`` (the whole
``ChatOpenAI.invoke`` on a hit). Figures are percentiles over every timed
call; ratios compare medians. Every contender hits one key again and again;
for the disk tier that means the bytes it reads were decoded before in this
process, so a second disk contender decodes every hit anew, as the first read
of an entry in a process does, and both are reported.

Two more parts live in their own modules and run from here too:
``overhead_redis.py`` (Redis L2 hits against langchain-community's Redis
caches) and ``overhead_dependencies.py`` (hits with three dependencies against
none, per tier, and ``invalidate`` on Redis with 100,000 dependent entries).

    python benchmarks/overhead.py                # every part, full: benchmarks/results/overhead*.*
    python benchmarks/overhead.py --part local   # one part: local, redis or dependencies
    python benchmarks/overhead.py --quick        # a smoke run for CI (not for publishing)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import diskcache
import orjson
from _results import write_results
from langchain_core.caches import BaseCache, InMemoryCache
from langchain_core.load import dumps
from langchain_core.messages import HumanMessage
from langchain_core.outputs import Generation
from langchain_openai import ChatOpenAI

from llmcache import DiskTier, TieredCache
from llmcache.generations import Template, compile_template, dump_generations
from llmcache.simulator import Simulator, SimulatorConfig
from llmcache.stats import percentile

PROMPT = "Estimate the nutrients of one serving of dolsot bibimbap: carbs, protein, fat, sodium."
RESULTS = Path(__file__).with_name("results")
PERCENTILES = ("median_us", "p90_us", "p99_us")
PARTS = ("local", "redis", "dependencies")


@dataclass
class Contender:
    name: str
    samples: dict[str, list[float]] = field(default_factory=lambda: {"lookup": [], "invoke": []})
    #: The median of each round, per level: the paired ratios compare these round by round.
    round_medians: dict[str, list[float]] = field(
        default_factory=lambda: {"lookup": [], "invoke": []}
    )


def _sqlite_cache(directory: Path) -> BaseCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.cache import SQLiteCache

    return SQLiteCache(database_path=str(directory / "langchain.db"))


class _FreshCopyFloor(BaseCache):
    """What any cache that hands out fresh objects must pay, and nothing else.

    No key, no tier, no checks: ``lookup`` builds new generations from the
    stored answer, or, with ``store``, first reads its bytes from a raw
    diskcache (no envelope, no verification). TieredCache cannot beat these;
    they show how much of each goal's budget the copy (and the disk read)
    alone takes.
    """

    def __init__(self, store: Path | None = None) -> None:
        self._template: Template | None = None
        self._store = None if store is None else diskcache.Cache(str(store))

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        if self._template is None:
            return None
        if self._store is not None and self._store.get("answer") is None:
            return None
        return self._template.build()

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        payload = dump_generations(return_val)
        self._template = compile_template(payload, owned=False)
        if self._store is not None:
            self._store.set("answer", orjson.dumps(payload))

    def clear(self, **kwargs: Any) -> None:
        self._template = None


FRESH_FLOOR = "floor: fresh objects, no lookup"
DISK_FLOOR = "floor: raw diskcache read + fresh objects"
DISK_FIRST_READ = "TieredCache L2 (disk, L1 off), every hit a first read"
CONTENDERS = (
    "langchain InMemoryCache",
    "langchain-community SQLiteCache",
    "TieredCache L1 (memory)",
    "TieredCache L2 (disk, L1 off)",
    DISK_FIRST_READ,
    FRESH_FLOOR,
    DISK_FLOOR,
)


def _make_cache(name: str, directory: Path) -> BaseCache:
    if name == "langchain InMemoryCache":
        return InMemoryCache()
    if name == "langchain-community SQLiteCache":
        return _sqlite_cache(directory)
    if name == "TieredCache L1 (memory)":
        return TieredCache(l2=None)
    if name == FRESH_FLOOR:
        return _FreshCopyFloor()
    if name == DISK_FLOOR:
        return _FreshCopyFloor(directory / "raw")
    cache = TieredCache(l1=None, l2=DiskTier(directory / "disk"))
    if name == DISK_FIRST_READ:
        # A repeated disk hit reuses the record decoded from the same bytes
        # (decoded_memo.DecodedMemo); without it every hit verifies, parses and checks
        # its bytes anew, as the first read of an entry in a process does.
        cache._layers.decoded = None
    return cache


def _timed(call: Callable[[], Any], calls: int) -> list[float]:
    gc.collect()
    clock = time.perf_counter
    samples = []
    for _ in range(calls):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


def worker(name: str, base_url: str, directory: str, calls: int) -> None:
    """One contender in its own process: a round per line read, samples written back."""
    warnings.simplefilter("ignore")  # langchain-community's per-hit deprecation notices
    Path(directory).mkdir(parents=True, exist_ok=True)
    cache = _make_cache(name, Path(directory))
    model = ChatOpenAI(
        model="gpt-4o-mini", temperature=0, base_url=base_url, api_key="sim", cache=cache
    )
    model.invoke(PROMPT)  # the miss that stores a real answer
    prompt = dumps([HumanMessage(PROMPT)])
    lookup = partial(cache.lookup, prompt, model._get_llm_string())
    if not isinstance(lookup(), list):
        raise SystemExit(f"{name}: the warm-up answer is not in the cache")
    print("ready", flush=True)
    for _ in sys.stdin:
        rounds = {
            "lookup": _timed(lookup, calls),
            "invoke": _timed(partial(model.invoke, PROMPT), calls // 2),
        }
        print(json.dumps(rounds), flush=True)


def measure(
    base_url: str, directory: Path, rounds: int, calls: int, seed: int, processes: int
) -> list[Contender]:
    contenders = [Contender(name) for name in CONTENDERS]
    # Several processes per contender, taking turns round by round: a process's
    # hash seed and memory layout shift its every call by a percent or two,
    # which interleaving rounds cannot cancel but more processes average out.
    workers: dict[str, list[subprocess.Popen[str]]] = {}
    started: list[subprocess.Popen[str]] = []
    try:
        for contender in contenders:
            for _ in range(processes):
                process = subprocess.Popen(
                    [sys.executable, __file__, "--worker", contender.name, "--base-url",
                     base_url, "--dir", str(directory / str(len(started))), "--calls", str(calls)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                started.append(process)
                workers.setdefault(contender.name, []).append(process)
        for process in started:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise SystemExit("a worker failed to start")
        rng = random.Random(seed)
        for round_index in range(rounds):
            order = contenders[:]
            rng.shuffle(order)
            for contender in order:
                process = workers[contender.name][round_index % processes]
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write("go\n")
                process.stdin.flush()
                for level, samples in json.loads(process.stdout.readline()).items():
                    contender.samples[level].extend(samples)
                    contender.round_medians[level].append(statistics.median(samples))
    finally:
        for process in started:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=60)
            if process.stdout is not None:
                process.stdout.close()
    return contenders


def paired_ratio(a: Contender, b: Contender, level: str) -> float:
    """The median over rounds of a's round median over b's: drift cancels within a round."""
    ratios = [x / y for x, y in zip(a.round_medians[level], b.round_medians[level], strict=True)]
    return statistics.median(ratios)


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


def goals(contenders: list[Contender]) -> list[dict[str, Any]]:
    by_name = {contender.name: contender for contender in contenders}
    memory, sqlite = by_name["langchain InMemoryCache"], by_name["langchain-community SQLiteCache"]
    l1, disk = by_name["TieredCache L1 (memory)"], by_name["TieredCache L2 (disk, L1 off)"]
    checks = [
        ("L1 hit through invoke vs InMemoryCache (x, lower is better)",
         paired_ratio(l1, memory, "invoke"), "<=", 1.10),
        ("disk L2 lookup speed-up vs SQLiteCache (x)",
         paired_ratio(sqlite, disk, "lookup"), ">=", 10.0),
        ("disk L2 invoke speed-up vs SQLiteCache (x)",
         paired_ratio(sqlite, disk, "invoke"), ">=", 3.0),
    ]  # fmt: skip
    rows = [
        {"goal": what, "measured": round(value, 3), "target": f"{op} {target}",
         "met": value <= target if op == "<=" else value >= target}
        for what, value, op, target in checks
    ]  # fmt: skip
    fresh, raw_disk = by_name[FRESH_FLOOR], by_name[DISK_FLOOR]
    first_read = by_name[DISK_FIRST_READ]
    context = [
        ("disk L2 invoke speed-up vs SQLiteCache when every hit is a first read (x)",
         paired_ratio(sqlite, first_read, "invoke")),
        ("floor for the L1 goal: fresh objects alone vs InMemoryCache, invoke (x)",
         paired_ratio(fresh, memory, "invoke")),
        ("ceiling for the disk goal: SQLiteCache vs a raw disk read + fresh objects, invoke (x)",
         paired_ratio(sqlite, raw_disk, "invoke")),
    ]  # fmt: skip
    rows += [
        {"goal": what, "measured": round(value, 3), "target": "bound", "met": None}
        for what, value in context
    ]
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Cache-hit overhead ({report['mode']} run, {report['date']})",
        "",
        f"Python {report['python']}, {report['machine']}; {report['processes']} worker"
        " processes per contender, taking turns;"
        f" {report['rounds']} interleaved rounds of {report['calls']} lookups and"
        f" {report['calls'] // 2} invokes per contender. Microseconds per call.",
        "",
        "| contender | lookup median | p90 | p99 | invoke median | p90 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, levels in report["results"].items():
        lookup, invoke = levels["lookup"], levels["invoke"]
        cells = [lookup[k] for k in PERCENTILES] + [invoke[k] for k in PERCENTILES]
        lines.append(f"| {name} | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")
    lines += [
        "",
        "Goals compare contenders round by round (the median over rounds of the ratio of",
        "their round medians), so drift on the machine cancels within each pair.",
        "",
        "| goal | measured | target | met |",
        "|---|---:|---|---|",
    ]
    for goal in report["goals"]:
        met = {True: "yes", False: "no", None: "(context)"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {goal['measured']} | {goal['target']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument("--part", choices=("all", *PARTS), default="all")
    parser.add_argument("--url", help="Redis for the other parts (default: a valkey they start)")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--processes", type=int, default=4, help="worker processes per contender")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.base_url, args.dir, args.calls)
        return 0
    parts = PARTS if args.part == "all" else (args.part,)
    if "local" in parts:
        _local(args)
    forwarded = ["--out", str(args.out), *(["--quick"] if args.quick else [])]
    forwarded += ["--url", args.url] if args.url else []
    for part in parts:
        if part != "local":
            # Imported here: they live beside this file, and need Redis.
            module = importlib.import_module(f"overhead_{part}")
            if module.main(forwarded):
                return 1
    return 0


def _local(args: argparse.Namespace) -> None:
    rounds, calls = (2, 100) if args.quick else (args.rounds, args.calls)
    processes = 1 if args.quick else args.processes
    with tempfile.TemporaryDirectory() as tmp, Simulator(SimulatorConfig()) as sim:
        contenders = measure(sim.base_url, Path(tmp), rounds, calls, args.seed, processes)
    report = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "rounds": rounds,
        "processes": processes,
        "calls": calls,
        "results": summarize(contenders),
    }
    report["goals"] = goals(contenders)
    text = markdown(report)
    write_results(args.out, "overhead", quick=args.quick, report=report, text=text)


if __name__ == "__main__":
    sys.exit(main())
