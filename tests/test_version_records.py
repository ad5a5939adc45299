"""Issue 11.3: losing a version record costs misses; it never revives an invalidated answer.

Every test writes answers that depend on documents, invalidates the documents,
then loses the version records the way production loses them (Redis evicting
them under ``maxmemory`` with ``allkeys-lru``, a ``DEL``, a restart without
persistence, the disk store's files deleted or replaced by an older copy),
and counts how many of the invalidated answers are served: by the same
process and by a fresh one. With version counters, a lost counter counted
from 0 again and matched the old entries; every count here must be 0.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import DiskTier, RedisTier, TieredCache, depends_on
from llmcache.invalidation.redis import RedisVersions

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import RedisServer, command_calls  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N = 20
PROMPTS = [f"summarize document {index}" for index in range(N)]


def _answer(text: str) -> list[ChatGeneration]:
    return [ChatGeneration(message=AIMessage(text))]


def _wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _write_and_invalidate(cache: TieredCache) -> None:
    """N answers, each depending on its document; then every document invalidated."""
    for index, prompt in enumerate(PROMPTS):
        with depends_on(f"doc:{index}"):
            cache.update(prompt, "llm", _answer(f"summary {index}"))
    assert _served(cache) == N
    cache.invalidate(*(f"doc:{index}" for index in range(N)))


def _served(cache: TieredCache) -> int:
    return sum(cache.lookup(prompt, "llm") is not None for prompt in PROMPTS)


# A fresh interpreter: nothing shared with the test but the disk and the server.
FRESH = textwrap.dedent(
    """
    import json, sys
    from llmcache import DiskTier, RedisTier, TieredCache
    from llmcache.invalidation.redis import RedisVersions

    directory, url, prefix = sys.argv[1:4]
    prompts = json.loads(sys.argv[4])
    versions = RedisVersions(RedisTier(url, prefix=prefix)) if url else None
    cache = TieredCache(l2=DiskTier(directory), versions=versions)
    print(sum(cache.lookup(prompt, "llm") is not None for prompt in prompts))
    cache.close()
    """
)


def _served_by_a_fresh_process(directory: Path, url: str = "", prefix: str = "") -> int:
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(directory), url, prefix, json.dumps(PROMPTS)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


# -- Redis ----------------------------------------------------------------------------


def _version_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    # Any layout: "<prefix>v:..." (counters) and "<prefix>~v:..." (random versions).
    return [key for key in client.scan_iter(match=f"{prefix}*v:*", count=1000)]


def _evict_until_gone(server: RedisServer, prefix: str) -> int:
    """Fill the server under allkeys-lru until it has evicted every version key."""
    admin = server.client()
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.config_set("maxmemory", used + 2_000_000)
    filler = b"x" * 1000
    try:
        for batch in range(300):
            pipe = admin.pipeline(transaction=False)
            for index in range(1000):
                pipe.set(f"filler:{batch}:{index}", filler)
            pipe.execute()
            if not _version_keys(admin, prefix):
                return int(admin.info("stats")["evicted_keys"])
        raise AssertionError("the version keys were never evicted")
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


@pytest.fixture
def disk_and_redis(
    private_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[TieredCache, RedisVersions]]:
    """Answers in memory and on disk, their versions in Redis (which alone loses records)."""
    versions = RedisVersions(RedisTier(private_server.url(), prefix="llmcache:"))
    cache = TieredCache(l2=DiskTier(tmp_path), versions=versions)
    yield cache, versions
    cache.close()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("lose", ["evicted", "deleted"])
def test_lost_redis_versions_revive_nothing(
    lose: str,
    private_server: RedisServer,
    disk_and_redis: tuple[TieredCache, RedisVersions],
    tmp_path: Path,
) -> None:
    cache, versions = disk_and_redis
    _write_and_invalidate(cache)
    admin = private_server.client()
    assert len(_version_keys(admin, "llmcache:")) == N
    if lose == "evicted":
        evicted = _evict_until_gone(private_server, "llmcache:")
        print(f"allkeys-lru evicted {evicted} keys, the {N} version keys among them")
    else:
        admin.delete(*_version_keys(admin, "llmcache:"))
    assert _version_keys(admin, "llmcache:") == []

    # This process drops its copy of the versions as it does on any reconnect.
    _wait_until(lambda: versions.connected)
    admin.client_kill_filter(_type="pubsub")
    _wait_until(lambda: not versions.connected, timeout=1.0)
    _wait_until(lambda: versions.connected)
    same = _served(cache)
    fresh = _served_by_a_fresh_process(tmp_path, private_server.url(), "llmcache:")
    print(f"{lose}: invalidated answers served again: {same}/{N} here, {fresh}/{N} fresh")
    assert (same, fresh) == (0, 0)
    admin.close()


# Holds answers in its own memory tier across the restart, looks only when told.
HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration
    from llmcache import RedisTier, TieredCache, depends_on

    url, prompts = sys.argv[1], json.loads(sys.argv[2])
    cache = TieredCache(l2=RedisTier(url))
    for index, prompt in enumerate(prompts):
        with depends_on(f"doc:{index}"):
            cache.update(prompt, "llm", [ChatGeneration(message=AIMessage(f"s{index}"))])
    versions = cache._layers.versions
    while not versions.connected:
        time.sleep(0.01)
    print("ready", flush=True)
    sys.stdin.readline()                    # invalidated, and the server restarted empty
    at_once = sum(cache.lookup(p, "llm") is not None for p in prompts)
    deadline = time.monotonic() + 10
    while not versions.connected and time.monotonic() < deadline:
        time.sleep(0.01)                    # and once the listener is back
    later = sum(cache.lookup(p, "llm") is not None for p in prompts)
    print(json.dumps([at_once, later]), flush=True)
    cache.close()
    """
)


