"""The contract every tier implements, as a mixin run against each backend.

A backend's test module subclasses ``TierContract`` and provides two fixtures:
``tier`` (a fresh tier whose keys are isolated from any other test) and
``advance`` (a callable that moves the tier's notion of time forward: an
injected clock where the tier has one, a real sleep against a real server).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable

import pytest

from llmcache.tiers import Tier


def _ns() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


class TierContract:
    """Behaviour shared by MemoryTier, DiskTier and RedisTier."""

    def test_is_a_tier(self, tier: Tier) -> None:
        assert isinstance(tier, Tier)
        assert isinstance(tier.name, str)
        assert tier.name

    def test_missing_key_is_none(self, tier: Tier) -> None:
        assert tier.get(f"{_ns()}:absent") is None

    def test_round_trip_is_byte_exact(self, tier: Tier) -> None:
        ns = _ns()
        values = [b"", b"\x00\xff\x00binary", "ünïcode ✓".encode(), bytes(range(256)) * 4096]
        for index, value in enumerate(values):
            tier.set(f"{ns}:{index}", value)
        for index, value in enumerate(values):
            assert tier.get(f"{ns}:{index}") == value

    def test_overwrite_replaces(self, tier: Tier) -> None:
        key = f"{_ns()}:k"
        tier.set(key, b"first")
        tier.set(key, b"second")
        assert tier.get(key) == b"second"

    def test_delete(self, tier: Tier) -> None:
        key = f"{_ns()}:k"
        tier.set(key, b"v")
        tier.delete(key)
        assert tier.get(key) is None
        tier.delete(key)  # deleting what is not there is not an error

    def test_ttl_expires(self, tier: Tier, advance: Callable[[float], None]) -> None:
        ns = _ns()
        tier.set(f"{ns}:short", b"v", ttl=1.0)
        tier.set(f"{ns}:forever", b"w")
        assert tier.get(f"{ns}:short") == b"v"
        advance(1.5)
        assert tier.get(f"{ns}:short") is None
        assert tier.get(f"{ns}:forever") == b"w"

    def test_clear_removes_only_its_namespace(self, tier: Tier) -> None:
        mine, other = _ns(), _ns()
        for index in range(25):
            tier.set(f"{mine}:{index}", b"a")
            tier.set(f"{other}:{index}", b"b")
        tier.clear(mine)
        assert all(tier.get(f"{mine}:{index}") is None for index in range(25))
        assert all(tier.get(f"{other}:{index}") == b"b" for index in range(25))

    def test_clear_of_a_prefix_namespace_spares_the_longer_one(self, tier: Tier) -> None:
        base = _ns()
        tier.set(f"{base}:k", b"a")
        tier.set(f"{base}x:k", b"b")
        tier.clear(base)
        assert tier.get(f"{base}:k") is None
        assert tier.get(f"{base}x:k") == b"b"

    async def test_async_twins(self, tier: Tier, advance: Callable[[float], None]) -> None:
        ns = _ns()
        assert await tier.aget(f"{ns}:k") is None
        await tier.aset(f"{ns}:k", b"v")
        await tier.aset(f"{ns}:t", b"t", ttl=1.0)
        assert await tier.aget(f"{ns}:k") == b"v"
        assert tier.get(f"{ns}:k") == b"v"  # the two paths see one store
        await tier.adelete(f"{ns}:k")
        assert await tier.aget(f"{ns}:k") is None
        await tier.aset(f"{ns}:k2", b"v2")
        await tier.aclear(ns)
        assert await tier.aget(f"{ns}:k2") is None

    async def test_concurrent_async_lookups(self, tier: Tier) -> None:
        ns = _ns()
        for index in range(50):
            await tier.aset(f"{ns}:{index}", str(index).encode())
        results = await asyncio.gather(*(tier.aget(f"{ns}:{index % 60}") for index in range(200)))
        for index, result in enumerate(results):
            expected = str(index % 60).encode() if index % 60 < 50 else None
            assert result == expected

    def test_threads_share_it_safely(self, tier: Tier) -> None:
        ns = _ns()
        errors: list[BaseException] = []

        def worker(worker_id: int) -> None:
            try:
                for index in range(100):
                    key = f"{ns}:{worker_id}:{index % 10}"
                    tier.set(key, f"{worker_id}-{index}".encode())
                    value = tier.get(key)
                    assert value is not None
                    assert value.startswith(f"{worker_id}-".encode())
            except BaseException as exc:  # collected and re-raised on the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


@pytest.fixture
def namespace() -> str:
    return _ns()
