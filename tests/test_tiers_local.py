"""The tier contract on the in-process tiers, plus what is particular to each."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmcache import ConfigurationError, DiskTier, MemoryTier
from tests.conftest import FakeClock
from tests.tier_contract import TierContract


class TestMemoryTier(TierContract):
    @pytest.fixture
    def tier(self, clock: FakeClock) -> MemoryTier:
        return MemoryTier(clock=clock)

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Callable[[float], None]:
        return clock.advance


class TestDiskTier(TierContract):
    @pytest.fixture
    def tier(self, tmp_path: Path) -> Iterator[DiskTier]:
        tier = DiskTier(tmp_path / "disk")
        yield tier
        tier.close()

    @pytest.fixture
    def advance(self) -> Callable[[float], None]:
        return time.sleep  # diskcache reads the wall clock; a real expiry needs real time


# -- MemoryTier ---------------------------------------------------------------


def test_memory_lru_evicts_least_recently_used() -> None:
    tier = MemoryTier(max_entries=3)
    for key in ("a", "b", "c"):
        tier.set(f"n:{key}", key.encode())
    assert tier.get("n:a") == b"a"  # a is now the most recent
    tier.set("n:d", b"d")
    assert tier.get("n:b") is None
    assert [tier.get(f"n:{k}") for k in "acd"] == [b"a", b"c", b"d"]


def test_memory_rewrite_at_capacity_evicts_nothing() -> None:
    tier = MemoryTier(max_entries=3)
    for key in ("a", "b", "c"):
        tier.set(f"n:{key}", key.encode())
    tier.set("n:a", b"A")  # LangChain's InMemoryCache would drop b here
    assert [tier.get(f"n:{k}") for k in "abc"] == [b"A", b"b", b"c"]
    assert len(tier) == 3


def test_memory_bounded_by_bytes() -> None:
    tier = MemoryTier(max_entries=1000, max_bytes=4000)
    for index in range(20):
        tier.set(f"n:{index}", b"x" * 500)
    assert tier.size_bytes <= 4000
    assert tier.get("n:19") == b"x" * 500
    assert tier.get("n:0") is None
    tier.set("n:huge", b"x" * 5000)  # larger than the whole tier: not stored
    assert tier.get("n:huge") is None
    assert tier.get("n:19") == b"x" * 500


def test_memory_default_ttl_and_override(clock: FakeClock) -> None:
    tier = MemoryTier(ttl=10, clock=clock)
    tier.set("n:default", b"1")
    tier.set("n:long", b"2", ttl=100)
    clock.advance(11)
    assert tier.get("n:default") is None
    assert tier.get("n:long") == b"2"


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_bytes": 0}, {"ttl": 0}, {"ttl": -1}])
def test_memory_rejects_bad_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryTier(**kwargs)  # type: ignore[arg-type]


# -- DiskTier -----------------------------------------------------------------


def test_disk_constructor_and_reads_touch_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "lazy"
    tier = DiskTier(directory)
    assert tier.get("n:k") is None
    tier.delete("n:k")
    tier.clear("n")
    assert not directory.exists()
    tier.set("n:k", b"v")
    assert directory.is_dir()
    tier.close()


def test_disk_stores_raw_bytes_never_pickles(tmp_path: Path) -> None:
    import sqlite3

    tier = DiskTier(tmp_path / "d")
    tier.set("n:k", b"payload")
    tier.close()
    with sqlite3.connect(tmp_path / "d" / "cache.db") as db:
        mode, value = db.execute("SELECT mode, value FROM Cache WHERE key = 'n:k'").fetchone()
    assert mode == 1  # diskcache MODE_RAW
    assert bytes(value) == b"payload"


def test_disk_refuses_to_unpickle_a_foreign_row(tmp_path: Path) -> None:
    import diskcache

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("unpickled!",))

    foreign = diskcache.Cache(str(tmp_path / "d"))
    foreign.set("n:k", Boom())  # diskcache pickles it, as it does for any object
    foreign.close()
    tier = DiskTier(tmp_path / "d")
    assert tier.get("n:k") == b""  # handed back as foreign bytes, never loaded
    tier.close()


def test_disk_rejects_non_bytes(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "d")
    with pytest.raises(TypeError):
        tier.set("n:k", "text")  # type: ignore[arg-type]
    tier.close()


def test_disk_size_limit_culls(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "d", size_limit=1 << 20)
    for index in range(40):
        tier.set(f"n:{index}", bytes(100_000))
    tier.set("n:last", b"kept")
    volume = tier._open(create=False).volume()  # type: ignore[union-attr]
    assert volume < 3 << 20
    assert tier.get("n:last") == b"kept"
    tier.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_disk_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    # SQLite forbids using a connection across fork(): the child must open its own.
    tier = DiskTier(tmp_path / "d")
    tier.set("n:parent", b"p")
    assert tier.get("n:parent") == b"p"
    parent_connection = tier._readers.reader[1]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            read = tier.get("n:parent")
            own = tier._readers.reader[1] is not parent_connection
            tier.set("n:child", b"c")
            code = 0 if read == b"p" and own else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tier.get("n:child") == b"c"
    assert tier._readers.reader[1] is parent_connection
    tier.close()


def test_disk_reads_after_close_reopen(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "d")
    tier.set("n:k", b"v")
    assert tier.get("n:k") == b"v"
    tier.close()
    assert tier.get("n:k") == b"v"  # a new connection, not the closed one
    tier.close()


def test_disk_reads_fall_back_to_diskcache_when_the_direct_read_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmcache.backends.disk as disk_module

    tier = DiskTier(tmp_path / "d")
    tier.set("n:small", b"v")
    tier.set("n:large", bytes(range(256)) * 1024)  # kept in a file, not inline
    # A statement SQLite refuses, as a busy database or another schema would.
    monkeypatch.setattr(disk_module, "_SELECT_INLINE", "SELECT no_such_column FROM Cache")
    assert tier.get("n:small") == b"v"
    assert tier.get("n:large") == bytes(range(256)) * 1024
    assert tier.get("n:absent") is None
    tier.close()
