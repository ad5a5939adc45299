"""The engine every face drives: keys to tiers to versions to coalescing.

It stores JSON-able payloads under storage keys a face computes, and knows
nothing of LangChain: ``TieredCache`` (LangChain's ``BaseCache``) turns
prompts into keys and generations into payloads, and other faces do the
same for their hosts. Everything that decides what a hit is lives here once,
so a fix to promotion, invalidation, coalescing or failing open reaches every
face: reads and writes go through ``tiers.Layers`` flows, which the caller
runs with blocking calls (:meth:`run`) or awaits (:meth:`arun`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from llmcache.backends.disk import DiskTier
from llmcache.coalesce import Coalescer, WaitBound, remote_leases
from llmcache.config import DEFAULT, Default, check_ttl, is_redis_tier, resolve_l1, resolve_l2
from llmcache.errors import ConfigurationError, SerializationError, TierError
from llmcache.invalidation import (
    DiskVersions,
    MemoryVersions,
    PendingSnapshots,
    VersionStore,
    current_dependencies,
    validate_dependency,
)
from llmcache.keys import validate_namespace
from llmcache.serialization import DEFAULT_COMPRESS_THRESHOLD, Record, Signer
from llmcache.stats import CacheStats, Counters
from llmcache.tiers import Flow, Hit, Layers, Tier

__all__ = ["Engine", "dependency_names", "listed_names"]

T = TypeVar("T")


class Engine:
    """Tiers, version store, signer and coalescer for one namespace.

    Faces call :meth:`peek` (a hit memory alone can answer), then
    :meth:`lookup_flow` (the tiers, then coalescing on a miss), and
    :meth:`store_flow` with the answer. A face that learns its call failed
    before any answer calls :meth:`abandon_flow`, so the key's followers go
    on at once instead of waiting out their bound.
    """

    def __init__(
        self,
        *,
        l1: Tier | Default | None = DEFAULT,
        l2: Tier | str | os.PathLike[str] | Default | None = DEFAULT,
        namespace: str = "default",
        ttl: float | None = None,
        secret: str | bytes | Default | None = DEFAULT,
        versions: VersionStore | None = None,
        clock: Callable[[], float] = time.time,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        coalesce: bool = True,
        coalesce_wait: WaitBound = 30.0,
        coalesce_lease: float = 10.0,
        on_unsigned_shared: Callable[[], None] | None = None,
    ) -> None:
        self.namespace = validate_namespace(namespace)
        self.ttl = check_ttl(ttl)
        tiers = [tier for tier in (resolve_l1(l1), resolve_l2(l2)) if tier is not None]
        if not tiers:
            raise ConfigurationError("at least one tier is needed (l1 and l2 are both None)")
        if isinstance(secret, Default):
            signer = Signer.from_env()
        else:
            signer = None if secret is None else Signer.from_secret(secret)
        shared = any(is_redis_tier(tier) for tier in tiers)
        if signer is None and shared and on_unsigned_shared is not None:
            on_unsigned_shared()
        self.layers = Layers(
            tiers,
            versions=versions if versions is not None else _default_versions(tiers),
            signer=signer,
            clock=clock,
            compress_threshold=compress_threshold,
        )
        self.counters = Counters("cache")
        self._pending = PendingSnapshots()
        self.coalescer: Coalescer | None = None
        if coalesce:
            self.coalescer = Coalescer(
                wait=coalesce_wait,
                lease=coalesce_lease,
                remote=remote_leases(tiers, coalesce_lease),
            )
            self.coalescer.attach(self.layers)

    @property
    def tiers(self) -> Sequence[Tier]:
        return self.layers.tiers

    def run(self, flow: Flow[T]) -> T:
        return self.layers.run(flow)

    async def arun(self, flow: Flow[T]) -> T:
        return await self.layers.arun(flow)

    def run_many(self, flows: Sequence[Flow[T]]) -> list[T]:
        """Run flows side by side; a tier that batches gets one call a step (Layers.run_many)."""
        return self.layers.run_many(flows)

    async def arun_many(self, flows: Sequence[Flow[T]]) -> list[T]:
        """The async twin: concurrent runs, which the Redis tier batches per loop tick."""
        if len(flows) == 1:
            return [await self.layers.arun(flows[0])]
        return list(await asyncio.gather(*(self.layers.arun(flow) for flow in flows)))

    # -- reads and writes ---------------------------------------------------------

    def dependencies(self, extra: Iterable[str] = ()) -> frozenset[str]:
        """The enclosing ``depends_on`` names, plus ``extra`` (checked)."""
        names = current_dependencies()
        return names | dependency_names(extra) if extra else names

    def peek(self, key: str) -> Record | None:
        """The record memory holds for ``key``, current and unexpired, or None."""
        return self.layers.peek(key, self.namespace)

    def wait_bound(self, prompt: str, llm_string: str) -> float:
        """How long a follower of this call may wait for its leader (0: it will not)."""
        return 0.0 if self.coalescer is None else self.coalescer.bound(prompt, llm_string)

    def lookup_flow(self, key: str, dependencies: frozenset[str], wait: float) -> Flow[Hit | None]:
        """The tiers, then, on a miss, the identical call in flight (for up to ``wait`` s).

        A miss counts here; a hit is counted by the face once it has made an
        answer of the record (it may still find the record unusable).
        """
        coalescer = self.coalescer
        mark = coalescer.completed if coalescer is not None else 0
        hit, snapshot = yield from self.layers.get_flow(key, self.namespace, dependencies)
        if hit is None and coalescer is not None and snapshot is not None:
            # A miss: lead the call, or wait for the identical one in flight.
            hit = yield from coalescer.join_flow(
                key,
                snapshot,
                mark,
                wait,
                lambda: self.layers.get_flow(key, self.namespace, dependencies),
            )
        if hit is None:
            if dependencies and snapshot is not None:
                self._pending.remember(key, snapshot)
            self.counters.add("misses")
        return hit

    def store_flow(
        self, key: str, payload: Any, dependencies: frozenset[str], ttl: float | None = None
    ) -> Flow[int]:
        """Store ``payload`` under ``key`` in every tier; hand it to the key's followers.

        ``ttl`` (else the engine's) in seconds. A payload that cannot be
        stored exactly is not stored (counted as an error); the caller's call
        has its answer either way. Returns how many tiers took it.
        """
        versions = self._pending.take(key) if dependencies else None
        ttl = self.ttl if ttl is None else ttl
        stored: Any | None = payload
        try:
            written = yield from self.layers.put_flow(
                key,
                self.namespace,
                payload,
                ttl=ttl,
                dependencies=dependencies,
                versions=versions,
            )
        except SerializationError as exc:
            self.counters.failure("errors", "encode", exc)
            stored, written = None, 0
        if self.coalescer is not None:  # written first: other processes read it on our word
            yield from self.coalescer.finish_flow(key, stored, versions)
        return written

    def abandon_flow(self, key: str) -> Flow[None]:
        """The call for ``key`` ended with no answer: its followers stop waiting now."""
        self._pending.take(key)
        if self.coalescer is not None:
            yield from self.coalescer.finish_flow(key, None, None)

    def delete_flow(self, key: str) -> Flow[None]:
        return self.layers.delete_flow(key)

    # -- maintenance ----------------------------------------------------------------

    def invalidate(self, names: Iterable[str]) -> None:
        """Every entry that depends on one of ``names`` is stale from now on, in every tier.

        Unlike lookups this does not fail open: a silent failure here would
        mean serving stale answers.
        """
        checked = dependency_names(names)
        try:
            self.layers.versions.bump(self.namespace, checked)
        except Exception as exc:
            raise TierError(f"could not invalidate {listed_names(checked)}: {exc}") from exc

    async def ainvalidate(self, names: Iterable[str]) -> None:
        checked = dependency_names(names)
        try:
            await self.layers.versions.abump(self.namespace, checked)
        except Exception as exc:
            raise TierError(f"could not invalidate {listed_names(checked)}: {exc}") from exc

    def clear_flow(self) -> Flow[None]:
        return self.layers.clear_flow(self.namespace)

    def gc(self) -> dict[str, dict[str, int]]:
        """Delete this namespace's expired, stale and garbled entries, tier by tier."""
        report: dict[str, dict[str, int]] = {}
        for index, tier in enumerate(self.tiers):
            list_keys = getattr(tier, "keys", None)
            if callable(list_keys):
                keys = list_keys(self.namespace)
                report[tier.name] = self.layers.run(
                    self.layers.sweep_flow(index, self.namespace, keys)
                )
        return report

    def stats(self) -> CacheStats:
        counters = self.counters
        return CacheStats(
            lookups=counters.get("hits") + counters.get("misses"),
            hits=counters.get("hits"),
            misses=counters.get("misses"),
            errors=counters.get("errors"),
            tokens_saved=counters.get("tokens_saved"),
            tiers=self.layers.stats(),
            extra=self.coalescer.counts() if self.coalescer is not None else {},
        )

    def reset_stats(self) -> None:
        self.counters.reset()
        self.layers.reset_stats()
        if self.coalescer is not None:
            self.coalescer.counters.reset()

    def close(self) -> None:
        self.layers.close()

    async def aclose(self) -> None:
        await self.layers.aclose()


def dependency_names(names: Iterable[str]) -> frozenset[str]:
    """Checked dependency names (one string alone is refused: it is not a collection)."""
    if isinstance(names, str):
        raise ConfigurationError("dependencies are a collection of names, not one string")
    return frozenset(validate_dependency(name) for name in names)


def listed_names(names: frozenset[str], most: int = 5) -> str:
    """Names for an error message: a few, and how many more."""
    shown = sorted(names)[:most]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(repr(name[:80]) for name in shown) + more


def _default_versions(tiers: Sequence[Tier]) -> VersionStore:
    """Versions shared as widely as the widest tier: Redis, else the disk's host, else memory."""
    for tier in reversed(tiers):
        if is_redis_tier(tier):  # no import: redis is an optional extra
            from llmcache.backends.redis_versions import RedisVersions

            return RedisVersions(tier)  # type: ignore[arg-type]
        if isinstance(tier, DiskTier):
            return DiskVersions(tier.path)
    return MemoryVersions()
