"""A broken disk store heals itself: a damaged cache.db is moved aside and recreated, once,
by whichever process finds it first; a full disk reports its real cause."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.outputs import Generation

from llmcache import DiskTier, TieredCache
from llmcache.backends.disk_repair import is_corruption, move_aside_if_damaged
from llmcache.errors import TierError

LLM = "fake-llm---[('temperature', 0)]"
WORKER = Path(__file__).with_name("_disk_worker.py")
ROOT = Path(__file__).resolve().parent.parent


def filled(directory: Path, count: int = 20) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(directory))
    for i in range(count):
        cache.update(f"prompt {i}", LLM, [Generation(text=f"answer {i}")])
    assert cache.lookup("prompt 0", LLM) is not None
    cache.close()


def truncate(database: Path) -> None:
    with open(database, "r+b") as file:
        file.truncate(os.path.getsize(database) // 3)


def overwrite(database: Path) -> None:
    database.write_bytes(os.urandom(os.path.getsize(database)))


def damaged_copies(directory: Path) -> list[Path]:
    return sorted(directory.glob("cache.db.damaged-*[0-9]"))


def serves_again(cache: TieredCache, tries: int = 3) -> int:
    """Store and read back until it works; returns the number of tries it took."""
    for attempt in range(1, tries + 1):
        cache.update("fresh prompt", LLM, [Generation(text="fresh answer")])
        hit = cache.lookup("fresh prompt", LLM)
        if hit is not None:
            assert hit[0].text == "fresh answer"
            return attempt
    raise AssertionError(f"the cache still stores nothing after {tries} tries")


@pytest.mark.parametrize("damage", [truncate, overwrite])
def test_a_damaged_database_found_at_open_is_moved_aside_and_recreated(
    damage: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    filled(tmp_path)
    damage(tmp_path / "cache.db")  # type: ignore[operator]
    tier = DiskTier(tmp_path)
    cache = TieredCache(l1=None, l2=tier)
    with caplog.at_level(logging.WARNING, logger="llmcache"):
        assert cache.lookup("prompt 1", LLM) is None  # what was there is gone: a miss
        assert serves_again(cache) == 1
    assert tier.repairs == 1
    assert len(damaged_copies(tmp_path)) == 1
    repairs = [r for r in caplog.records if "was damaged" in r.getMessage()]
    assert len(repairs) == 1
    cache.close()


def test_a_database_damaged_under_an_open_cache_heals_within_a_call(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    cache = TieredCache(l1=None, l2=tier)
    for i in range(50):
        cache.update(f"prompt {i}", LLM, [Generation(text=f"answer {i}" * 50)])
    overwrite(tmp_path / "cache.db")
    for path in tmp_path.glob("cache.db-*"):
        path.write_bytes(os.urandom(max(os.path.getsize(path), 1)))
    # Every call still returns (a miss at worst), and the cache stores again at once.
    for i in range(5):
        cache.lookup(f"prompt {i}", LLM)
    assert serves_again(cache) == 1
    assert tier.repairs == 1
    cache.close()


def test_the_second_cache_on_a_healed_directory_reopens_instead_of_moving_it(
    tmp_path: Path,
) -> None:
    filled(tmp_path)
    first, second = DiskTier(tmp_path), DiskTier(tmp_path)
    a = TieredCache(l1=None, l2=first)
    b = TieredCache(l1=None, l2=second)
    assert b.lookup("prompt 2", LLM) is not None  # b has the database open
    overwrite(tmp_path / "cache.db")
    assert serves_again(a) == 1
    # b still holds the old file: its next calls find the new one, and never move it.
    serves_again(b)
    b.update("from b", LLM, [Generation(text="b wrote it")])
    hit = a.lookup("from b", LLM)
    assert hit is not None
    assert hit[0].text == "b wrote it"
    assert first.repairs + second.repairs == 1
    assert len(damaged_copies(tmp_path)) == 1
    a.close()
    b.close()


@pytest.mark.slow
def test_processes_on_a_damaged_directory_heal_it_once_and_serve(tmp_path: Path) -> None:
    filled(tmp_path)
    overwrite(tmp_path / "cache.db")
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), str(seed), "200"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        for seed in range(4)
    ]
    hits = 0
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        found, wrong, _errors = map(int, out.split())
        assert wrong == 0
        hits += found
    # 4 x 200 lookups over 60 prompts: the store serves again, so most of them hit.
    assert hits > 4 * 200 - 4 * 60 - 40
    assert len(damaged_copies(tmp_path)) == 1


def test_a_sound_database_is_never_moved(tmp_path: Path) -> None:
    filled(tmp_path)
    assert move_aside_if_damaged(tmp_path, None) is None
    assert (tmp_path / "cache.db").is_file()
    assert damaged_copies(tmp_path) == []


def test_busy_and_full_are_not_corruption() -> None:
    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    assert not is_corruption(sqlite3.OperationalError("database or disk is full"))
    assert not is_corruption(ValueError("file is not a database"))
    assert is_corruption(sqlite3.DatabaseError("file is not a database"))
    assert is_corruption(sqlite3.DatabaseError("database disk image is malformed"))


def test_only_the_newest_damaged_copies_are_kept(tmp_path: Path) -> None:
    filled(tmp_path)
    for age, name in enumerate(["20200101T000000-1", "20200101T000000-2", "20200101T000000-3"]):
        old = tmp_path / f"cache.db.damaged-{name}"
        old.write_bytes(b"old")
        os.utime(old, (age, age))
    overwrite(tmp_path / "cache.db")
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    serves_again(cache)
    kept = damaged_copies(tmp_path)
    assert len(kept) == 2
    assert tmp_path / "cache.db.damaged-20200101T000000-3" in kept  # the newest old one
    assert not (tmp_path / "cache.db.damaged-20200101T000000-1").exists()
    cache.close()


def test_a_full_disk_reports_its_cause_not_a_rollback_error(tmp_path: Path) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    cache.invalidate("doc:0")
    versions = cache._layers.versions
    db, _ = versions._open()  # type: ignore[attr-defined]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on the next new page
    names = [f"doc:{i}-" + "x" * 400 for i in range(2000)]  # 800 KB of new rows
    with pytest.raises(TierError) as raised:
        cache.invalidate(*names)
    message = str(raised.value)
    assert "full" in message
    assert "no transaction is active" not in message
    cache.close()
