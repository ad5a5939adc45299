"""OpenTelemetry metrics: the SDK's in-memory reader sees what real lookups and updates counted."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from llmcache import DiskTier, MemoryTier, TieredCache, depends_on
from llmcache.errors import ConfigurationError

ANSWER = [
    ChatGeneration(
        message=AIMessage(
            "41 g carbs",
            usage_metadata={"input_tokens": 20, "output_tokens": 10, "total_tokens": 30},
            response_metadata={"model_name": "gpt-4o-mini"},
        )
    )
]

Points = dict[tuple[str, tuple[tuple[str, str], ...]], Any]


def _collect(reader: InMemoryMetricReader) -> Points:
    """Every data point by (metric name, sorted attributes): a counter's value, a histogram."""
    points: Points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = tuple(sorted((point.attributes or {}).items()))
                    points[(metric.name, attributes)] = getattr(point, "value", point)
    return points


def _attrs(tier: str | None, namespace: str = "menus") -> tuple[tuple[str, str], ...]:
    found = {"namespace": namespace} if tier is None else {"namespace": namespace, "tier": tier}
    return tuple(sorted(found.items()))


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


def test_the_reader_sees_hits_misses_stale_and_latencies(
    tmp_path: Path, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    cache = TieredCache(l1=MemoryTier(), l2=DiskTier(tmp_path), namespace="menus")
    cache.instrument(provider)
    assert cache.lookup("p", "l") is None
    cache.update("p", "l", ANSWER)
    for _ in range(3):
        assert cache.lookup("p", "l") is not None
    with depends_on("doc:1"):
        assert cache.lookup("q", "l") is None
        cache.update("q", "l", ANSWER)
    cache.invalidate("doc:1")
    with depends_on("doc:1"):
        assert cache.lookup("q", "l") is None  # stale in memory, then on disk
    points = _collect(reader)
    assert points[("llmcache.hits", _attrs("memory"))] == 3
    assert points[("llmcache.hits", _attrs("total"))] == 3
    assert points[("llmcache.misses", _attrs("total"))] == 3
    assert points[("llmcache.misses", _attrs("disk"))] == 3
    assert points[("llmcache.stale", _attrs("memory"))] == 1
    assert points[("llmcache.stale", _attrs("disk"))] == 1
    assert points[("llmcache.stale", _attrs("total"))] == 2
    assert points[("llmcache.errors", _attrs("total"))] == 0
    assert points[("llmcache.coalesced", _attrs(None))] == 0
    assert points[("llmcache.tokens_saved", _attrs(None))] == 90
    # 3 hits of 20 input and 10 output tokens of gpt-4o-mini ($0.15 and $0.60 per million).
    assert points[("llmcache.cost_saved", _attrs(None))] == pytest.approx(3 * 9e-6)
    disk = points[("llmcache.lookup.duration", _attrs("disk"))]
    assert disk.count == 3  # every disk read timed (the memory tier times one hit in eight)
    assert 0 < disk.sum < 1  # seconds
    # Later collections carry on counting (cumulative), with no sample counted twice.
    assert cache.lookup("p", "l") is not None
    points = _collect(reader)
    assert points[("llmcache.hits", _attrs("memory"))] == 4
    assert points[("llmcache.lookup.duration", _attrs("disk"))].count == 3


async def test_async_lookups_and_errors_per_source(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    cache = TieredCache(l2=None, namespace="menus")
    cache.instrument(provider)
    assert await cache.alookup("p", "l") is None
    await cache.aupdate("p", "l", ANSWER)
    assert await cache.alookup("p", "l") is not None
    odd = [ChatGeneration(message=AIMessage("x"), generation_info={"handle": object()})]
    await cache.aupdate("r", "l", odd)  # not storable: the cache's own error
    points = _collect(reader)
    assert points[("llmcache.hits", _attrs("memory"))] == 1
    assert points[("llmcache.misses", _attrs("memory"))] == 1
    assert points[("llmcache.errors", _attrs("cache"))] == 1
    assert points[("llmcache.errors", _attrs("total"))] == 1


async def test_coalesced_calls_are_counted(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    cache = TieredCache(l2=None, namespace="menus")
    cache.instrument(provider)

    async def call() -> Any:
        found = await cache.alookup("p", "l")
        if found is None:
            await asyncio.sleep(0.05)  # the model
            await cache.aupdate("p", "l", ANSWER)
            return ANSWER
        return found

    await asyncio.gather(*(asyncio.ensure_future(call()) for _ in range(5)))
    points = _collect(reader)
    assert points[("llmcache.coalesced", _attrs(None))] == 4
    assert points[("llmcache.hits", _attrs("coalesced"))] == 4
    assert points[("llmcache.hits", _attrs("total"))] == 4
    assert points[("llmcache.misses", _attrs("total"))] == 1


def test_caches_report_per_namespace_and_once_per_provider(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    menus = TieredCache(l2=None, namespace="menus")
    docs = TieredCache(l2=None, namespace="docs")
    for cache in (menus, docs, menus):  # instrumenting twice does not count twice
        cache.instrument(provider)
    menus.update("p", "l", ANSWER)
    menus.lookup("p", "l")
    docs.lookup("p", "l")
    points = _collect(reader)
    assert points[("llmcache.hits", _attrs("total", "menus"))] == 1
    assert points[("llmcache.hits", _attrs("total", "docs"))] == 0
    assert points[("llmcache.misses", _attrs("total", "docs"))] == 1
    del docs  # a cache that is gone is no longer reported
    import gc

    gc.collect()
    points = _collect(reader)
    assert ("llmcache.hits", _attrs("total", "menus")) in points
    assert not any(attributes == _attrs("total", "docs") for _, attributes in points)


def test_a_cache_nobody_instruments_pays_nothing_on_a_hit() -> None:
    cache = TieredCache(l2=None)
    cache.update("p", "l", ANSWER)
    cache.lookup("p", "l")
    # No flag, no wrapper: the counters' observe is the class's own method.
    assert all("observe" not in vars(c) for c in cache._layers._counters)
    cache.instrument(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    assert "observe" in vars(cache._layers._counters[0])


def test_without_the_extra_instrument_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"llmcache\[otel\]"):
        TieredCache(l2=None).instrument()
