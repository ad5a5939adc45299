"""Issue 11.4 and 11.5: no namespace reaches another's data; version records do not pile up.

Internal Redis keys live under ``<prefix>~`` and ``~`` is a character no
namespace may hold, so no namespace's SCAN pattern reaches them, whatever it
is called. The proof for each reserved or prefix-shaped name: a namespace of
that name writes, invalidates, collects and clears, and another namespace's
keys, fresh answers and invalidated answers are exactly as they were.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import ConfigurationError, DiskTier, RedisTier, TieredCache, depends_on
from llmcache.invalidation.redis import RedisVersions
from llmcache.keys import validate_namespace

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import RedisClusterServers, purge_prefix  # noqa: E402

# Reserved words of the key layout, and names that are prefixes of one another.
ATTACKERS = ["v", "lease", "chan", "versions", "coalesce", "default", "a", "ab", "a.b", "-", "_"]
VICTIM = {name: "default" for name in ATTACKERS} | {"default": "v", "a": "ab", "ab": "a"}


def _answer(text: str) -> list[ChatGeneration]:
    return [ChatGeneration(message=AIMessage(text))]


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_no_namespace_can_hold_the_internal_mark() -> None:
    for name in ("~", "~v", "a~", "~lease", "v:x", "a*"):
        with pytest.raises(ConfigurationError):
            validate_namespace(name)


def _victim_writes(cache: TieredCache) -> None:
    """Five fresh answers (doc:keep) and five invalidated ones (doc:gone)."""
    for index in range(5):
        with depends_on("doc:keep"):
            cache.update(f"keep {index}", "llm", _answer("k"))
        with depends_on("doc:gone"):
            cache.update(f"gone {index}", "llm", _answer("g"))
    cache.invalidate("doc:gone")


def _victim_served(make: Callable[[str], TieredCache], namespace: str) -> tuple[int, int]:
    """(fresh, invalidated) answers a new cache of ``namespace`` serves: read from the store."""
    cache = make(namespace)
    try:
        fresh = sum(cache.lookup(f"keep {i}", "llm") is not None for i in range(5))
        stale = sum(cache.lookup(f"gone {i}", "llm") is not None for i in range(5))
    finally:
        cache.close()
    return fresh, stale


def _attack(make: Callable[[str], TieredCache], namespace: str) -> None:
    """Everything one namespace can do to its own data, with the victim's dependency names."""
    cache = make(namespace)
    try:
        for name in ("doc:keep", "doc:gone"):
            with depends_on(name):
                cache.update(f"attacker {name}", "llm", _answer("a"))
        cache.invalidate("doc:keep", "doc:gone")
        cache.gc()
        cache.clear()
    finally:
        cache.close()


def _check_isolation(
    make: Callable[[str], TieredCache], keys: Callable[[], set[Any]], attacker: str
) -> None:
    victim = VICTIM[attacker]
    writer = make(victim)
    _victim_writes(writer)
    writer.close()
    before = keys()
    _attack(make, attacker)
    # Not one of the victim's keys (entries, versions) gone; the attacker left none of its own.
    assert keys() == before
    # Its fresh answers still served (their version records are intact: a lost
    # record would make them misses), its invalidated ones still not.
    assert _victim_served(make, victim) == (5, 0)


# -- Redis, one server and a cluster ---------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("attacker", ATTACKERS)
def test_a_namespace_never_touches_another_on_redis(
    attacker: str, redis_url: str, key_prefix: str
) -> None:
    def make(namespace: str) -> TieredCache:
        return TieredCache(l1=None, l2=RedisTier(redis_url, prefix=key_prefix), namespace=namespace)

    client = redis.Redis.from_url(redis_url)
    try:
        _check_isolation(
            make, lambda: set(client.scan_iter(match=f"{key_prefix}*", count=1000)), attacker
        )
    finally:
        client.close()
        purge_prefix(redis_url, key_prefix)


