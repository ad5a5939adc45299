"""The engine every face drives: keys to tiers to versions to coalescing.

It stores JSON-able payloads under storage keys a face computes, and knows
nothing of LangChain: ``TieredCache`` (LangChain's ``BaseCache``) turns
prompts into keys and generations into payloads, and other faces do the
same for their hosts. Everything that decides what a hit is lives here once,
so a fix to promotion, invalidation, coalescing or failing open reaches every
face: reads and writes go through ``layers.Layers`` flows, which the caller
runs with blocking calls (:meth:`run`) or awaits (:meth:`arun`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from llmcache.backends.disk import DiskTier
from llmcache.backends.resolve import is_redis_tier, resolve_l1, resolve_l2
from llmcache.coalesce import Coalescer, RemoteLeases, WaitBound
from llmcache.config import DEFAULT, Default, check_ttl
from llmcache.errors import ConfigurationError, SerializationError, TierError
from llmcache.fleet import DiskFleetStore, FleetRecorder, FleetStore, RedisFleetStore
from llmcache.invalidation import (
    MemoryVersions,
    PendingSnapshots,
    VersionStore,
    current_dependencies,
    validate_dependency,
)
from llmcache.invalidation.disk import DiskVersions
from llmcache.keys import validate_namespace
from llmcache.layers import Layers
from llmcache.serialization import DEFAULT_COMPRESS_THRESHOLD, Encoded, Record, Signer
from llmcache.stats import CacheStats, Counters
from llmcache.tiers import Flow, Hit, Needs, Tier

__all__ = ["Engine", "Read", "default_versions", "dependency_names", "listed_names"]

T = TypeVar("T")


@dataclass(slots=True)
class Read:
    """What reading the tiers for one key found: a hit, or what its miss needs next."""

    key: str
    dependencies: frozenset[str]
    hit: Hit | None
    #: The dependency versions before the read (None: the version store could not say).
    snapshot: dict[str, int] | None
    #: The coalescer's count of completed calls before the read.
    mark: int


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
        stats_interval: float | None = 10.0,
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
            versions=versions if versions is not None else default_versions(tiers),
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
        if stats_interval is not None and stats_interval <= 0:
            raise ConfigurationError(f"stats_interval is seconds > 0 or None: {stats_interval!r}")
        # Counts added to the widest store now and then, so that `llmcache stats`
        # shows every process's (llmcache.fleet). Holds no reference to the engine.
        self.fleet = _fleet_recorder(tiers, self.namespace, self._totals_function(), stats_interval)
        if self.fleet is not None:
            self.fleet.attach(self)

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

    def peek_encoded(self, key: str) -> Encoded | None:
        """What :meth:`peek` reads, before a record is made of it (see ``Layers.peek_encoded``)."""
        return self.layers.peek_encoded(key, self.namespace)

    def wait_bound(self, prompt: str, llm_string: str) -> float:
        """How long a follower of this call may wait for its leader (0: it will not)."""
        return 0.0 if self.coalescer is None else self.coalescer.bound(prompt, llm_string)

    def lookup_flow(self, key: str, dependencies: frozenset[str], wait: float) -> Flow[Hit | None]:
        """The tiers, then, on a miss, the identical call in flight (for up to ``wait`` s).

        A miss counts here; a hit is counted by the face once it has made an
        answer of the record (it may still find the record unusable). A face
        with a step of its own between the two (the semantic tier) runs
        :meth:`read_flow` and :meth:`settle_flow` itself.
        """
        read = yield from self.read_flow(key, dependencies)
        return (yield from self.settle_flow(read, wait))

    def read_flow(self, key: str, dependencies: frozenset[str]) -> Flow[Read]:
        """The tiers alone: a hit, or what a miss must remember."""
        if self.fleet is not None and not self.fleet.started:
            self.fleet.start()  # once: the first lookup memory alone could not answer
        mark = self.coalescer.completed if self.coalescer is not None else 0
        hit, snapshot = yield from self.layers.get_flow(key, self.namespace, dependencies)
        return Read(key, dependencies, hit, snapshot, mark)

    def settle_flow(self, read: Read, wait: float) -> Flow[Hit | None]:
        """After a read: its hit, else the identical call in flight, else a counted miss."""
        hit, snapshot, key = read.hit, read.snapshot, read.key
        coalescer = self.coalescer
        if hit is None and coalescer is not None and snapshot is not None:
            # A miss: lead the call, or wait for the identical one in flight.
            dependencies = read.dependencies
            hit = yield from coalescer.join_flow(
                key,
                snapshot,
                read.mark,
                wait,
                lambda: self.layers.get_flow(key, self.namespace, dependencies),
            )
        if hit is None:
            if read.dependencies and snapshot is not None:
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
        if self.fleet is not None and not self.fleet.started:
            self.fleet.start()
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

    def abandon_flow(self, key: str, *, retry: bool = True) -> Flow[None]:
        """The call for ``key`` ended with no answer to store: its followers stop waiting now.

        ``retry``: one of them leads a new call (the call failed); else each
        calls on its own (the answer came but cannot be stored, and would not
        be the next time either).
        """
        self._pending.take(key)
        if self.coalescer is not None:
            if retry:
                yield from self.coalescer.abandon_flow(key)
            else:
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
        """Delete this namespace's expired, stale and garbled entries, tier by tier.

        Returns, per tier that can list its keys, what was removed and kept,
        and for the version store (``versions:redis``...), how many version
        records no kept entry needed were dropped, and how many were kept.
        """
        report: dict[str, dict[str, int]] = {}
        needs = Needs()
        for index, tier in enumerate(self.tiers):
            list_keys = getattr(tier, "keys", None)
            if callable(list_keys):
                keys = list_keys(self.namespace)
                report[tier.name] = self.layers.run(
                    self.layers.sweep_flow(index, self.namespace, keys, needs)
                )
        # Version records no kept entry needs go too: a dropped record costs at
        # most a miss (an entry only in some process's memory tier, which no
        # scan sees, misses once). Not when an entry could not be verified:
        # what it needs is unknown.
        if report and needs.complete:
            versions = self.layers.versions
            removed, kept = versions.retain(self.namespace, needs.names)
            report[versions.name] = {"removed": removed, "kept": kept}
        return report

    def stats(self) -> CacheStats:
        """Hits, misses, errors and latency per tier; tokens and cost saved by hits.

        ``errors`` counts every error, the tiers' too.
        """
        counters = self.counters
        hits, misses = counters.get("hits"), counters.get("misses")
        tiers = self.layers.stats()
        sources = _error_sources(counters, self.layers, self.coalescer)
        return CacheStats(
            lookups=hits + misses,
            hits=hits,
            misses=misses,
            errors=sum(tier.errors for tier in tiers.values()) + sum(sources.values()),
            tokens_saved=counters.get("tokens_saved"),
            tiers=tiers,
            extra=self.coalescer.counts() if self.coalescer is not None else {},
            namespace=self.namespace,
            cost_saved_nanos=counters.get("cost_saved_nanos"),
            tokens_unpriced=counters.get("tokens_unpriced"),
            errors_by_source=sources,
        )

    def totals(self) -> dict[str, int]:
        """The whole cache's counts: what ``stats()`` totals and ``llmcache.fleet`` reports."""
        return _totals(self.counters, self.layers, self.coalescer)

    def _totals_function(self) -> Callable[[], dict[str, int]]:
        # Not a bound method: the fleet recorder must not keep the engine alive.
        counters, layers, coalescer = self.counters, self.layers, self.coalescer
        return lambda: _totals(counters, layers, coalescer)

    def flush_stats(self) -> bool:
        """Add this process's counts since the last report to the fleet-wide counters now."""
        return True if self.fleet is None else self.fleet.flush()

    def instrument(self, meter_provider: Any = None) -> None:
        """Report this engine's counters and latencies as OpenTelemetry metrics (``otel`` extra)."""
        from llmcache.metrics import instrument

        instrument(self, self.layers, meter_provider)

    def reset_stats(self) -> None:
        """Zero this process's counters (the fleet-wide ones keep what was reported)."""
        if self.fleet is not None:
            self.fleet.flush()  # what was counted so far still counts for the fleet
        self.counters.reset()
        self.layers.reset_stats()
        if self.coalescer is not None:
            self.coalescer.counters.reset()
        if self.fleet is not None:
            self.fleet.rebase()

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
        self.layers.close()

    async def aclose(self) -> None:
        if self.fleet is not None:
            # A last report: a small local write or one round trip, off the event
            # loop (a Redis that is down would hold it for a connect timeout).
            await asyncio.to_thread(self.fleet.close)
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


