"""Cache: the plain-Python face over the engine, for code without LangChain.

``Cache()`` is the same tiers as ``TieredCache()`` (memory over disk in
``$LLMCACHE_DIR``, or Redis, signed with ``$LLMCACHE_SECRET``), with two ways
in: ``@cache.memoize(...)`` for functions (``llmcache.memoize``), and
``get``/``set``/``delete`` (and ``aget``/``aset``/``adelete``) for
applications that manage their own keys. Values are JSON
(``llmcache.json_values``), never pickled.

``get``/``set`` do not coalesce: between them is the application's code, which
the cache cannot know has failed; ``memoize`` holds the call and coalesces.
For an answer computed between a ``get`` that missed and its ``set`` to be
stored stale when a dependency is invalidated meanwhile (so never served),
give ``get`` the same ``depends_on`` as ``set``: the versions are taken at
the miss.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from typing import Any

from llmcache.config import DEFAULT, Default, check_ttl
from llmcache.engine import dependency_names
from llmcache.errors import ConfigurationError
from llmcache.face import UNSIGNED_SHARED_WARNING, EngineFace
from llmcache.invalidation import VersionStore
from llmcache.keys import part_key
from llmcache.memoize import MISS, Memoizing, lookup, store_flow
from llmcache.serialization import DEFAULT_COMPRESS_THRESHOLD
from llmcache.tiers import Flow, Tier

__all__ = ["Cache"]

logger = logging.getLogger("llmcache")
_FACE = "plain"
_warned_unsigned_shared = False


class Cache(EngineFace, Memoizing):
    """A cache of JSON values in tiers: L1 in memory, L2 on disk or Redis.

    The constructor takes what ``TieredCache`` takes (``l1``, ``l2`` as a
    tier, a directory or a ``redis://`` URL, ``namespace``, ``ttl`` in
    seconds, ``secret``, the coalescing and stats settings); its namespace
    defaults to ``"python"``, apart from ``TieredCache``'s. Nothing is opened
    or connected until the first call.
    """

    def __init__(
        self,
        *,
        l1: Tier | Default | None = DEFAULT,
        l2: Tier | str | os.PathLike[str] | Default | None = DEFAULT,
        namespace: str = "python",
        ttl: float | None = None,
        secret: str | bytes | Default | None = DEFAULT,
        versions: VersionStore | None = None,
        clock: Callable[[], float] = time.time,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        coalesce: bool = True,
        coalesce_wait: float = 30.0,
        coalesce_lease: float = 10.0,
        stats_interval: float | None = 10.0,
    ) -> None:
        super().__init__(
            l1=l1,
            l2=l2,
            namespace=namespace,
            ttl=ttl,
            secret=secret,
            versions=versions,
            clock=clock,
            compress_threshold=compress_threshold,
            coalesce=coalesce,
            coalesce_wait=coalesce_wait,
            coalesce_lease=coalesce_lease,
            stats_interval=stats_interval,
            on_unsigned_shared=_warn_unsigned_shared,
        )

    # -- get / set / delete ----------------------------------------------------------

    def get(self, key: str, default: Any = None, *, depends_on: Collection[str] = ()) -> Any:
        """The value stored under ``key`` (a fresh copy), or ``default``."""
        found, flow = self._get(key, depends_on)
        if flow is not None:
            found = self._engine.run(flow)
        return default if found is MISS else found

    async def aget(self, key: str, default: Any = None, *, depends_on: Collection[str] = ()) -> Any:
        found, flow = self._get(key, depends_on)
        if flow is not None:
            found = await self._engine.arun(flow)
        return default if found is MISS else found

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        depends_on: Collection[str] = (),
    ) -> None:
        """Store the JSON ``value`` under ``key`` in every tier.

        ``ttl``: seconds (else the cache's); ``depends_on``: names that
        ``invalidate`` makes this value stale by (with the enclosing
        ``depends_on`` block's). A value that is not JSON raises ConfigurationError.
        """
        self._engine.run(self._set_flow(key, value, ttl, depends_on))

    async def aset(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        depends_on: Collection[str] = (),
    ) -> None:
        await self._engine.arun(self._set_flow(key, value, ttl, depends_on))

    def delete(self, key: str) -> None:
        """Remove ``key`` from every tier of this cache (nothing if it is not there).

        Other processes' memory tiers keep a copy they read before, until its
        ttl: for a removal every process sees at once, write the value with
        ``depends_on`` and ``invalidate`` the name.
        """
        self._engine.run(self._engine.delete_flow(self._key(key)))

    async def adelete(self, key: str) -> None:
        await self._engine.arun(self._engine.delete_flow(self._key(key)))

    def clear(self) -> None:
        """Remove this cache's namespace from every tier, and nothing else."""
        self._engine.run(self._engine.clear_flow())

    async def aclear(self) -> None:
        await self._engine.arun(self._engine.clear_flow())

    # -- shared by the sync and async paths ------------------------------------------

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise ConfigurationError(f"a Cache key is a string, not {type(key).__name__}")
        return part_key(self.namespace, _FACE, key)

    def _get(self, key: str, depends_on: Collection[str]) -> tuple[Any, Flow[Any] | None]:
        storage_key = self._key(key)
        dependencies = self._engine.dependencies(dependency_names(depends_on))
        return lookup(self._engine, storage_key, dependencies, 0.0)

    def _set_flow(
        self, key: str, value: Any, ttl: float | None, depends_on: Collection[str]
    ) -> Flow[int]:
        storage_key = self._key(key)
        checked_ttl = check_ttl(ttl)
        dependencies = self._engine.dependencies(dependency_names(depends_on))
        return store_flow(
            self._engine, storage_key, value, dependencies, checked_ttl, f"the value for {key!r}"
        )


def _warn_unsigned_shared() -> None:
    """Once per process: a shared store without a secret trusts whoever can write to it."""
    global _warned_unsigned_shared
    if not _warned_unsigned_shared:
        _warned_unsigned_shared = True
        logger.warning(UNSIGNED_SHARED_WARNING)