@pytest.mark.redis
@pytest.mark.slow
def test_a_restart_without_persistence_revives_nothing_in_another_process(
    private_server: RedisServer,
) -> None:
    url = private_server.url()
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, json.dumps(PROMPTS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    ) as holder:  # fmt: skip
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready"
        cache = TieredCache(l1=None, l2=RedisTier(url))
        cache.invalidate(*(f"doc:{index}" for index in range(N)))
        cache.close()
        private_server.restart()  # empty: --save "" --appendonly no
        holder.stdin.write("go\n")
        holder.stdin.flush()
        at_once, later = json.loads(holder.stdout.readline())
        assert holder.wait(timeout=30) == 0
    print(f"after the restart the other process served {at_once}/{N}, then {later}/{N}")
    assert (at_once, later) == (0, 0)


@pytest.mark.redis
def test_a_read_makes_one_version_for_every_racer(private_server: RedisServer) -> None:
    """A version one store made is the one another reads: made once, by a script, in Redis."""
    first = RedisVersions(RedisTier(private_server.url()))
    second = RedisVersions(RedisTier(private_server.url()))
    one = first.current("ns", ["doc:1", "doc:2"])
    assert second.current("ns", ["doc:1", "doc:2"]) == one
    assert min(one.values()) >= 1 << 62
    first.close()
    second.close()


# -- disk -----------------------------------------------------------------------------


def _checkpoint(directory: Path) -> None:
    with sqlite3.connect(directory / "versions.sqlite") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.slow
@pytest.mark.parametrize("lose", ["deleted", "restored from an older copy"])
def test_lost_disk_versions_revive_nothing(lose: str, tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path))
    for index, prompt in enumerate(PROMPTS):
        with depends_on(f"doc:{index}"):
            cache.update(prompt, "llm", _answer(f"summary {index}"))
    backup = tmp_path / "backup.sqlite"
    _checkpoint(tmp_path)
    with sqlite3.connect(tmp_path / "versions.sqlite") as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # taken before the invalidation
    cache.invalidate(*(f"doc:{index}" for index in range(N)))
    # No lookup yet: one would find the entries stale and delete them.
    if lose == "deleted":
        for path in tmp_path.glob("versions.*"):
            path.unlink()
    else:
        _checkpoint(tmp_path)
        os.replace(backup, tmp_path / "versions.sqlite")
    # The fresh process first: a lookup here that finds an entry stale deletes it.
    fresh = _served_by_a_fresh_process(tmp_path)
    time.sleep(0.1)  # past DiskVersions.check_interval: this process looks at the files again
    same = _served(cache)
    print(f"versions file {lose}: invalidated answers served again: {same}/{N}, {fresh}/{N} fresh")
    assert (same, fresh) == (0, 0)
    cache.close()