def default_versions(tiers: Sequence[Tier]) -> VersionStore:
    """Versions shared as widely as the widest tier: Redis, else the disk's host, else memory."""
    for tier in reversed(tiers):
        if is_redis_tier(tier):  # no import: redis is an optional extra
            from llmcache.invalidation.redis import RedisVersions

            return RedisVersions(tier)  # type: ignore[arg-type]
        if isinstance(tier, DiskTier):
            return DiskVersions(tier.path)
    return MemoryVersions()


def remote_leases(tiers: Sequence[Tier], lease: float) -> RemoteLeases | None:
    """Coalescing across processes: leases on the widest tier's server, if it is Redis."""
    for tier in reversed(tiers):
        if is_redis_tier(tier):  # no import: redis is an optional extra
            from llmcache.coalesce.redis_leases import RedisLeases

            return RedisLeases(tier, lease=lease)  # type: ignore[arg-type]
    return None


def _error_sources(
    counters: Counters, layers: Layers, coalescer: Coalescer | None
) -> dict[str, int]:
    """Errors counted outside the tiers, by where: the cache's own, the version store's, ..."""
    sources = {"cache": counters.get("errors")}
    others = [*layers.other_errors().items()]
    if coalescer is not None:
        others.append((coalescer.counters.name, coalescer.counters.get("errors")))
        if coalescer.remote is not None:
            remote = coalescer.remote.counters
            others.append((remote.name, remote.get("errors")))
    for name, errors in others:
        sources[name] = sources.get(name, 0) + errors
    return sources


