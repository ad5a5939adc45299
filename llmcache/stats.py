"""Counters and latency percentiles, per tier and for the whole cache.

Counters are guarded by one lock each: ``+=`` on an attribute is not atomic
under threads, and LangChain's ``batch`` runs lookups in a thread pool.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

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
    """A snapshot of a whole cache: what ``TieredCache.stats()`` returns."""

    lookups: int
    hits: int
    misses: int
    errors: int
    tokens_saved: int
    tiers: dict[str, TierStats] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "hit_rate": self.hit_rate,
            "tokens_saved": self.tokens_saved,
            **self.extra,
            "tiers": {
                name: {**tier.__dict__, "hit_rate": tier.hit_rate}
                for name, tier in self.tiers.items()
            },
        }


class Counters:
    """Thread-safe named counters plus a reservoir of recent latencies."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._logged: set[str] = set()

    def add(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[counter] = self._counts.get(counter, 0) + amount

    def add_each(self, *amounts: tuple[str, int]) -> None:
        """Several counters under one lock (a hit counts itself and its tokens)."""
        with self._lock:
            counts = self._counts
            for counter, amount in amounts:
                counts[counter] = counts.get(counter, 0) + amount

    def observe(self, seconds: float) -> None:
        self._latencies.append(seconds)  # deque.append is atomic

    def get(self, counter: str) -> int:
        return self._counts.get(counter, 0)

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
        with self._lock:
            self._counts.clear()
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