@pytest.mark.redis
@pytest.mark.cluster
@pytest.mark.parametrize("attacker", ["v", "lease", "default", "a"])
def test_a_namespace_never_touches_another_on_a_cluster(
    attacker: str, redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    url = redis_cluster.url

    def make(namespace: str) -> TieredCache:
        tier = RedisTier(url, cluster=True, prefix=key_prefix)
        return TieredCache(l1=None, l2=tier, namespace=namespace)

    client = redis.cluster.RedisCluster.from_url(url)

    def keys() -> set[Any]:
        return set(
            client.scan_iter(match=f"{key_prefix}*", count=1000, target_nodes=client.PRIMARIES)
        )

    try:
        _check_isolation(make, keys, attacker)
    finally:
        client.close()
        purge_prefix(url, key_prefix, cluster=True)


# -- disk -------------------------------------------------------------------------------


def _disk_rows(directory: Path) -> set[Any]:
    with sqlite3.connect(directory / "versions.sqlite") as db:
        versions = set(db.execute("SELECT namespace, name, version FROM versions"))
    with sqlite3.connect(directory / "cache.db") as db:
        entries = set(db.execute("SELECT key, tag FROM Cache"))
    return versions | entries


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_a_namespace_never_touches_another_on_disk(attacker: str, tmp_path: Path) -> None:
    def make(namespace: str) -> TieredCache:
        return TieredCache(l1=None, l2=DiskTier(tmp_path), namespace=namespace)

    _check_isolation(make, lambda: _disk_rows(tmp_path), attacker)


# -- 11.5: version records are reclaimed -----------------------------------------------


def _documents(cache: TieredCache, count: int) -> None:
    """A dependency per document, as a document-QA workload has."""
    for index in range(count):
        with depends_on(f"doc:{index}"):
            cache.update(f"question about document {index}", "llm", _answer("a"))


Store = tuple[Callable[[str], TieredCache], Callable[[str], int]]


@pytest.fixture
def redis_store(redis_url: str, key_prefix: str) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_url)

    def make(namespace: str) -> TieredCache:
        return TieredCache(l1=None, l2=RedisTier(redis_url, prefix=key_prefix), namespace=namespace)

    def records(namespace: str) -> int:
        # Any layout: "<prefix>v:<ns>:..." (counters) and "<prefix>~v:<ns>:..." (now).
        pattern = f"{key_prefix}*v:{namespace}:*"
        return sum(1 for _ in client.scan_iter(match=pattern, count=1000))

    yield make, records
    client.close()
    purge_prefix(redis_url, key_prefix)


@pytest.fixture
def disk_store(tmp_path: Path) -> Store:
    def make(namespace: str) -> TieredCache:
        return TieredCache(l1=None, l2=DiskTier(tmp_path), namespace=namespace)

    def records(namespace: str) -> int:
        with sqlite3.connect(tmp_path / "versions.sqlite") as db:
            (count,) = db.execute(
                "SELECT count(*) FROM versions WHERE namespace = ?", (namespace,)
            ).fetchone()
        return int(count)

    return make, records


@pytest.mark.redis
def test_gc_and_clear_reclaim_version_records_on_redis(redis_store: Store) -> None:
    _check_reclaim(redis_store, "redis")


def test_gc_and_clear_reclaim_version_records_on_disk(disk_store: Store) -> None:
    _check_reclaim(disk_store, "disk")


def _check_reclaim(store: Store, where: str) -> None:
    make, records = store
    docs, other = make("docs"), make("other")
    _documents(docs, 200)
    _documents(other, 10)
    created = records("docs")
    docs.invalidate(*(f"doc:{index}" for index in range(150)))
    report = docs.gc()
    after_gc = records("docs")
    docs.clear()
    after_clear = records("docs")
    print(
        f"{where}: version records of 'docs': {created} written, {after_gc} after gc"
        f" (150 of 200 documents invalidated), {after_clear} after clear;"
        f" 'other' kept {records('other')}"
    )
    assert created == 200
    assert after_gc == 50  # only the records the 50 live entries need
    assert report[docs._layers.versions.name] == {"removed": 150, "kept": 50}
    assert after_clear == 0
    assert records("other") == 10
    # What other still holds is intact: its answers are served.
    questions = [f"question about document {i}" for i in range(10)]
    assert sum(other.lookup(question, "llm") is not None for question in questions) == 10
    # And a cleared namespace starts again with nothing to revive.
    assert docs.lookup("question about document 199", "llm") is None
    docs.close()
    other.close()


def test_the_clear_and_gc_commands_reclaim_version_records(
    disk_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmcache.cli import main

    make, records = disk_store
    docs, other = make("docs"), make("other")
    _documents(docs, 30)
    _documents(other, 3)
    docs.invalidate(*(f"doc:{index}" for index in range(10)))
    docs.close()
    other.close()
    assert main(["gc", "--namespace", "docs", "--dir", str(tmp_path)]) == 0
    assert "removed 10 version records no entry needs; kept 20" in capsys.readouterr().out
    assert records("docs") == 20
    assert main(["clear", "--namespace", "docs", "--dir", str(tmp_path)]) == 0
    print(f"llmcache gc then clear: 'docs' records {records('docs')}, 'other' {records('other')}")
    assert (records("docs"), records("other")) == (0, 3)


@pytest.mark.redis
async def test_async_clear_drops_the_namespace_records_and_tells_other_processes(
    redis_store: Store,
) -> None:
    make, records = redis_store
    docs, reader = make("docs"), make("docs")
    _documents(docs, 5)
    versions = reader._layers.versions
    assert isinstance(versions, RedisVersions)
    versions.current("docs", ["doc:0"])  # starts the listener
    _wait_until(lambda: versions.connected)
    assert reader.lookup("question about document 0", "llm") is not None  # reader holds versions
    held = versions.peek("docs", ["doc:0"])
    assert held is not None  # a local copy, trusted while its listener is connected
    await docs.aclear()
    assert records("docs") == 0
    # The clear was published: the reader dropped its copies instead of trusting them.
    _wait_until(lambda: versions.peek("docs", ["doc:0"]) is None)
    assert versions.current("docs", ["doc:0"]) != held
    docs.close()
    reader.close()
