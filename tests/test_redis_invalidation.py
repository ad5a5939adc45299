"""Invalidation over Redis: version counters in Redis, local copies kept current by pub/sub."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import RedisTier, TieredCache, depends_on
from llmcache.invalidation.redis import RedisVersions

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import RedisServer, purge_prefix  # noqa: E402

pytestmark = [pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent


def _answer(text: str) -> list[ChatGeneration]:
    return [ChatGeneration(message=AIMessage(text))]


def _wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def shared(redis_url: str, key_prefix: str) -> Iterator[tuple[str, str]]:
    yield redis_url, key_prefix
    purge_prefix(redis_url, key_prefix)


def _cache(url: str, prefix: str, **kwargs: Any) -> TieredCache:
    return TieredCache(l2=RedisTier(url, prefix=prefix), **kwargs)


def test_redis_tier_gets_redis_versions_by_default(shared: tuple[str, str]) -> None:
    cache = _cache(*shared)
    assert isinstance(cache._layers.versions, RedisVersions)
    cache.close()


def test_invalidate_reaches_l1_and_redis(shared: tuple[str, str]) -> None:
    cache = _cache(*shared)
    with depends_on("doc:1"):
        cache.update("uses doc 1", "llm", _answer("a"))
    with depends_on("doc:2"):
        cache.update("uses doc 2", "llm", _answer("b"))
    cache.invalidate("doc:1")
    assert cache.lookup("uses doc 1", "llm") is None
    assert cache.lookup("uses doc 2", "llm") is not None
    tiers = cache.stats().tiers
    assert tiers["memory"].stale == 1 and tiers["redis"].stale == 1
    cache.close()


async def test_async_invalidate_and_lookup(shared: tuple[str, str]) -> None:
    cache = _cache(*shared)
    with depends_on("doc:1"):
        await cache.aupdate("q", "llm", _answer("a"))
        assert await cache.alookup("q", "llm") is not None
    await cache.ainvalidate("doc:1")
    assert await cache.alookup("q", "llm") is None
    await cache.aclose()


def test_another_cache_sees_the_bump_through_pub_sub(shared: tuple[str, str]) -> None:
    writer, reader = _cache(*shared), _cache(*shared)
    with depends_on("doc:1"):
        writer.update("q", "llm", _answer("a"))
    assert reader.lookup("q", "llm") is not None  # now in the reader's own L1
    versions = reader._layers.versions
    assert isinstance(versions, RedisVersions)
    _wait_until(lambda: versions.connected)
    assert reader.lookup("q", "llm") is not None  # a read with the listener connected
    writer.invalidate("doc:1")
    start = time.perf_counter()
    _wait_until(lambda: reader.lookup("q", "llm") is None, timeout=1.0)
    print(f"other cache stopped serving after {(time.perf_counter() - start) * 1e6:.0f} µs")
    writer.close()
    reader.close()


READER = textwrap.dedent(
    """
    import sys, time
    from llmcache import RedisTier, TieredCache
    # No coalescing: the figure is how soon the stale entry stops being served,
    # not what the miss after it costs (with coalescing it takes a lease first).
    cache = TieredCache(l2=RedisTier(sys.argv[1], prefix=sys.argv[2]), coalesce=False)
    assert cache.lookup("q", "llm") is not None          # in this process's L1 now
    versions = cache._layers.versions
    while not versions.connected:
        time.sleep(0.005)
    assert cache.lookup("q", "llm") is not None
    print("ready", flush=True)
    sys.stdin.readline()                                 # the other process invalidated
    start = time.perf_counter()
    while cache.lookup("q", "llm") is not None:
        pass
    print(f"{time.perf_counter() - start:.6f}", flush=True)
    """
)


@pytest.mark.slow
def test_another_process_with_its_own_l1_stops_serving(shared: tuple[str, str]) -> None:
    url, prefix = shared
    cache = _cache(url, prefix)
    with depends_on("doc:1"):
        cache.update("q", "llm", _answer("a"))
    with subprocess.Popen(
        [sys.executable, "-c", READER, url, prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as reader:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "ready"
        cache.invalidate("doc:1")
        reader.stdin.write("go\n")
        reader.stdin.flush()
        seconds = float(reader.stdout.readline())
        assert reader.wait(timeout=30) == 0
    print(f"other process stopped serving after {seconds * 1e6:.0f} µs")
    assert seconds < 0.1  # pub/sub delivery on loopback; the measured figure is printed
    cache.close()


def test_a_killed_listener_falls_back_to_reading_redis(private_server: RedisServer) -> None:
    url, prefix = private_server.url(), "llmcache:"
    writer, reader = _cache(url, prefix), _cache(url, prefix)
    with depends_on("doc:1"):
        writer.update("q", "llm", _answer("a"))
    assert reader.lookup("q", "llm") is not None
    versions = reader._layers.versions
    assert isinstance(versions, RedisVersions)
    _wait_until(lambda: versions.connected)
    private_server.client().client_kill_filter(_type="pubsub")
    _wait_until(lambda: not versions.connected, timeout=1.0)
    writer.invalidate("doc:1")  # its message is lost to the reader: nobody is listening
    assert reader.lookup("q", "llm") is None  # read straight from Redis instead
    _wait_until(lambda: versions.connected, timeout=5.0)  # and the listener comes back
    writer.close()
    reader.close()


def test_a_silent_listener_is_found_within_its_bound(private_server: RedisServer) -> None:
    tier = RedisTier(private_server.url())
    versions = RedisVersions(tier, ping_interval=0.2)
    versions.current("ns", ["doc:1"])
    _wait_until(lambda: versions.connected)
    admin = private_server.client()
    admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # answers nothing, closes nothing
    start = time.monotonic()
    try:
        _wait_until(lambda: not versions.connected, timeout=2.0)
        elapsed = time.monotonic() - start
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    print(
        f"silent listener detected after {elapsed * 1000:.0f} ms (bound {2.5 * 0.2 * 1000:.0f} ms)"
    )
    assert elapsed <= 2.5 * 0.2 + 0.05  # the documented bound, plus scheduling slack
    versions.close()
    tier.close()


def test_gc_on_redis_removes_only_stale_entries(shared: tuple[str, str]) -> None:
    url, prefix = shared
    cache = TieredCache(l1=None, l2=RedisTier(url, prefix=prefix), namespace="menus")
    with depends_on("restaurant:17"):
        for index in range(30):
            cache.update(f"17/{index}", "llm", _answer("x"))
    cache.update("plain", "llm", _answer("z"))
    cache.invalidate("restaurant:17")
    assert cache.gc() == {
        "redis": {"expired": 0, "stale": 30, "corrupt": 0, "kept": 1},
        "versions:redis": {"removed": 1, "kept": 0},  # restaurant:17's: no entry needs it now
    }
    assert cache.tiers[0].keys("menus") == [cache._keys.key("menus", "plain", "llm")]  # type: ignore[attr-defined]
    cache.close()


@pytest.mark.cluster
async def test_invalidation_on_a_cluster(redis_cluster: Any, key_prefix: str) -> None:
    url = redis_cluster.url
    writer = TieredCache(l2=RedisTier(url, cluster=True, prefix=key_prefix))
    reader = TieredCache(l2=RedisTier(url, cluster=True, prefix=key_prefix))
    try:
        # Dependencies whose counters hash to different slots (and masters).
        with depends_on("doc:1", "doc:2", "doc:3", "kb:menus"):
            writer.update("q", "llm", _answer("a"))
        assert reader.lookup("q", "llm") is not None
        assert await reader.alookup("q", "llm") is not None
        versions = reader._layers.versions
        assert isinstance(versions, RedisVersions)
        _wait_until(lambda: versions.connected)
        await writer.ainvalidate("doc:3")
        _wait_until(lambda: reader.lookup("q", "llm") is None, timeout=2.0)
        assert await writer.alookup("q", "llm") is None
    finally:
        writer.close()
        reader.close()
        purge_prefix(url, key_prefix, cluster=True)
