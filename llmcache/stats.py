"""Counters and latency percentiles, per tier and for the whole cache.

``+=`` on a shared count is not atomic under threads, and LangChain's
``batch`` runs lookups in a thread pool: each thread counts on its own
(``Counters``), and reads add the threads' counts up.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmcache.stats_view import render

__all__ = ["CacheStats", "Counters", "TierStats", "percentile"]

logger = logging.getLogger("llmcache")

#: Latency samples kept per tier: enough for a stable p99, bounded in memory.
_SAMPLES = 2048


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, nearest-rank; 0.0 when empty."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class TierStats:
    """A snapshot of one tier's counters; latencies in microseconds."""

    name: str
    hits: int
    misses: int
    errors: int
    corrupt: int
    stale: int
    writes: int
    latency_p50_us: float
    latency_p90_us: float
    latency_p99_us: float

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a whole cache: what ``TieredCache.stats()`` returns.

    ``print()`` it for a table (:func:`llmcache.stats_view.render`); read its
    fields or ``as_dict()`` in programs. ``errors`` is every error the cache
    counted: its tiers', its version store's, coalescing's and its own
    (``errors_by_source`` splits them). ``cost_saved_usd`` prices the tokens
    saved whose model has a known price (``llmcache.pricing``);
    ``tokens_unpriced`` are saved tokens of models with no known price.
    """

    lookups: int
    hits: int
    misses: int
    errors: int
    tokens_saved: int
    tiers: dict[str, TierStats] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)
    namespace: str = ""
    cost_saved_nanos: int = 0
    tokens_unpriced: int = 0
    #: Errors outside the tiers, by source ("cache", "versions:disk", "coalesce", ...).
    errors_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def coalesced(self) -> int:
        return self.extra.get("coalesced", 0)

    @property
    def cost_saved_usd(self) -> float:
        """The cost of the saved tokens whose price is known (see ``tokens_unpriced``)."""
        return self.cost_saved_nanos / 1e9

    def as_dict(self) -> dict[str, Any]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "hit_rate": self.hit_rate,
            "tokens_saved": self.tokens_saved,
            "cost_saved_usd": self.cost_saved_usd,
            "tokens_unpriced": self.tokens_unpriced,
            "errors_by_source": dict(self.errors_by_source),
            **self.extra,
            "tiers": {
                name: {**tier.__dict__, "hit_rate": tier.hit_rate}
                for name, tier in self.tiers.items()
            },
        }

    def __str__(self) -> str:
        return render(self)


class _Shard:
    """One thread's counts; when the thread ends, its counts are kept (see Counters)."""

    __slots__ = ("__weakref__", "counts")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}


class Counters:
    """Named counters and a reservoir of recent latencies, safe under threads.

    Each thread counts in a dict of its own, so a count takes no lock (a hit
    counts two or three things, and LangChain's ``batch`` runs lookups in a
    thread pool, where one shared lock would also be contended); a read adds
    the threads' dicts up. When a thread ends, its counts move into a dict of
    retired counts, so a program that starts a thread per request keeps one
    dict per live thread, not one per thread it ever had.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()  # guards the shard list, retired counts and logging
        self._local = threading.local()
        self._shards: list[dict[str, int]] = []
        self._retired: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._logged: set[str] = set()

    def _new_shard(self) -> dict[str, int]:
        """This thread's first count: a dict of its own, folded in when the thread ends."""
        shard = self._local.shard = _Shard()
        with self._lock:
            self._shards.append(shard.counts)
        # A weak reference: the finalizer must not keep these counters alive.
        weakref.finalize(shard, _retire_shard, weakref.ref(self), shard.counts)
        return shard.counts

    def _retire(self, counts: dict[str, int]) -> None:
        with self._lock:
            for counter, amount in counts.items():
                self._retired[counter] = self._retired.get(counter, 0) + amount
            self._shards = [shard for shard in self._shards if shard is not counts]

    # add and add_hit each fetch this thread's dict inline: a helper call would
    # cost as much as the count itself, on every hit.

    def add(self, counter: str, amount: int = 1) -> None:
        try:
            counts: dict[str, int] = self._local.shard.counts
        except AttributeError:
            counts = self._new_shard()
        counts[counter] = counts.get(counter, 0) + amount

    def add_hit(self, tokens: int, nanos: int = 0) -> None:
        """A hit, the tokens it saved and their cost (the commonest count).

        ``nanos``: nano-dollars, 0 when nothing to price, negative when the
        model's price is unknown (``pricing.UNKNOWN``): its tokens are unpriced.
        """
        try:
            counts: dict[str, int] = self._local.shard.counts
        except AttributeError:
            counts = self._new_shard()
        counts["hits"] = counts.get("hits", 0) + 1
        counts["tokens_saved"] = counts.get("tokens_saved", 0) + tokens
        if nanos:
            if nanos > 0:
                counts["cost_saved_nanos"] = counts.get("cost_saved_nanos", 0) + nanos
            else:
                counts["tokens_unpriced"] = counts.get("tokens_unpriced", 0) + tokens

    def observe(self, seconds: float) -> None:
        self._latencies.append(seconds)  # deque.append is atomic

    def tap(self, sink: deque[float]) -> None:
        """Also append every latency observed from now on to ``sink`` (metrics export).

        It shadows ``observe`` with an instance attribute, so counters nobody
        taps pay nothing for the possibility: no flag is checked on a hit.
        """
        previous = self.observe  # another tap's, or the plain one

        def observe(seconds: float) -> None:
            previous(seconds)
            sink.append(seconds)

        self.observe = observe  # type: ignore[method-assign]

    def get(self, counter: str) -> int:
        with self._lock:
            return self._retired.get(counter, 0) + sum(
                shard.get(counter, 0) for shard in self._shards
            )

    def failure(self, counter: str, what: str, exc: BaseException) -> None:
        """Count a failure and log it: loudly the first time per kind, quietly after."""
        self.add(counter)
        kind = f"{what}:{type(exc).__name__}"
        with self._lock:
            first = kind not in self._logged
            self._logged.add(kind)
        level = logging.WARNING if first else logging.DEBUG
        logger.log(
            level,
            "llmcache %s: %s failed (%s: %s); treated as a miss",
            self.name,
            what,
            type(exc).__name__,
            exc,
        )

    def reset(self) -> None:
        """Zero every count (a count racing with the reset may survive it)."""
        with self._lock:
            for shard in self._shards:
                shard.clear()
            self._retired.clear()
            self._latencies.clear()

    def tier_snapshot(self) -> TierStats:
        samples = [s * 1e6 for s in list(self._latencies)]
        return TierStats(
            name=self.name,
            hits=self.get("hits"),
            misses=self.get("misses"),
            errors=self.get("errors"),
            corrupt=self.get("corrupt"),
            stale=self.get("stale"),
            writes=self.get("writes"),
            latency_p50_us=percentile(samples, 50),
            latency_p90_us=percentile(samples, 90),
            latency_p99_us=percentile(samples, 99),
        )


def _retire_shard(counters: weakref.ref[Counters], counts: dict[str, int]) -> None:
    """A thread ended: fold its counts into its counters' retired counts, if they live."""
    owner = counters()
    if owner is not None:
        owner._retire(counts)
