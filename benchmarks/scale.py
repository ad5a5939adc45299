"""How a hit's cost grows: with the prompt, with the cache, with concurrency.

Four parts, each against LangChain's own caches, each contender in worker
processes of its own (so no two share a heap, a garbage collector or a CPU
cache), rounds interleaved in a shuffled order so drift on the machine falls
on every contender alike; ratios are medians of per-round ratios.

* ``conversation``: a hit at 8, 32 and 128 messages of history, at the
  ``lookup`` level (a new prompt string per call, as LangChain builds one) and
  through ``ChatOpenAI.invoke``.
* ``entries``: caches of 1k, 100k and 1M answers of about 1 KB (``--quick``:
  1k and 10k): memory per entry (RSS), then a pass of first hits (keys never
  read in this process) with the median, p99.9 and worst latency and the full
  (generation-2) collections the pass triggered; and the default L1 over a
  disk store of that size, opened by a fresh cache. Two floors beside them
  (``_FloorCache``): what any cache keyed by a digest that hands out fresh,
  checked objects pays on a first hit, keeping bytes (as the memory tier
  does) or keeping each answer compiled for copying (objects, as
  ``InMemoryCache`` keeps them), so the latency and the memory each way costs
  are on one table.
* ``concurrency``: 1,000 concurrent memory hits under ``asyncio.gather``, and
  the seed's warm menu job (300 prompts, 120 distinct, ``Semaphore(32)``).
* ``redis``: LangChain's ``batch`` of 1,000 Redis hits (worker threads: its
  default pool, then ``max_concurrency=32``), against langchain-community's
  ``RedisCache`` (a valkey started from pip), with ``InMemoryCache`` beside
  them as the ceiling: the same ``batch`` with no lookup worth the name.

With the ``entries`` part, a plot of bytes per entry and first-hit latency
against the number of entries is drawn beside the tables (``scale.png``).

    python benchmarks/scale.py                    # everything, full: benchmarks/results/scale.*
    python benchmarks/scale.py --part entries     # one part
    python benchmarks/scale.py --quick            # a smoke run for CI
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import orjson
from _redis_server import valkey_or
from _results import write_results
from langchain_core.caches import BaseCache, InMemoryCache
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_openai import ChatOpenAI

from llmcache import DiskTier, MemoryTier, TieredCache
from llmcache.generations import Template, build_owned, compile_template, dump_generations
from llmcache.simulator import Simulator, SimulatorConfig
from llmcache.stats import percentile

RESULTS = Path(__file__).with_name("results")
PARTS = ("conversation", "entries", "concurrency", "redis")
MEMORY = "langchain InMemoryCache"
SQLITE = "langchain-community SQLiteCache"
TIERED = "TieredCache L1 (memory)"
TIERED_DISK = "TieredCache L1 over disk (fresh process)"
REDIS_LC = "langchain-community RedisCache"
TIERED_REDIS = "TieredCache Redis L2 (L1 off)"
FLOOR_BYTES = "floor: bytes kept, parsed and checked per hit"
FLOOR_OBJECTS = "floor: objects kept, copied per hit"


# -- shared pieces -------------------------------------------------------------------------


class _FloorCache(BaseCache):
    """A first hit with nothing but the work no safe cache can skip.

    A SHA-256 key of the prompt and llm_string (no canonical form), one dict,
    no TTL, LRU, namespaces, versions or counters; every hit hands out fresh
    generations, checked against the same allowlist as TieredCache's. With
    ``keep="bytes"`` an entry is its JSON bytes, parsed, checked and built on
    each hit (what the memory tier does, less its bookkeeping); with
    ``keep="objects"`` it is the answer compiled for copying (parsed and
    checked once, as ``InMemoryCache`` keeps objects), and a hit copies it.
    """

    def __init__(self, keep: Literal["bytes", "objects"]) -> None:
        self._keep = keep
        self._entries: dict[str, bytes | Template] = {}

    @staticmethod
    def _key(prompt: str, llm_string: str) -> str:
        return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        entry = self._entries.get(self._key(prompt, llm_string))
        if entry is None:
            return None
        if type(entry) is bytes:
            return build_owned(orjson.loads(entry))[0]
        assert isinstance(entry, Template)
        return entry.build()

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        payload = dump_generations(return_val)
        key = self._key(prompt, llm_string)
        if self._keep == "bytes":
            # Not orjson.dumps: its bytes keep the whole buffer it grew (12 KB for
            # this 2.4 KB answer), which RSS would charge to the floor.
            self._entries[key] = json.dumps(payload, separators=(",", ":")).encode()
        else:
            self._entries[key] = compile_template(payload, owned=False)

    def clear(self, **kwargs: Any) -> None:
        self._entries.clear()


def _sqlite(directory: Path) -> BaseCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.cache import SQLiteCache

    return SQLiteCache(database_path=str(directory / "langchain.db"))


def _cache(name: str, directory: Path, *, entries: int = 10_000, url: str = "") -> BaseCache:
    if name == MEMORY:
        return InMemoryCache()
    if name == SQLITE:
        return _sqlite(directory)
    if name == TIERED:
        # Room for every entry: this measures cost per entry, not eviction.
        return TieredCache(l1=MemoryTier(max_entries=entries + 1, max_bytes=1 << 40), l2=None)
    if name == TIERED_DISK:
        return TieredCache(l2=_disk(directory))
    if name == TIERED_REDIS:
        return TieredCache(l1=None, l2=url, secret=None)
    if name == FLOOR_BYTES:
        return _FloorCache("bytes")
    if name == FLOOR_OBJECTS:
        return _FloorCache("objects")
    if name == REDIS_LC:
        import redis

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langchain_community.cache import RedisCache

        return RedisCache(redis.Redis.from_url(url))
    raise SystemExit(f"unknown contender {name!r}")


def _disk(directory: Path) -> DiskTier:
    # Room for every entry (the default 1 GiB holds about 400k of these
    # answers, then culls): this measures cost per entry, not eviction.
    return DiskTier(directory / "disk", size_limit=1 << 40)


def _model(cache: BaseCache, base_url: str) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini", temperature=0, base_url=base_url, api_key="sim", cache=cache
    )


def conversation(messages: int, salt: str = "") -> list[BaseMessage]:
    """A chat history of ``messages`` messages ending with a new question."""
    turns: list[BaseMessage] = [SystemMessage("You are a helpful assistant for a food site.")]
    for i in range((messages - 2) // 2):
        turns.append(HumanMessage(f"{salt}Question {i}: how is dish {i} made, and its cost?"))
        turns.append(
            AIMessage(
                f"Answer {i}: " + "It is braised slowly with garlic and soy. " * 6,
                id=f"chatcmpl-{i}",
                usage_metadata={"input_tokens": 40, "output_tokens": 60, "total_tokens": 100},
                response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop"},
            )
        )
    turns.append(HumanMessage(f"{salt}And which of these would you pick tonight?"))
    return turns


def answer(index: int) -> list[ChatGeneration]:
    """An answer of about 1 KB shaped like ChatOpenAI's (usage, metadata, ids)."""
    text = f"Answer {index}: " + "A bowl of rice with vegetables, egg and gochujang. " * 18
    message = AIMessage(
        text,
        id=f"chatcmpl-{index:08d}",
        usage_metadata={"input_tokens": 31, "output_tokens": 212, "total_tokens": 243},
        response_metadata={
            "token_usage": {"completion_tokens": 212, "prompt_tokens": 31, "total_tokens": 243},
            "model_name": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0ba0d124f1",
            "id": f"chatcmpl-{index:08d}",
            "finish_reason": "stop",
            "logprobs": None,
        },
    )
    return [ChatGeneration(message=message, generation_info={"finish_reason": "stop"})]


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class FullCollections:
    """Counts generation-2 collections and the time they took, while entered."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _us(samples: list[float]) -> dict[str, float]:
    us = [s * 1e6 for s in samples]
    return {
        "median_us": percentile(us, 50),
        "p99_9_us": percentile(us, 99.9),
        "worst_us": max(us),
    }


# -- workers (one contender each, in a process of its own) -------------------------------


def _conversation_worker(spec: dict[str, Any]) -> None:
    directory = Path(spec["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    cache = _cache(spec["name"], directory)
    model = _model(cache, spec["base_url"])
    histories = {n: conversation(n) for n in spec["lengths"]}
    llm_string = model._get_llm_string()
    # The prompt string exactly as LangChain hands it to the cache (it
    # normalises the messages first), caught on its way to ``update``.
    prompts: dict[int, str] = {}
    store = cache.update
    for n, messages in histories.items():
        cache.update = lambda p, llm, v, n=n: (prompts.setdefault(n, p), store(p, llm, v))[1]  # type: ignore[method-assign]
        model.invoke(messages)  # the miss that stores a real answer
    cache.update = store  # type: ignore[method-assign]
    print("ready", flush=True)
    for _ in sys.stdin:
        rounds: dict[str, Any] = {}
        for n, messages in histories.items():
            prompt = prompts[n]
            lookups = []
            for _ in range(spec["calls"]):
                fresh = prompt[:-1] + "]"  # a new string, its hash not cached, as LangChain's is
                start = time.perf_counter()
                hit = cache.lookup(fresh, llm_string)
                lookups.append(time.perf_counter() - start)
                if not hit:
                    raise SystemExit(f"{spec['name']}: no hit at {n} messages")
            invokes = []
            for _ in range(max(2, spec["calls"] // 10)):
                start = time.perf_counter()
                model.invoke(messages)
                invokes.append(time.perf_counter() - start)
            rounds[str(n)] = {"lookup": lookups, "invoke": invokes}
        print(json.dumps(rounds), flush=True)


def _entries_worker(spec: dict[str, Any]) -> None:
    warnings.simplefilter("ignore")
    entries, name = spec["entries"], spec["name"]
    directory = Path(spec["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    llm_string = _model(InMemoryCache(), "http://127.0.0.1:9/v1")._get_llm_string()
    prompts = [dumps([HumanMessage(f"Nutrients of menu item number {i}?")]) for i in range(entries)]
    gc.collect()
    before = _rss()
    cache = _cache(name, directory, entries=entries)
    for i, prompt in enumerate(prompts):
        cache.update(prompt, llm_string, answer(i))
    if name == TIERED_DISK:
        cache = TieredCache(l2=_disk(directory))  # a fresh process's view: L1 empty
    gc.collect()
    held = _rss() - before
    rng = random.Random(spec["seed"])
    probe = rng.sample(range(entries), min(spec["probes"], entries))
    samples = []
    with FullCollections() as collections:
        for i in probe:
            fresh = prompts[i][:-1] + "]"
            start = time.perf_counter()
            hit = cache.lookup(fresh, llm_string)
            samples.append(time.perf_counter() - start)
            if not hit:
                raise SystemExit(f"{name}: entry {i} missing")
    print(
        json.dumps(
            {
                "bytes_per_entry": held / entries,
                "first_hits": _us(samples),
                "full_collections": collections.count,
                "collection_ms": collections.seconds * 1e3,
            }
        ),
        flush=True,
    )


def _concurrency_worker(spec: dict[str, Any]) -> None:
    cache = _cache(spec["name"], Path(spec["dir"]))
    model = _model(cache, spec["base_url"])
    hits = [f"Nutrients of menu item number {i}?" for i in range(spec["hits"])]
    menu = [f"Estimate the nutrients of {i % spec['distinct']} bibimbap" for i in range(300)]

    async def warm() -> None:
        await asyncio.gather(*(model.ainvoke(p) for p in hits + menu[: spec["distinct"]]))

    async def gather_hits() -> tuple[float, FullCollections]:
        with FullCollections() as collections:
            start = time.perf_counter()
            await asyncio.gather(*(model.ainvoke(p) for p in hits))
            elapsed = time.perf_counter() - start
        return len(hits) / elapsed, collections

    async def menu_job() -> float:
        gate = asyncio.Semaphore(32)

        async def one(prompt: str) -> Any:
            async with gate:
                return await model.ainvoke(prompt)

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in menu))
        return time.perf_counter() - start

    asyncio.run(warm())
    print("ready", flush=True)
    for _ in sys.stdin:
        throughput, collections = asyncio.run(gather_hits())
        wall = asyncio.run(menu_job())
        result = {"hits_per_s": throughput, "menu_s": wall}
        result.update(full_collections=collections.count, collection_s=collections.seconds)
        print(json.dumps(result), flush=True)


def _redis_worker(spec: dict[str, Any]) -> None:
    cache = _cache(spec["name"], Path(spec["dir"]), url=spec["url"])
    model = _model(cache, spec["base_url"])
    prompts = [f"{spec['name']} redis item {i}?" for i in range(spec["hits"])]
    model.batch(prompts)  # every answer stored
    print("ready", flush=True)
    for _ in sys.stdin:
        rates = {}
        for threads in spec["threads"]:
            config: Any = {"max_concurrency": threads} if threads else None
            start = time.perf_counter()
            model.batch(prompts, config)
            rates[str(threads)] = len(prompts) / (time.perf_counter() - start)
        print(json.dumps(rates), flush=True)


WORKERS = {
    "conversation": _conversation_worker,
    "entries": _entries_worker,
    "concurrency": _concurrency_worker,
    "redis": _redis_worker,
}


# -- the driver ----------------------------------------------------------------------------


@contextlib.contextmanager
def _workers(part: str, specs: list[dict[str, Any]]) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            started.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", part, json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in started:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise SystemExit(f"a {part} worker failed to start")
        yield started
    finally:
        for process in started:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=120)
            if process.stdout is not None:
                process.stdout.close()


def _interleaved(
    part: str, names: list[str], spec: dict[str, Any], rounds: int, seed: int
) -> dict[str, list[Any]]:
    """Each round, every contender's worker runs once, in a shuffled order."""
    specs = [{**spec, "name": name, "dir": f"{spec['dir']}/{i}"} for i, name in enumerate(names)]
    results: dict[str, list[Any]] = {name: [] for name in names}
    rng = random.Random(seed)
    with _workers(part, specs) as processes:
        by_name = dict(zip(names, processes))
        for _ in range(rounds):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                process = by_name[name]
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write("go\n")
                process.stdin.flush()
                results[name].append(json.loads(process.stdout.readline()))
    return results


