"""What a memoize hit costs, and what coalescing saves: llmcache.Cache in plain Python.

Method, part ``hits``: one function, already called once, is called again and
again through each contender: ``functools.lru_cache`` (the in-process floor:
no copy, no key text, no tiers), ``Cache.memoize`` on memory alone, on memory
over disk (the default shape), on disk alone (every hit reads the tier), and
``Cache.get`` of a value under a key of the application's. Two argument
shapes: ``small`` (an int and a default) and ``large`` (a 1 KB string and a
list of 50 ints), since the key is the arguments' canonical JSON, hashed.
Rounds interleave the contenders in a shuffled order, each timing ``--calls``
consecutive hits with ``perf_counter``, so drift on a shared machine spreads
over all alike; percentiles are over every timed call, ratios compare medians.

Part ``coalesce``: ``--tasks`` identical concurrent calls (``asyncio.gather``)
of an ``async def`` that takes ``--latency`` seconds, and the same from
threads, with coalescing on and off: how many times the function ran, and the
wall time. The machine may be shared: read ratios and counts, not absolute times.

    python benchmarks/memoize.py           # full: results/memoize.*
    python benchmarks/memoize.py --quick   # CI: results/memoize-quick.*
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _results import write_results

from llmcache import Cache, DiskTier

SHAPES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "small": ((7,), {}),
    "large": (("x" * 1024, list(range(50))), {}),
}


def _answer(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"answer": "bibimbap: rice, vegetables, gochujang", "tokens": [12, 34], "ok": True}


def _contenders(directory: Path) -> tuple[dict[str, Callable[..., Any]], list[Cache]]:
    def small(n: int, unit: str = "kcal") -> dict[str, Any]:
        return _answer(n, unit)

    memory = Cache(l2=None, namespace="bench")
    layered = Cache(l2=DiskTier(directory / "layered"), namespace="bench")
    disk = Cache(l1=None, l2=DiskTier(directory / "disk"), namespace="bench")
    layered.set("menu:today", _answer())
    return {
        "lru_cache": functools.lru_cache(maxsize=None)(_hashable(small)),
        "memoize memory": memory.memoize(small),
        "memoize memory+disk": layered.memoize(small),
        "memoize disk": disk.memoize(small),
        "get memory+disk": lambda *args: layered.get("menu:today"),
    }, [memory, layered, disk]


def _hashable(function: Callable[..., Any]) -> Callable[..., Any]:
    """lru_cache needs hashable arguments: a list becomes a tuple (its cost is not counted)."""

    @functools.wraps(function)
    def called(*args: Any) -> Any:
        return function(*args)

    return called


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99), "n": len(ordered)}


def hits(rounds: int, calls: int) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape, (args, kwargs) in SHAPES.items():
            contenders, caches = _contenders(Path(tmp) / shape)
            frozen = tuple(tuple(a) if isinstance(a, list) else a for a in args)
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            for name, function in contenders.items():  # the first call stores
                function(*(frozen if name == "lru_cache" else args), **kwargs)
            for _ in range(rounds):
                order = list(contenders)
                random.shuffle(order)
                for name in order:
                    function, used = contenders[name], frozen if name == "lru_cache" else args
                    timings = samples[name]
                    for _ in range(calls):
                        start = time.perf_counter()
                        function(*used, **kwargs)
                        timings.append(time.perf_counter() - start)
            results[shape] = {name: _percentiles(s) for name, s in samples.items()}
            for cache in caches:
                stats = cache.stats()
                assert stats.misses <= 1 and stats.errors == 0, stats  # hits, all of them
                cache.close()
    return results


def coalesce(tasks: int, latency: float, reps: int = 3) -> dict[str, dict[str, float]]:
    """Runs and median wall time of ``tasks`` identical concurrent calls, ``reps`` times each."""
    report: dict[str, dict[str, float]] = {}
    for on in (True, False):
        for how in ("tasks", "threads"):
            runs, walls = [], []
            for _ in range(reps):
                count, wall = _one_burst(how, on, tasks, latency)
                runs.append(count)
                walls.append(wall)
            label = f"{how}, coalesce={'on' if on else 'off'}"
            report[label] = {"runs": max(runs), "wall_s": round(sorted(walls)[reps // 2], 4)}
    return report


def _one_burst(how: str, on: bool, tasks: int, latency: float) -> tuple[int, float]:
    cache = Cache(l2=None, coalesce=on, namespace="bench")
    runs: list[int] = []

    @cache.memoize()
    async def answer_async(question: str) -> str:
        runs.append(1)
        await asyncio.sleep(latency)
        return question.upper()

    @cache.memoize()
    def answer(question: str) -> str:
        runs.append(1)
        time.sleep(latency)
        return question.upper()

    async def gathered() -> list[str]:
        return await asyncio.gather(*(answer_async("q") for _ in range(tasks)))

    with ThreadPoolExecutor(tasks) as pool:
        list(pool.map(len, ["warm"] * tasks))  # the pool's threads exist before the clock starts
        start = time.perf_counter()
        if how == "tasks":
            results = asyncio.run(gathered())
        else:
            results = list(pool.map(answer, ["q"] * tasks))
        wall = time.perf_counter() - start
    assert results == ["Q"] * tasks
    cache.close()
    return len(runs), wall


def _markdown(report: dict[str, Any]) -> str:
    quick = " (quick)" if report["quick"] else ""
    lines = [
        "# memoize: hit cost and coalescing",
        "",
        f"{report['when']} · {report['machine']} · load {report['load']} → {report['load_after']}",
        f"{report['rounds']} rounds x {report['calls']} calls{quick}",
        "",
    ]
    for shape, contenders in report["hits"].items():
        floor = contenders["memoize memory"]["p50_us"]
        lines += [
            f"## Hits, {shape} arguments",
            "",
            "| contender | p50 µs | p90 µs | p99 µs | p50 / memoize memory |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, p in contenders.items():
            lines.append(
                f"| {name} | {p['p50_us']:.2f} | {p['p90_us']:.2f} | {p['p99_us']:.2f} |"
                f" {p['p50_us'] / floor:.2f}x |"
            )
        lines.append("")
    lines += [
        f"## {report['tasks']} identical concurrent calls, {report['latency']} s each",
        "",
        "Function runs (the most over 3 bursts) and the median wall time.",
        "",
        "| how | function runs | wall s |",
        "|---|---:|---:|",
    ]
    for label, row in report["coalesce"].items():
        lines.append(f"| {label} | {row['runs']:.0f} | {row['wall_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--quick", action="store_true", help="a smoke run for CI")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls, args.tasks, args.latency = 3, 200, 10, 0.05
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "quick": args.quick,
        "rounds": args.rounds,
        "calls": args.calls,
        "tasks": args.tasks,
        "latency": args.latency,
    }
    report["hits"] = hits(args.rounds, args.calls)
    report["coalesce"] = coalesce(args.tasks, args.latency)
    report["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_results(args.out, "memoize", quick=args.quick, report=report, text=_markdown(report))


if __name__ == "__main__":
    main()
