"""EngineFace: what every face over one engine shares.

A face (``TieredCache`` for LangChain, ``NodeCache`` for LangGraph,
``TieredByteStore`` for embeddings, ``Cache`` for plain Python) turns its
host's calls into keys and payloads; everything else is the engine's. This
base builds the engine from the face's constructor arguments and hands the
maintenance calls to it (invalidate, gc, stats, close...), so each face keeps
only what is its own: keys, payloads, and the shape of its host's interface.

It calls ``super().__init__()`` with no arguments, so it can stand first in
the bases of a face whose host class has an ``__init__`` of its own
(LangGraph's ``BaseCache`` takes only optional keywords).
It imports nothing of LangChain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from llmcache.coalesce import WaitBound
from llmcache.config import Default
from llmcache.engine import Engine
from llmcache.invalidation import VersionStore
from llmcache.stats import CacheStats
from llmcache.tiers import Tier

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["UNSIGNED_SHARED_WARNING", "EngineFace", "EngineOptions"]

logger = logging.getLogger("llmcache")

UNSIGNED_SHARED_WARNING = (
    "llmcache: a Redis L2 with no LLMCACHE_SECRET: anyone who can write to that"
    " server can plant answers that every process will serve. Set LLMCACHE_SECRET"
    " (README, 'What it guarantees') to sign and verify every stored value."
)


class EngineOptions(TypedDict, total=False):
    """The keyword arguments of :class:`llmcache.engine.Engine`, as a face passes them on."""

    l1: Tier | Default | None
    l2: Tier | str | os.PathLike[str] | Default | None
    namespace: str
    ttl: float | None
    secret: str | bytes | Default | None
    versions: VersionStore | None
    clock: Callable[[], float]
    compress_threshold: int
    coalesce: bool
    coalesce_wait: WaitBound
    coalesce_lease: float
    stats_interval: float | None
    on_unsigned_shared: Callable[[], None] | None


class EngineFace:
    """One engine, built from the face's arguments, and the calls every face hands to it.

    Nothing is opened or connected until the first call (the engine's rule).
    """

    def __init__(self, **options: Unpack[EngineOptions]) -> None:
        self._engine = Engine(**options)
        # An attribute, not a property: the hit paths read it on every call.
        self.namespace = self._engine.namespace
        super().__init__()

    @property
    def engine(self) -> Engine:
        """The engine under this face, shared by nothing else unless you pass it on."""
        return self._engine

    @property
    def tiers(self) -> Sequence[Tier]:
        return self._engine.tiers

    @property
    def ttl(self) -> float | None:
        """Seconds an entry lives when its write gives no ttl of its own (None: no limit)."""
        return self._engine.ttl

    def invalidate(self, *names: str) -> None:
        """Every entry that depends on one of ``names`` is stale from now on, in every tier.

        One version bump per name: O(1), no scan. Unlike lookups this does not
        fail open: if the version store cannot be reached, TierError is raised,
        because a silent failure here would mean serving stale answers.
        """
        self._engine.invalidate(names)

    async def ainvalidate(self, *names: str) -> None:
        """The async twin of :meth:`invalidate`."""
        await self._engine.ainvalidate(names)

    def gc(self) -> dict[str, dict[str, int]]:
        """Delete this namespace's expired, stale and garbled entries, tier by tier.

        Stale entries are skipped at once on every read; this reclaims the
        space of those nobody reads again. It scans the namespace, so it is a
        maintenance job (``llmcache gc``), never part of ``invalidate``.
        Returns, per tier that can list its keys, what was removed and kept,
        and for the version store, the version records dropped and kept.
        """
        return self._engine.gc()

    def stats(self) -> CacheStats:
        """Hits, misses, errors and latency per tier; tokens and cost saved by hits.

        ``print()`` it for a table; ``errors`` counts every error, the tiers' too.
        """
        return self._engine.stats()

    def totals(self) -> dict[str, int]:
        """The whole cache's counts: what ``stats()`` totals and ``llmcache.fleet`` reports."""
        return self._engine.totals()

    def flush_stats(self) -> bool:
        """Add this process's counts since the last report to the L2's fleet-wide counters now.

        Done on its own every ``stats_interval`` seconds, at ``close()`` and at
        exit; False if the store could not take them (they are kept for the next).
        """
        return self._engine.flush_stats()

    def instrument(self, meter_provider: Any = None) -> None:
        """Report this cache's counters and latencies as OpenTelemetry metrics.

        Needs the ``otel`` extra; ``meter_provider`` defaults to the global one.
        See ``llmcache.metrics`` for the instruments.
        """
        self._engine.instrument(meter_provider)

    def reset_stats(self) -> None:
        """Zero this process's counters (the fleet-wide ones keep what was reported)."""
        self._engine.reset_stats()

    def close(self) -> None:
        self._engine.close()

    async def aclose(self) -> None:
        await self._engine.aclose()

    def __repr__(self) -> str:
        tiers = ", ".join(f"{tier.name}={type(tier).__name__}" for tier in self.tiers)
        return f"{type(self).__name__}(namespace={self.namespace!r}, {tiers}{self._repr_tail()})"

    def _repr_tail(self) -> str:
        """What a face adds at the end of its repr (``", ttl=60.0"``); nothing by default."""
        return ""
