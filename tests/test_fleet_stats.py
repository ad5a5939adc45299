"""Fleet-wide figures: real processes report to the L2, and ``llmcache stats`` shows the sum."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import DiskTier, RedisTier, TieredCache
from llmcache.cli import main
from llmcache.fleet import STATS_FILE, fleet_key, read_disk, read_redis

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Each child: N misses (each followed by its update) and 2N hits of its own keys,
# answers of 20 input + 10 output tokens of gpt-4o-mini: 9e-6 USD each.
CHILD = """
import os, sys, time
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration
from llmcache import DiskTier, RedisTier, TieredCache

where, prefix, name, n, ending = sys.argv[1:]
l2 = RedisTier(where, prefix=prefix) if where.startswith("redis") else DiskTier(where)
interval = 0.2 if ending == "killed" else 3600
cache = TieredCache(l2=l2, namespace="menus", stats_interval=interval)
answer = [ChatGeneration(message=AIMessage("41 g carbs", usage_metadata={"input_tokens": 20,
    "output_tokens": 10, "total_tokens": 30}, response_metadata={"model_name": "gpt-4o-mini"}))]
for i in range(int(n)):
    key = f"{name}-{i}"
    assert cache.lookup(key, "l") is None
    cache.update(key, "l", answer)
    assert cache.lookup(key, "l") is not None
    assert cache.lookup(key, "l") is not None
if ending == "killed":  # no exit handlers, no close: only the timer's reports count
    time.sleep(1.0)
    os._exit(0)
print("done")
"""


def _children(where: str, prefix: str, endings: list[str], n: int = 5) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", CHILD, where, prefix, f"p{i}", str(n), ending],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for i, ending in enumerate(endings)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


def _usage_row(text: str, namespace: str) -> list[str]:
    """The cells of ``namespace``'s row in the usage table of ``llmcache stats``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("usage reported"))
    for line in lines[start + 2 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == namespace:
            return cells
    raise AssertionError(f"no usage row for {namespace!r} in:\n{text}")


@pytest.mark.slow
def test_processes_on_one_directory_add_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Three at once exit normally (they report at exit); one is killed after its
    # work and reports only through the timer (every 0.2 s).
    _children(str(tmp_path), "", ["exit", "exit", "exit", "killed"])
    usage = read_disk(tmp_path)["menus"]
    assert usage["processes"] == 4
    assert (usage["misses"], usage["hits"]) == (4 * 5, 4 * 10)
    assert usage["tokens_saved"] == 4 * 10 * 30
    assert usage["cost_saved_nanos"] == 4 * 10 * 9_000
    assert usage.get("errors", 0) == 0  # a counter that never moved is not written
    assert main(["stats", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"menus\s+20\s+", out)  # the entries table: 4 x 5 keys
    row = _usage_row(out, "menus")
    # namespace, processes, lookups, hit rate, calls made, calls saved, tokens, cost, errors
    assert row[1:9] == ["4", "60", "66.7%", "20", "40", "1,200", "$0.00036", "0"]


@pytest.mark.redis
@pytest.mark.slow
def test_processes_on_one_redis_add_up(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        _children(redis_url, key_prefix, ["exit", "exit", "killed"])
        client = redis.Redis.from_url(redis_url)
        usage = read_redis(client, key_prefix)["menus"]
        client.close()
        assert usage["processes"] == 3
        assert (usage["misses"], usage["hits"]) == (3 * 5, 3 * 10)
        assert usage["tokens_saved"] == 3 * 10 * 30
        assert usage["cost_saved_nanos"] == 3 * 10 * 9_000
        assert main(["stats", "--url", redis_url, "--prefix", key_prefix]) == 0
        out = capsys.readouterr().out
        row = _usage_row(out, "menus")
        assert row[1:9] == ["3", "45", "66.7%", "15", "30", "900", "$0.00027", "0"]
    finally:
        purge_prefix(redis_url, key_prefix)


def _answer() -> list[ChatGeneration]:
    usage = {"input_tokens": 20, "output_tokens": 10, "total_tokens": 30}
    return [ChatGeneration(message=AIMessage("x", usage_metadata=usage))]


def test_nothing_is_reported_on_the_hit_path_only_when_due(tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), stats_interval=3600)
    cache.update("p", "l", _answer())
    for _ in range(100):
        assert cache.lookup("p", "l") is not None
    assert not (tmp_path / STATS_FILE).exists()  # not due yet: nothing written
    assert cache.flush_stats()
    assert read_disk(tmp_path)["default"]["hits"] == 100
    assert cache.flush_stats()  # nothing new: nothing added
    cache.lookup("p", "l")
    cache.close()  # reports what is left
    assert read_disk(tmp_path)["default"]["hits"] == 101


def test_a_failed_report_keeps_its_counts_for_the_next(tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), stats_interval=3600)
    cache.update("p", "l", _answer())
    cache.lookup("p", "l")
    (tmp_path / STATS_FILE).mkdir()  # a directory where the database must go: it fails
    assert not cache.flush_stats()
    cache.lookup("p", "l")
    (tmp_path / STATS_FILE).rmdir()
    assert cache.flush_stats()
    assert read_disk(tmp_path)["default"]["hits"] == 2  # nothing lost, nothing twice
    cache.close()


def test_reset_stats_does_not_take_back_what_was_reported(tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), stats_interval=3600)
    cache.update("p", "l", _answer())
    cache.lookup("p", "l")
    cache.reset_stats()  # the fleet keeps the hit counted before the reset
    cache.lookup("p", "l")
    cache.close()
    assert read_disk(tmp_path)["default"]["hits"] == 2


