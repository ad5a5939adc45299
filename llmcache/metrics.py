"""OpenTelemetry metrics for a running service: ``cache.instrument()`` (the ``otel`` extra).

Why OpenTelemetry: it is the one vendor-neutral metrics API. A library
depends on ``opentelemetry-api`` only; the application picks the SDK and the
exporter - Prometheus (``opentelemetry-exporter-prometheus`` serves
``/metrics``), OTLP to a collector, Grafana, Datadog, Honeycomb - without
this library knowing which. With no SDK configured every instrument is a no-op.

Instruments (attributes ``tier`` and ``namespace``; ``tier="total"`` is the
whole cache, as in the total row of ``print(cache.stats())``, so do not sum it
with the tiers):

* counters ``llmcache.hits``, ``llmcache.misses``, ``llmcache.errors``,
  ``llmcache.stale``, ``llmcache.corrupt`` per tier (errors also per source
  outside the tiers: ``cache``, the version store, coalescing),
  ``llmcache.coalesced``, ``llmcache.tokens_saved``, ``llmcache.cost_saved``
  (USD; only models with a known price) per namespace;
* histogram ``llmcache.lookup.duration`` (seconds) per tier.

What it costs: the counters are *observable*: the SDK reads the cache's own
counters when it collects (each export interval), so a lookup does exactly
the same work whether or not metrics are on. Latencies are copied into a
bounded buffer per tier (one deque append per timed read; the memory tier
times one hit in eight) and recorded into the histogram at collection, at
most ``BUFFER`` per tier per collection: the histogram is a sample of the
lookup latencies, the counters are exact. A cache nobody instruments pays
nothing at all (see ``Counters.tap``).
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmcache.errors import ConfigurationError

if TYPE_CHECKING:
    from llmcache.layers import Layers
    from llmcache.stats import CacheStats

__all__ = ["BUFFER", "instrument"]

#: Latency samples kept per tier between two collections.
BUFFER = 4096
TOTAL = "total"


class _Instrumented(Protocol):
    namespace: str

    def stats(self) -> CacheStats: ...


@dataclass
class _Source:
    """One instrumented cache (held weakly) and its latency buffers."""

    cache: weakref.ref[_Instrumented]
    namespace: str
    sinks: dict[str, deque[float]] = field(default_factory=dict)

    def sink(self, tier: str) -> deque[float]:
        return self.sinks.setdefault(tier, deque(maxlen=BUFFER))


# Each counter: what to observe from one cache's stats, as (value, tier or None) pairs.
_Rows = Callable[["CacheStats"], Iterable[tuple[float, str | None]]]


def _hits(stats: CacheStats) -> Iterator[tuple[float, str | None]]:
    yield from ((tier.hits, name) for name, tier in stats.tiers.items())
    if "coalesced" in stats.extra:
        yield stats.coalesced, "coalesced"
    yield stats.hits, TOTAL


def _misses(stats: CacheStats) -> Iterator[tuple[float, str | None]]:
    yield from ((tier.misses, name) for name, tier in stats.tiers.items())
    yield stats.misses, TOTAL


def _errors(stats: CacheStats) -> Iterator[tuple[float, str | None]]:
    yield from ((tier.errors, name) for name, tier in stats.tiers.items())
    yield from ((errors, source) for source, errors in stats.errors_by_source.items())
    yield stats.errors, TOTAL


def _per_tier(counter: str) -> _Rows:
    def rows(stats: CacheStats) -> Iterator[tuple[float, str | None]]:
        values = [(getattr(tier, counter), name) for name, tier in stats.tiers.items()]
        yield from values
        yield sum(value for value, _ in values), TOTAL

    return rows


_COUNTERS: dict[str, tuple[str, str, _Rows]] = {
    "llmcache.hits": ("{lookup}", "lookups answered, by the tier that answered", _hits),
    "llmcache.misses": ("{lookup}", "lookups a tier (total: every tier) could not answer", _misses),
    "llmcache.errors": ("{error}", "failures, each served as a miss", _errors),
    "llmcache.stale": ("{entry}", "entries found invalidated", _per_tier("stale")),
    "llmcache.corrupt": (
        "{entry}",
        "stored values that failed to decode or verify",
        _per_tier("corrupt"),
    ),
    "llmcache.coalesced": (
        "{lookup}",
        "lookups answered by an identical call in flight",
        lambda stats: [(stats.coalesced, None)],
    ),
    "llmcache.tokens_saved": (
        "{token}",
        "tokens the hits did not spend upstream",
        lambda stats: [(stats.tokens_saved, None)],
    ),
    "llmcache.cost_saved": (
        "USD",
        "what the hits did not spend upstream, where priced",
        lambda stats: [(stats.cost_saved_usd, None)],
    ),
}


class _Exporter:
    """The instruments on one meter, observing every cache instrumented on it."""

    def __init__(self, meter: Any) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self._lock = threading.Lock()
        self._sources: list[_Source] = []
        self.duration = meter.create_histogram(
            "llmcache.lookup.duration", unit="s", description="time to read one tier"
        )
        for name, (unit, description, rows) in _COUNTERS.items():
            meter.create_observable_counter(
                name, callbacks=[self._callback(rows)], unit=unit, description=description
            )

    def add(self, source: _Source) -> bool:
        with self._lock:
            if any(known.cache() is source.cache() for known in self._sources):
                return False
            self._sources.append(source)
            return True

    def _live(self) -> list[tuple[_Source, _Instrumented]]:
        with self._lock:
            pairs = [(source, source.cache()) for source in self._sources]
            self._sources = [source for source, cache in pairs if cache is not None]
        return [(source, cache) for source, cache in pairs if cache is not None]

    def _callback(self, rows: _Rows) -> Callable[[Any], Iterator[Any]]:
        def observe(options: Any) -> Iterator[Any]:
            for source, cache in self._live():
                if rows is _hits:
                    self._drain(source)  # once per collection: the SDK reads every counter
                stats = cache.stats()
                for value, tier in rows(stats):
                    attributes = {"namespace": source.namespace}
                    if tier is not None:
                        attributes["tier"] = tier
                    yield self._observation(value, attributes)

        return observe

    def _drain(self, source: _Source) -> None:
        # Recorded during collection: the SDK runs the observable callbacks
        # before it reads the histogram, so these samples are in this export
        # (were that order to change, they would be in the next one).
        for tier, sink in source.sinks.items():
            attributes = {"namespace": source.namespace, "tier": tier}
            for _ in range(len(sink)):
                self.duration.record(sink.popleft(), attributes)


_exporters: dict[int, tuple[Any, _Exporter]] = {}
_exporters_lock = threading.Lock()


def instrument(cache: _Instrumented, layers: Layers, meter_provider: Any = None) -> None:
    """Report ``cache`` through OpenTelemetry (see the module docstring); once per provider."""
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ConfigurationError(
            f"metrics need the otel extra: pip install 'llmcache[otel]' ({exc})"
        ) from exc
    with _exporters_lock:
        known = _exporters.get(id(meter_provider))
        if known is None or known[0] is not meter_provider:
            meter = (
                metrics.get_meter("llmcache")
                if meter_provider is None
                else meter_provider.get_meter("llmcache")
            )
            # The provider is kept with its exporter, so its id cannot be reused.
            known = _exporters[id(meter_provider)] = (meter_provider, _Exporter(meter))
    source = _Source(weakref.ref(cache), cache.namespace)
    if known[1].add(source):
        layers.tap(source.sink)