def _paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def part_conversation(args: argparse.Namespace, tmp: Path, base_url: str) -> dict[str, Any]:
    names = [MEMORY, TIERED]
    lengths = [8, 32, 128]
    spec = {"base_url": base_url, "dir": str(tmp / "conv"), "lengths": lengths}
    spec["calls"] = 20 if args.quick else 200
    runs = _interleaved("conversation", names, spec, 2 if args.quick else args.rounds, args.seed)
    table: dict[str, Any] = {}
    for n in map(str, lengths):
        row: dict[str, Any] = {}
        for level in ("lookup", "invoke"):
            medians = {name: [statistics.median(r[n][level]) for r in runs[name]] for name in names}
            for name in names:
                row[f"{name} {level} median_us"] = statistics.median(medians[name]) * 1e6
            row[f"{level} ratio vs InMemoryCache"] = _paired(medians[TIERED], medians[MEMORY])
        table[n] = row
    return {"by_messages": table}


def part_entries(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sizes = [1_000, 10_000] if args.quick else [1_000, 100_000, 1_000_000]
    names = [MEMORY, TIERED, TIERED_DISK, FLOOR_BYTES, FLOOR_OBJECTS]
    table: dict[str, Any] = {}
    for entries in sizes:
        for name in names:
            spec = {
                "name": name,
                "entries": entries,
                "dir": str(tmp / f"entries-{entries}-{names.index(name)}"),
                "probes": 300 if args.quick else 3_000,
                "seed": args.seed,
            }
            run = subprocess.run(
                [sys.executable, __file__, "--worker", "entries", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=True,
            )
            table[f"{name} @ {entries}"] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"entries {entries} {name}: {table[f'{name} @ {entries}']}", file=sys.stderr)
    return {"by_size": table}


def part_concurrency(args: argparse.Namespace, tmp: Path, base_url: str) -> dict[str, Any]:
    # The objects floor: the least a cache that hands out fresh objects can do.
    names = [MEMORY, TIERED, FLOOR_OBJECTS]
    spec = {"base_url": base_url, "dir": str(tmp / "conc"), "distinct": 120}
    spec["hits"] = 200 if args.quick else 1_000
    runs = _interleaved("concurrency", names, spec, 2 if args.quick else args.rounds, args.seed)

    def series(name: str, field: str) -> list[float]:
        return [r[field] for r in runs[name]]

    return {
        "hits_per_s": {name: statistics.median(series(name, "hits_per_s")) for name in names},
        "menu_s": {name: statistics.median(series(name, "menu_s")) for name in names},
        "hits ratio vs InMemoryCache": _paired(
            series(TIERED, "hits_per_s"), series(MEMORY, "hits_per_s")
        ),
        "menu ratio vs InMemoryCache": _paired(series(TIERED, "menu_s"), series(MEMORY, "menu_s")),
        "floor hits ratio vs InMemoryCache": _paired(
            series(FLOOR_OBJECTS, "hits_per_s"), series(MEMORY, "hits_per_s")
        ),
        "floor menu ratio vs InMemoryCache": _paired(
            series(FLOOR_OBJECTS, "menu_s"), series(MEMORY, "menu_s")
        ),
        # Per gathered pass of hits: full (generation-2) collections and their time.
        "full_collections": {
            name: statistics.median(series(name, "full_collections")) for name in names
        },
        "collection_ms": {
            name: statistics.median(series(name, "collection_s")) * 1e3 for name in names
        },
    }


#: Worker threads of ``batch``: 0 is LangChain's default pool (min(32, cores + 4)).
REDIS_THREADS = (0, 32)


def part_redis(args: argparse.Namespace, tmp: Path, base_url: str) -> dict[str, Any]:
    load_before = os.getloadavg()
    with valkey_or(args.url) as url:
        names = [REDIS_LC, TIERED_REDIS, MEMORY]
        spec = {"base_url": base_url, "dir": str(tmp / "redis"), "url": url}
        spec["hits"] = 200 if args.quick else 1_000
        spec["threads"] = list(REDIS_THREADS)
        runs = _interleaved("redis", names, spec, 2 if args.quick else args.rounds, args.seed)
    by_threads: dict[str, Any] = {}
    for threads in map(str, REDIS_THREADS):
        series = {name: [r[threads] for r in runs[name]] for name in names}
        by_threads[threads] = {
            "hits_per_s": {name: statistics.median(values) for name, values in series.items()},
            "TieredCache speed-up vs RedisCache": _paired(series[TIERED_REDIS], series[REDIS_LC]),
            "InMemoryCache speed-up vs RedisCache": _paired(series[MEMORY], series[REDIS_LC]),
        }
    return {
        "by_threads": by_threads,
        "rounds": 2 if args.quick else args.rounds,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# How cost grows ({report['mode']} run, {report['date']})", ""]
    lines.append(f"Python {report['python']}, {report['machine']}. Microseconds unless named.")
    if "conversation" in report:
        lines += ["", "## Conversation length (a hit)", ""]
        lines += [
            "| messages | InMemoryCache lookup | TieredCache lookup"
            " | InMemoryCache invoke | TieredCache invoke | invoke ratio |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for n, row in report["conversation"]["by_messages"].items():
            lines.append(
                f"| {n} | {row[f'{MEMORY} lookup median_us']:.1f}"
                f" | {row[f'{TIERED} lookup median_us']:.1f}"
                f" | {row[f'{MEMORY} invoke median_us']:.0f}"
                f" | {row[f'{TIERED} invoke median_us']:.0f}"
                f" | {row['invoke ratio vs InMemoryCache']:.3f} |"
            )
    if "entries" in report:
        lines += ["", "## Cache size (first hits: keys never read in this process)", ""]
        lines += [
            "| contender @ entries | bytes/entry (RSS) | median | p99.9 | worst"
            " | full collections | in them (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in report["entries"]["by_size"].items():
            hits = row["first_hits"]
            lines.append(
                f"| {name} | {row['bytes_per_entry']:.0f} | {hits['median_us']:.1f}"
                f" | {hits['p99_9_us']:.1f} | {hits['worst_us']:.1f}"
                f" | {row['full_collections']} | {row['collection_ms']:.1f} |"
            )
        lines.append(
            "\nThe floors: a dict keyed by SHA-256, no TTL, LRU, namespaces or counters,"
            " handing out fresh generations checked against TieredCache's allowlist,"
            " keeping each answer's bytes (parsed per hit) or its compiled objects"
            " (copied per hit)."
        )
    if "concurrency" in report:
        conc = report["concurrency"]
        lines += ["", "## Concurrency (memory hits)", ""]
        lines += [
            "| contender | gathered hits/s | full collections a pass | in them (ms)"
            " | warm menu job (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in conc["hits_per_s"]:
            lines.append(
                f"| {name} | {conc['hits_per_s'][name]:.0f}"
                f" | {conc['full_collections'][name]:.0f} | {conc['collection_ms'][name]:.0f}"
                f" | {conc['menu_s'][name]:.3f} |"
            )
        lines.append(
            f"\nTieredCache / InMemoryCache: hits {conc['hits ratio vs InMemoryCache']:.3f}x"
            f" throughput, menu job {conc['menu ratio vs InMemoryCache']:.3f}x wall time."
            f" The objects floor / InMemoryCache: hits"
            f" {conc['floor hits ratio vs InMemoryCache']:.3f}x, menu job"
            f" {conc['floor menu ratio vs InMemoryCache']:.3f}x."
        )
    if "redis" in report:
        red = report["redis"]
        lines += ["", "## Redis hits through `batch` (threads)", ""]
        lines += [
            "| worker threads | RedisCache hits/s | TieredCache hits/s | InMemoryCache hits/s"
            " | TieredCache / RedisCache | InMemoryCache / RedisCache |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for threads, row in red["by_threads"].items():
            rate = row["hits_per_s"]
            lines.append(
                f"| {threads if threads != '0' else 'default'} | {rate[REDIS_LC]:.0f}"
                f" | {rate[TIERED_REDIS]:.0f} | {rate[MEMORY]:.0f}"
                f" | {row['TieredCache speed-up vs RedisCache']:.2f}x"
                f" | {row['InMemoryCache speed-up vs RedisCache']:.2f}x |"
            )
        before, after = red["load_average"]["before"], red["load_average"]["after"]
        lines.append(
            f"\nRatios: medians of per-round ratios over {red['rounds']} interleaved rounds."
            f" Load average {before[0]:.1f} before, {after[0]:.1f} after"
            " (the machine is shared: compare ratios, not rates)."
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Cost against size: per-entry memory and first-hit latency against entries (matplotlib).

    False when there is no ``entries`` part to draw.
    """
    if "entries" not in report:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    by_name: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for label, row in report["entries"]["by_size"].items():
        name, entries = label.rsplit(" @ ", 1)
        by_name.setdefault(name, []).append((int(entries), row))
    fig, (memory, latency) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, rows in by_name.items():
        rows.sort(key=lambda item: item[0])
        sizes = [entries for entries, _ in rows]
        memory.plot(sizes, [row["bytes_per_entry"] for _, row in rows], marker="o", label=name)
        latency.plot(
            sizes, [row["first_hits"]["median_us"] for _, row in rows], marker="o", label=name
        )
    for ax, title in ((memory, "RSS bytes per entry"), (latency, "first hit, median µs")):
        ax.set_xscale("log")
        ax.set_xlabel("entries")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    latency.set_yscale("log")
    memory.legend(fontsize=8)
    fig.suptitle(f"How cost grows ({report['mode']} run, {report['date']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument("--part", choices=("all", *PARTS), default="all")
    parser.add_argument("--url", help="Redis for the redis part (default: a valkey it starts)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        warnings.simplefilter("ignore")
        WORKERS[args.worker[0]](json.loads(args.worker[1]))
        return 0
    parts = PARTS if args.part == "all" else (args.part,)
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    with tempfile.TemporaryDirectory() as tmp, Simulator(SimulatorConfig()) as sim:
        root = Path(tmp)
        if "conversation" in parts:
            report["conversation"] = part_conversation(args, root, sim.base_url)
        if "entries" in parts:
            report["entries"] = part_entries(args, root)
        if "concurrency" in parts:
            report["concurrency"] = part_concurrency(args, root, sim.base_url)
        if "redis" in parts:
            report["redis"] = part_redis(args, root, sim.base_url)
    name = "scale" if args.part == "all" else f"scale_{args.part}"
    write_results(args.out, name, quick=args.quick, report=report, text=markdown(report))
    plot(report, args.out / f"{name}{'-quick' if args.quick else ''}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