@pytest.mark.redis
def test_the_fleet_key_is_out_of_every_namespaces_reach(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        cache = TieredCache(l2=RedisTier(redis_url, prefix=key_prefix), stats_interval=3600)
        cache.update("p", "l", _answer())
        cache.lookup("p", "l")
        assert cache.flush_stats()
        client = redis.Redis.from_url(redis_url)
        assert client.exists(fleet_key(key_prefix, "default"))
        assert fleet_key(key_prefix, "default") == f"{key_prefix}~stats:default"
        cache.clear()  # the namespace's entries go; its usage stays
        assert client.exists(fleet_key(key_prefix, "default"))
        assert main(["namespaces", "--url", redis_url, "--prefix", key_prefix]) == 0
        assert "~stats" not in capsys.readouterr().out
        client.close()
        cache.close()
    finally:
        purge_prefix(redis_url, key_prefix)


def test_stats_interval_is_checked(tmp_path: Path) -> None:
    from llmcache.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="stats_interval"):
        TieredCache(l2=DiskTier(tmp_path), stats_interval=0)
    TieredCache(l2=DiskTier(tmp_path), stats_interval=None).lookup("p", "l")
    assert not (tmp_path / STATS_FILE).exists()


def test_a_report_never_creates_the_cache_directory(tmp_path: Path) -> None:
    directory = tmp_path / "never-written"
    cache = TieredCache(l2=DiskTier(directory), stats_interval=3600)
    assert cache.lookup("p", "l") is None  # a miss to report, and nothing written
    assert cache.flush_stats()
    cache.close()
    assert not directory.exists()


def test_a_stats_file_being_created_reads_as_no_reports(tmp_path: Path) -> None:
    # The first report creates the file, then its table: a reader in between
    # (``llmcache stats --dir``) sees a file with no table.
    sqlite3.connect(tmp_path / STATS_FILE).close()
    assert read_disk(tmp_path) == {}
    cache = TieredCache(l2=DiskTier(tmp_path), stats_interval=3600)
    cache.update("p", "l", _answer())
    cache.lookup("p", "l")
    cache.close()
    assert read_disk(tmp_path)["default"]["hits"] == 1


def test_a_forked_child_reports_its_own_counts_only(tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), stats_interval=3600)
    cache.update("p", "l", _answer())
    for _ in range(3):
        assert cache.lookup("p", "l") is not None  # the parent's 3 hits, not reported yet
    pid = os.fork()
    if pid == 0:  # the child: 2 hits from the memory tier it inherited, then close
        code = 1
        try:
            hits = [cache.lookup("p", "l") is not None for _ in range(2)]
            cache.close()
            code = 0 if all(hits) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert read_disk(tmp_path)["default"]["hits"] == 2  # the child's own, once
    cache.close()
    usage = read_disk(tmp_path)["default"]
    assert usage["hits"] == 5 and usage["processes"] == 2


# A cache collected by a collection that runs while this very thread holds the
# reporter's lock (a collection runs at whatever allocation triggers it). Its
# finalizer used to take that lock and report on the spot: the thread waited
# for itself, forever. Run in a child, so that a deadlock fails the test
# instead of hanging the suite.
COLLECTED_UNDER_LOCK = """
import gc, sys, time
from pathlib import Path
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration
from llmcache import DiskTier, TieredCache
from llmcache import fleet
from llmcache.fleet import read_disk

where = Path(sys.argv[1])
cache = TieredCache(l1=None, l2=DiskTier(where), stats_interval=0.05)
cache.update("p", "l", [ChatGeneration(message=AIMessage("x"))])
assert cache.lookup("p", "l") is not None
recorder = cache._engine.fleet
cache.cycle = cache  # only a collection frees it
del cache
# The locks a report takes, held by the thread the collection runs in (the
# reporter thread holds both while it reports this recorder).
with fleet._FLUSHER._lock, recorder._lock:
    gc.collect()
del recorder
deadline = time.monotonic() + 20  # the flusher thread sends the last report
while read_disk(where).get("default", {}).get("hits") != 1:
    assert time.monotonic() < deadline, read_disk(where)
    time.sleep(0.02)
print("reported")
"""


def test_a_cache_collected_while_its_reporter_locks_are_held_reports_later(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", COLLECTED_UNDER_LOCK, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reported"
