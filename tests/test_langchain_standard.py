"""LangChain's own cache test suites, run against TieredCache in each configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from llmcache import DiskTier, TieredCache

CONFIGURATIONS = ["l1-only", "l2-only", "l1+l2"]


def _make(configuration: str, directory: Path) -> TieredCache:
    if configuration == "l1-only":
        return TieredCache(l2=None)
    if configuration == "l2-only":
        return TieredCache(l1=None, l2=DiskTier(directory))
    return TieredCache(l2=DiskTier(directory))


class TestTieredCacheSync(SyncCacheTestSuite):
    @pytest.fixture(params=CONFIGURATIONS)
    def cache(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TieredCache]:
        cache = _make(request.param, tmp_path / "l2")
        yield cache
        cache.close()


class TestTieredCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture(params=CONFIGURATIONS)
    async def cache(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[TieredCache]:
        cache = _make(request.param, tmp_path / "l2")
        yield cache
        await cache.aclose()