def test_a_replaced_versions_file_is_noticed_and_its_bumps_seen(tmp_path: Path) -> None:
    """A process that keeps the old file open would never see a bump made in the new one."""
    holder = TieredCache(l2=DiskTier(tmp_path))
    with depends_on("doc:1"):
        holder.update("q", "llm", _answer("a"))
    for path in tmp_path.glob("versions.*"):
        path.unlink()
    other = TieredCache(l1=None, l2=DiskTier(tmp_path))
    other.invalidate("doc:1")  # in the new files
    time.sleep(0.1)  # past check_interval
    assert holder.lookup("q", "llm") is None
    versions = holder._layers.versions
    assert getattr(versions, "reopened", 0) == 1
    holder.close()
    other.close()


# -- failover: a bump waits for a replica ------------------------------------------------


@pytest.fixture
def replica(private_server: RedisServer) -> Iterator[RedisServer]:
    """A replica of ``private_server`` (valkey 9.1), online before the test starts."""
    args = ("--replicaof", "127.0.0.1", str(private_server.port))
    with RedisServer(private_server.binary, args=args, name="valkey-replica") as server:
        admin = private_server.client()
        _wait_until(lambda: len(admin.execute_command("ROLE")[2]) == 1, timeout=10)
        _wait_until(lambda: server.client().info("replication")["master_link_status"] == "up")
        admin.close()
        yield server


@pytest.mark.redis
@pytest.mark.slow
def test_a_bump_waits_for_a_replica_when_there_is_one(
    private_server: RedisServer, replica: RedisServer
) -> None:
    admin = private_server.client()
    tier = RedisTier(private_server.url(), socket_timeout=2.0)  # the wait fits in a read
    versions = RedisVersions(tier, replica_wait=0.5)
    versions.current("ns", ["doc:1"])
    waits = command_calls(admin, "wait")
    versions.bump("ns", ["doc:1"])
    assert command_calls(admin, "wait") == waits + 1
    assert versions.unacknowledged == 0
    # Acknowledged: the replica, promoted now, would hold the new version.
    key = versions._key("ns", "doc:1")
    assert int(replica.client().get(key)) == versions.current("ns", ["doc:1"])["doc:1"]

    replica.pause()  # a replica that lags: the bump waits at most replica_wait, then says so
    try:
        start = time.monotonic()
        versions.bump("ns", ["doc:1"])
        waited = time.monotonic() - start
    finally:
        replica.resume()
    print(f"bump with a stopped replica returned after {waited * 1000:.0f} ms (replica_wait 500)")
    assert waited >= 0.45 and versions.unacknowledged == 1
    # With the default socket timeout (0.25 s) the wait is cut to half of it, never a failure.
    short_tier = RedisTier(private_server.url())
    short = RedisVersions(short_tier, replica_wait=0.5)
    replica.pause()
    try:
        short.bump("ns", ["doc:2"])
    finally:
        replica.resume()
    assert short.unacknowledged == 1
    short.close()
    short_tier.close()
    versions.close()
    tier.close()
    admin.close()


@pytest.mark.redis
def test_a_bump_never_waits_without_replicas(private_server: RedisServer) -> None:
    admin = private_server.client()
    tier = RedisTier(private_server.url())
    versions = RedisVersions(tier)
    versions.bump("ns", ["doc:1"])
    versions.bump("ns", ["doc:2"])
    assert command_calls(admin, "wait") == 0
    assert command_calls(admin, "role") == 1  # counted once per replica_check (10 s)
    versions.close()
    tier.close()
    admin.close()
