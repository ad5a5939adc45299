"""TieredByteStore under LangChain's real CacheBackedEmbeddings: memory, disk, Redis."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.connection
from langchain_classic.embeddings import CacheBackedEmbeddings
from langchain_core.embeddings import DeterministicFakeEmbedding

from llmcache import DiskTier, MemoryTier, MemoryVersions, RedisTier, depends_on
from llmcache.byte_store import TieredByteStore
from llmcache.errors import ConfigurationError
from tests.conftest import FakeClock

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import command_calls, purge_prefix  # noqa: E402


class CountingEmbeddings(DeterministicFakeEmbedding):
    """LangChain's deterministic fake, counting the texts it is asked to embed."""

    embedded: int = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return super().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.embedded += 1
        return super().embed_query(text)


def _cached(store: TieredByteStore, model: CountingEmbeddings) -> CacheBackedEmbeddings:
    return CacheBackedEmbeddings.from_bytes_store(
        model, store, namespace="fake-8", query_embedding_cache=True, key_encoder="sha256"
    )


def _one_redis_url(request: pytest.FixtureRequest) -> str:
    external = os.environ.get("LLMCACHE_TEST_REDIS_URL")
    if external:
        return external
    return str(request.getfixturevalue("valkey_server").url())


@pytest.fixture(params=["memory", "disk", "redis"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., TieredByteStore]]:
    made: list[TieredByteStore] = []
    memory, versions = MemoryTier(), MemoryVersions()
    url = prefix = ""
    if request.param == "redis":
        url, prefix = _one_redis_url(request), request.getfixturevalue("key_prefix")

    def make(**kwargs: Any) -> TieredByteStore:
        if request.param == "memory":
            store = TieredByteStore(l1=memory, l2=None, versions=versions, **kwargs)
        elif request.param == "disk":
            store = TieredByteStore(l2=DiskTier(tmp_path / "disk"), **kwargs)
        else:
            store = TieredByteStore(l1=None, l2=RedisTier(url, prefix=prefix), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    if url:
        purge_prefix(url, prefix)


def test_cache_backed_embeddings_compute_each_text_once(
    make_store: Callable[..., TieredByteStore],
) -> None:
    model = CountingEmbeddings(size=8)
    embedder = _cached(make_store(), model)
    first = embedder.embed_documents(["a", "b", "c"])
    assert model.embedded == 3
    again = embedder.embed_documents(["c", "a", "d"])
    assert model.embedded == 4  # only "d" was new
    assert again[0] == first[2] and again[1] == first[0]
    assert embedder.embed_query("q") == embedder.embed_query("q")
    assert model.embedded == 5
    # A fresh store object on the same tiers (a restart, another process) has them all.
    later = _cached(make_store(), model)
    assert later.embed_documents(["a", "b", "c", "d"])[:3] == first
    assert model.embedded == 5


async def test_the_async_path_shares_the_same_entries(
    make_store: Callable[..., TieredByteStore],
) -> None:
    model = CountingEmbeddings(size=8)
    embedder = _cached(make_store(), model)
    first = await embedder.aembed_documents(["a", "b"])
    assert embedder.embed_documents(["a", "b"]) == first
    assert await embedder.aembed_documents(["b", "a"]) == [first[1], first[0]]
    assert model.embedded == 2


def test_the_store_interface(make_store: Callable[..., TieredByteStore]) -> None:
    store = make_store()
    store.mset([("k1", b"\x00\xffone"), ("k2", b""), ("other", b"3")])
    assert store.mget(["k1", "missing", "k2"]) == [b"\x00\xffone", None, b""]
    assert sorted(store.yield_keys()) == ["k1", "k2", "other"]
    assert sorted(store.yield_keys(prefix="k")) == ["k1", "k2"]
    store.mdelete(["k1", "missing"])
    assert store.mget(["k1", "k2"]) == [None, b""]
    with pytest.raises(ConfigurationError):
        store.mset([("k", "not bytes")])  # type: ignore[list-item]


def test_namespaces_isolate_and_clear_only_their_own(
    make_store: Callable[..., TieredByteStore],
) -> None:
    a, b = make_store(namespace="model-a"), make_store(namespace="model-b")
    a.mset([("k", b"a")])
    b.mset([("k", b"b")])
    assert a.mget(["k"]) == [b"a"] and b.mget(["k"]) == [b"b"]
    a.clear()
    assert a.mget(["k"]) == [None] and b.mget(["k"]) == [b"b"]
    assert list(b.yield_keys()) == ["k"]


def test_values_written_under_depends_on_are_invalidated(
    make_store: Callable[..., TieredByteStore],
) -> None:
    store = make_store()
    with depends_on("model:v1"):
        store.mset([("k", b"old")])
    store.mset([("free", b"x")])
    store.invalidate("model:v1")
    assert store.mget(["k", "free"]) == [None, b"x"]


def test_ttl_from_an_injected_clock(tmp_path: Path, clock: FakeClock) -> None:
    store = TieredByteStore(l1=MemoryTier(clock=clock), l2=tmp_path / "d", ttl=60, clock=clock)
    store.mset([("k", b"v")])
    clock.advance(59)
    assert store.mget(["k"]) == [b"v"]
    clock.advance(2)
    assert store.mget(["k"]) == [None]
    assert list(store.yield_keys()) == []
    store.close()


def test_with_a_secret_planted_or_moved_values_are_misses(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "d")
    store = TieredByteStore(l1=None, l2=disk, secret="s" * 32)
    store.mset([("a", b"real a"), ("b", b"real b")])
    key_a, key_b = store._key("a"), store._key("b")
    # A signed value copied under another key fails its MAC (the MAC covers the key).
    raw_a = disk.get(key_a)
    assert raw_a is not None
    disk.set(key_b, raw_a)
    # An unsigned value, well formed, planted by someone without the secret.
    unsigned = TieredByteStore(l1=None, l2=disk, secret=None)
    unsigned.mset([("a", b"forged")])
    assert store.mget(["a", "b"]) == [None, None]
    assert store.stats().tiers["disk"].corrupt == 2


def test_a_value_stored_for_another_key_is_a_miss(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "d")
    store = TieredByteStore(l1=None, l2=disk)
    store.mset([("a", b"for a")])
    raw = disk.get(store._key("a"))
    assert raw is not None
    # Unsigned, the envelope's key check is ours: the payload names key "a", not "b".
    from llmcache.serialization import Record, decode, encode

    record = decode(raw, key=store._key("a"))
    disk.set(store._key("b"), bytes(encode(Record(record.payload), key=store._key("b"))))
    assert store.mget(["b"]) == [None]


# -- round trips on a real Redis ---------------------------------------------------------


class _RoundTrips:
    """Counts what redis-py sends to a server: one packed send is one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sync = self.aio = 0
        sync_send = redis.connection.AbstractConnection.send_packed_command
        async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.sync += 1
            sync_send(conn, command, check_health)

        async def acounted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.aio += 1
            await async_send(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
        monkeypatch.setattr(
            redis.asyncio.connection.AbstractConnection, "send_packed_command", acounted
        )


@pytest.mark.redis
def test_a_batch_is_one_redis_round_trip(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = redis.Redis.from_url(redis_url)
    store = TieredByteStore(l1=None, l2=RedisTier(redis_url, prefix=key_prefix))
    texts = [f"text {i}" for i in range(200)]
    try:
        store.mget(["warm up the connection"])
        gets, mgets = command_calls(admin, "get"), command_calls(admin, "mget")
        trips = _RoundTrips(monkeypatch)
        assert store.mget(texts) == [None] * 200
        assert trips.sync == 1
        store.mset([(text, text.encode()) for text in texts])
        assert trips.sync == 2
        assert store.mget(texts) == [text.encode() for text in texts]
        assert trips.sync == 3
        store.mdelete(texts[:100])
        assert trips.sync == 103  # deletes are not batched: one UNLINK each
        monkeypatch.undo()
        # The server saw two MGETs and no single GET.
        assert command_calls(admin, "mget") == mgets + 2
        assert command_calls(admin, "get") == gets
    finally:
        store.close()
        admin.close()
        purge_prefix(redis_url, key_prefix)


@pytest.mark.redis
async def test_an_async_batch_is_one_redis_round_trip(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TieredByteStore(l1=None, l2=RedisTier(redis_url, prefix=key_prefix))
    texts = [f"text {i}" for i in range(200)]
    try:
        await store.amget(["warm up the connection"])
        trips = _RoundTrips(monkeypatch)
        await store.amset([(text, text.encode()) for text in texts])
        assert trips.aio == 1
        assert await store.amget(texts) == [text.encode() for text in texts]
        assert trips.aio == 2
    finally:
        await store.aclose()
        purge_prefix(redis_url, key_prefix)


@pytest.mark.redis
def test_cache_backed_embeddings_on_redis_make_one_round_trip_per_batch(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = CountingEmbeddings(size=8)
    store = TieredByteStore(l1=None, l2=RedisTier(redis_url, prefix=key_prefix), ttl=3600)
    embedder = _cached(store, model)
    texts = [f"document {i}" for i in range(100)]
    admin = redis.Redis.from_url(redis_url)
    try:
        store.mget(["warm up"])
        trips = _RoundTrips(monkeypatch)
        embedder.embed_documents(texts)  # one MGET, then one pipelined write
        assert trips.sync == 2 and model.embedded == 100
        embedder.embed_documents(texts)  # one MGET, all hits
        assert trips.sync == 3 and model.embedded == 100
        monkeypatch.undo()
        keys = list(admin.scan_iter(match=key_prefix + "embeddings:*"))
        assert len(keys) == 100
        assert all(0 < admin.pttl(key) <= 3_600_000 for key in keys)
    finally:
        store.close()
        admin.close()
        purge_prefix(redis_url, key_prefix)


def test_a_dead_redis_is_a_miss_never_an_error(tmp_path: Path) -> None:
    """Fail open, batch and all: the embeddings are computed, the call succeeds."""
    from tests.redis_servers import free_port

    tier = RedisTier(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    store = TieredByteStore(l1=MemoryTier(), l2=tier)
    model = CountingEmbeddings(size=8)
    embedder = _cached(store, model)
    first = embedder.embed_documents(["a", "b", "c"])
    assert model.embedded == 3
    # Memory above still serves what this process stored; Redis counted its failures.
    assert embedder.embed_documents(["a", "b", "c"]) == first and model.embedded == 3
    assert store.stats().tiers["redis"].errors >= 1
    redis_only = TieredByteStore(l1=None, l2=tier)
    assert redis_only.mget(["a", "b"]) == [None, None]
    redis_only.mset([("a", b"x"), ("b", b"y")])
    store.close()


@pytest.mark.redis
def test_a_large_batch_goes_in_chunks_of_max_batch(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TieredByteStore(l1=None, l2=RedisTier(redis_url, prefix=key_prefix, max_batch=100))
    texts = [f"text {i}" for i in range(250)]
    try:
        store.mget(["warm up"])
        trips = _RoundTrips(monkeypatch)
        store.mset([(text, text.encode()) for text in texts])
        assert trips.sync == 3
        assert store.mget(texts) == [text.encode() for text in texts]
        assert trips.sync == 6
    finally:
        store.close()
        purge_prefix(redis_url, key_prefix)