def _totals(counters: Counters, layers: Layers, coalescer: Coalescer | None) -> dict[str, int]:
    """The whole cache's counts. Holds no cache: a fleet recorder calls it as its cache dies."""
    return {
        "hits": counters.get("hits"),
        "misses": counters.get("misses"),
        "errors": layers.tier_totals("errors")
        + sum(_error_sources(counters, layers, coalescer).values()),
        "coalesced": 0 if coalescer is None else coalescer.counters.get("coalesced"),
        "stale": layers.tier_totals("stale"),
        "corrupt": layers.tier_totals("corrupt"),
        "tokens_saved": counters.get("tokens_saved"),
        "cost_saved_nanos": counters.get("cost_saved_nanos"),
        "tokens_unpriced": counters.get("tokens_unpriced"),
    }


def _fleet_recorder(
    tiers: Sequence[Tier],
    namespace: str,
    totals: Callable[[], dict[str, int]],
    interval: float | None,
) -> FleetRecorder | None:
    """A recorder into the widest tier's store (Redis, else disk); None with neither."""
    if interval is None:
        return None
    for tier in reversed(tiers):
        if is_redis_tier(tier):
            store: FleetStore = RedisFleetStore(tier._client, tier.prefix)  # type: ignore[attr-defined]
            return FleetRecorder(store, namespace, totals, interval=interval)
        if isinstance(tier, DiskTier):
            return FleetRecorder(DiskFleetStore(tier.path), namespace, totals, interval=interval)
    return None
