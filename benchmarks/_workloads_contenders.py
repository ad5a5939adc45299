"""The caches benchmarks/workloads.py compares, each built over a store of its own.

A contender is a name and a factory from a :class:`Store` (a directory, a Redis URL, a
namespace: one per contender and workload, so every cold run starts cold) to a LangChain
``BaseCache``, or ``None`` for no cache. ``persistent`` says whether a new process on the
same store can find the entries. Adding a contender is one line in ``CONTENDERS``.

The semantic contenders embed with llmcache's offline all-MiniLM-L6-v2 (langchain-redis's
``RedisSemanticCache`` through a LangChain ``Embeddings`` adapter over the same model), so
they differ only in what they compare and when they refuse. Those on Redis need the search
module (``needs_search``): their store's ``search_url`` is database 0 of a second server with
RediSearch loaded (RediSearch indexes database 0 only), the namespace keeping them apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.caches import BaseCache

__all__ = ["CONTENDERS", "Contender", "Store", "aclose_cache", "contender"]

BENCH_SECRET = "llmcache-benchmark-secret"  # a shared L2 is signed, as the README advises


@dataclass(frozen=True)
class Store:
    directory: Path
    redis_url: str
    namespace: str
    search_url: str | None = None  # a Redis with the search module, for semantic contenders


@dataclass(frozen=True)
class Contender:
    name: str
    make: Callable[[Store], BaseCache | None]
    persistent: bool  # a new process on the same store finds the entries
    invalidates: bool = False  # has TieredCache.invalidate (the others can only clear())
    needs_search: bool = False  # runs only when a Redis with the search module is there


def _in_memory(store: Store) -> BaseCache:
    from langchain_core.caches import InMemoryCache

    return InMemoryCache()


def _sqlite(store: Store) -> BaseCache:
    from langchain_community.cache import SQLiteCache

    return SQLiteCache(database_path=str(store.directory / "langchain.db"))


def _community_redis(store: Store) -> BaseCache:
    import redis
    from langchain_community.cache import RedisCache

    return RedisCache(redis.Redis.from_url(store.redis_url))


def _community_async_redis(store: Store) -> BaseCache:
    import redis.asyncio
    from langchain_community.cache import AsyncRedisCache

    return AsyncRedisCache(redis.asyncio.Redis.from_url(store.redis_url))


def _langchain_redis(store: Store) -> BaseCache:
    from langchain_redis import RedisCache

    return RedisCache(redis_url=store.redis_url, prefix=store.namespace)


def _tiered_memory(store: Store) -> BaseCache:
    from llmcache import TieredCache

    return TieredCache(l2=None, namespace=store.namespace)


def _tiered_disk(store: Store) -> BaseCache:
    from llmcache import DiskTier, TieredCache

    return TieredCache(l2=DiskTier(store.directory / "tiered"), namespace=store.namespace)


def _tiered_redis(store: Store) -> BaseCache:
    from llmcache import RedisTier, TieredCache

    return TieredCache(
        l2=RedisTier(store.redis_url), namespace=store.namespace, secret=BENCH_SECRET
    )


def _search_url(store: Store) -> str:
    if store.search_url is None:
        raise ValueError("this contender needs a Redis with the search module (search_url)")
    return store.search_url


def _tiered_disk_semantic(store: Store) -> BaseCache:
    from llmcache import DiskTier, SemanticTier, TieredCache

    # The embedded default: its index is a SQLite file beside the disk tier.
    return TieredCache(
        l2=DiskTier(store.directory / "tiered"), namespace=store.namespace,
        semantic=SemanticTier(),
    )  # fmt: skip


def _tiered_redis_semantic(store: Store) -> BaseCache:
    from llmcache import RedisTier, SemanticTier, TieredCache

    return TieredCache(
        l2=RedisTier(store.redis_url), namespace=store.namespace, secret=BENCH_SECRET,
        semantic=SemanticTier(redis=_search_url(store)),
    )  # fmt: skip


def _langchain_redis_semantic(store: Store) -> BaseCache:
    from langchain_redis import RedisSemanticCache
    from semantic import MiniLMEmbeddings  # benchmarks/semantic.py: the same MiniLM

    # Its defaults otherwise (distance 0.2), as a user who follows its README gets.
    return RedisSemanticCache(
        embeddings=MiniLMEmbeddings(), redis_url=_search_url(store),
        name=f"lcr-semantic-{store.namespace}",
    )  # fmt: skip


CONTENDERS: tuple[Contender, ...] = (
    Contender("no cache", lambda store: None, persistent=False),
    Contender("InMemoryCache", _in_memory, persistent=False),
    Contender("SQLiteCache", _sqlite, persistent=True),
    Contender("community RedisCache", _community_redis, persistent=True),
    Contender("community AsyncRedisCache", _community_async_redis, persistent=True),
    Contender("langchain-redis RedisCache", _langchain_redis, persistent=True),
    Contender("TieredCache memory", _tiered_memory, persistent=False, invalidates=True),
    Contender("TieredCache memory+disk", _tiered_disk, persistent=True, invalidates=True),
    Contender("TieredCache memory+Redis", _tiered_redis, persistent=True, invalidates=True),
    Contender("langchain-redis RedisSemanticCache", _langchain_redis_semantic, persistent=True,
              needs_search=True),
    Contender("TieredCache memory+disk+semantic", _tiered_disk_semantic, persistent=True,
              invalidates=True),
    Contender("TieredCache memory+Redis+semantic", _tiered_redis_semantic, persistent=True,
              invalidates=True, needs_search=True),
)  # fmt: skip


def contender(name: str) -> Contender:
    for candidate in CONTENDERS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown contender {name!r}; known: {[c.name for c in CONTENDERS]}")


async def aclose_cache(cache: BaseCache | None) -> None:
    """Close what the factory opened (connections, files); each kind has its own way."""
    if cache is None:
        return
    aclose: Any = getattr(cache, "aclose", None)
    if callable(aclose):  # TieredCache
        await aclose()
        return
    client: Any = getattr(cache, "redis", None)
    if client is not None:
        closing = getattr(client, "aclose", None) or getattr(client, "close", None)
        with contextlib.suppress(Exception):
            result = closing() if closing is not None else None
            if hasattr(result, "__await__"):
                await result
    engine: Any = getattr(cache, "engine", None)
    if engine is not None:  # SQLiteCache
        engine.dispose()
