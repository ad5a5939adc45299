"""What a stream served from the cache costs, per chunk and per answer (``llmcache.cached``).

The real ``ChatOpenAI`` on the local simulator (answers of about ``--tokens``
words; no latency, so an upstream stream costs only its HTTP and parsing),
wrapped by ``cached(model, TieredCache(l2=None))``. Each round runs every
contender ``--repeats`` times in a shuffled order; figures are medians over
all runs (µs), with the median of the per-round medians' spread.

Contenders, all on one answer already in the memory tier:

* ``invoke hit``: the whole message at once, LangChain's own cache path;
* ``stream hit, chunk_chars=C``: a served stream whose text comes in pieces
  of whole words at least C characters long (1: a word per chunk; 16: the
  default; 1,000,000: one text chunk), each through LangChain's ``stream``
  (callbacks, metadata) like an upstream chunk; ``astream hit`` the same
  async;
* ``first chunk, hit`` / ``first chunk, upstream``: time to the first chunk
  (the rest is then read, untimed);
* ``stream upstream, plain`` / ``stream upstream, cached() miss``: the same
  answer streamed from the simulator by the plain model and by the wrapped
  one on a miss (which keeps the chunks and stores their sum at the end).

Per chunk: the slope between the word-per-chunk and the one-chunk streams,
(t_1 - t_big) / (n_1 - n_big).

    python benchmarks/streaming.py            # full run: benchmarks/results/streaming.*
    python benchmarks/streaming.py --quick    # a smoke run for CI (not for publishing)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _results import write_results
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from llmcache import TieredCache, cached
from llmcache.simulator import Simulator, SimulatorConfig

RESULTS = Path(__file__).with_name("results")
PROMPT = "nutrients of one serving of bibimbap"
BIG = 1_000_000


def models(sim: Simulator, cache: TieredCache) -> dict[str, ChatOpenAI]:
    plain = ChatOpenAI(
        model="gpt-4o-mini", temperature=0, max_retries=0, timeout=60, stream_usage=True,
        base_url=sim.base_url, api_key=SecretStr("sim"),
    )  # fmt: skip
    made = {f"chunk_chars={size}": cached(plain, cache, chunk_chars=size) for size in (1, 16, BIG)}
    made["plain"] = plain
    return made


def contenders(made: dict[str, ChatOpenAI], first: list[float]) -> dict[str, Callable[[], int]]:
    """Each runs once and returns how many chunks it saw (first chunk: sets ``first[0]``)."""
    default, plain = made["chunk_chars=16"], made["plain"]

    def stream(model: ChatOpenAI, prompt: str = PROMPT) -> Callable[[], int]:
        return lambda: sum(1 for _ in model.stream(prompt))

    def first_chunk(model: ChatOpenAI, fresh: bool) -> Callable[[], int]:
        def run() -> int:
            chunks = model.stream(f"{uuid.uuid4().hex} {PROMPT}" if fresh else PROMPT)
            next(chunks)
            # Timed to here (the caller's clock stops at this mark); the rest is drained
            # so that each stream ends as streams do.
            first[0] = time.perf_counter()
            for _ in chunks:
                pass
            return 1

        return run

    def upstream(model: ChatOpenAI) -> Callable[[], int]:
        return lambda: sum(1 for _ in model.stream(f"{uuid.uuid4().hex} {PROMPT}"))

    def astream() -> int:
        async def count() -> int:
            return len([chunk async for chunk in default.astream(PROMPT)])

        return asyncio.run(count())

    def ainvoke_in_loop() -> int:
        async def once() -> int:
            await default.ainvoke(PROMPT)
            return 1

        return asyncio.run(once())

    return {
        "invoke hit": lambda: len([default.invoke(PROMPT)]),
        "stream hit, chunk_chars=1": stream(made["chunk_chars=1"]),
        "stream hit, chunk_chars=16": stream(default),
        f"stream hit, chunk_chars={BIG:,}": stream(made[f"chunk_chars={BIG}"]),
        "ainvoke hit (own loop)": ainvoke_in_loop,
        "astream hit, chunk_chars=16 (own loop)": astream,
        "first chunk, hit": first_chunk(default, fresh=False),
        "first chunk, upstream": first_chunk(plain, fresh=True),
        "stream upstream, plain": upstream(plain),
        "stream upstream, cached() miss": upstream(default),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    config = SimulatorConfig(latency_ms=0, completion_tokens=args.tokens)
    with Simulator(config) as sim:
        cache = TieredCache(l2=None, stats_interval=None)
        made = models(sim, cache)
        made["chunk_chars=16"].invoke(PROMPT)  # the answer every hit serves
        first = [0.0]
        runs = contenders(made, first)
        for run in runs.values():  # warm: classes built, clients connected
            run()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        rounds: dict[str, list[float]] = {name: [] for name in runs}
        chunks: dict[str, int] = {}
        for _ in range(args.rounds):
            order = [name for name in runs for _ in range(args.repeats)]
            rng.shuffle(order)
            this_round: dict[str, list[float]] = {name: [] for name in runs}
            for name in order:
                first[0] = 0.0
                start = time.perf_counter()
                chunks[name] = runs[name]()
                end = first[0] or time.perf_counter()
                this_round[name].append(end - start)
            for name, values in this_round.items():
                seconds[name].extend(values)
                rounds[name].append(statistics.median(values))
        requests = sim.requests
        cache.close()
    results = {
        name: {
            "chunks": chunks[name],
            "median_us": round(statistics.median(values) * 1e6, 1),
            "p90_us": round(_quantile(values, 0.9) * 1e6, 1),
            "round_medians_us": [round(value * 1e6, 1) for value in rounds[name]],
        }
        for name, values in seconds.items()
    }
    many, one = results["stream hit, chunk_chars=1"], results[f"stream hit, chunk_chars={BIG:,}"]
    per_chunk = [
        (a - b) / (many["chunks"] - one["chunks"])
        for a, b in zip(many["round_medians_us"], one["round_medians_us"], strict=True)
    ]
    plain, miss = results["stream upstream, plain"], results["stream upstream, cached() miss"]
    ratios = [
        a / b for a, b in zip(miss["round_medians_us"], plain["round_medians_us"], strict=True)
    ]
    return {
        "results": results,
        "miss_over_plain": round(statistics.median(ratios), 3),
        "miss_over_plain_rounds": [round(value, 3) for value in ratios],
        "per_chunk_us": round(statistics.median(per_chunk), 2),
        "per_chunk_us_rounds": [round(value, 2) for value in per_chunk],
        "upstream_requests": requests,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    rounds = settings["rounds"]
    lines = [
        f"# Streaming from the cache ({report['mode']} run, {report['date']})",
        "",
        f"Python {report['python']}, {report['machine']}, load average {report['load']} "
        f"(1/5/15 min) at the start. ChatOpenAI on the simulator (answers of "
        f"{settings['tokens']} words, no latency), `cached(model, TieredCache(l2=None))`; "
        f"{rounds} rounds of {settings['repeats']} runs per contender, shuffled; µs.",
        "",
        "| contender | chunks | median µs | p90 µs | per-round medians |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in report["results"].items():
        spread = ", ".join(f"{value:,.0f}" for value in row["round_medians_us"])
        lines.append(
            f"| {name} | {row['chunks']} | {row['median_us']:,.0f} | {row['p90_us']:,.0f} | "
            f"{spread} |"
        )
    per_round = ", ".join(f"{value:.1f}" for value in report["per_chunk_us_rounds"])
    lines += [
        "",
        f"**Per served chunk: {report['per_chunk_us']:.1f} µs** (median over rounds of "
        f"(t(chunk_chars=1) - t(one chunk)) / (chunks difference); rounds: {per_round}).",
        "",
        f"**A miss through `cached()`: {report['miss_over_plain']:.3f}x** the plain model's "
        "upstream stream (median of per-round ratios; rounds: "
        + ", ".join(f"{value:.3f}" for value in report["miss_over_plain_rounds"])
        + "): the lookup, the chunks kept, their sum and one store.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=200, help="words per answer")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = 2, 3
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    measured = measure(args)
    report = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
        "load": load,
        "settings": {key: getattr(args, key) for key in ("rounds", "repeats", "tokens")},
        **measured,
    }
    write_results(args.out, "streaming", quick=args.quick, report=report, text=markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
