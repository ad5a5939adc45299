"""Healing a disk store whose SQLite database is damaged.

A truncated, overwritten or bit-rotted ``cache.db`` makes every statement
fail with SQLITE_CORRUPT or SQLITE_NOTADB, and would leave the cache a
permanent miss that stores nothing until someone deletes the file by hand. A
cache may always forget, so the cure is cheap: move the damaged database
aside (kept for a post-mortem, the newest few only) and let diskcache create
a fresh one. Only the database is moved: the version store beside it
(``versions.sqlite``) is untouched, so invalidations made before stay made.

Several processes share a directory, so the move happens under an exclusive
file lock, and only after a fresh connection confirms the damage in the very
file this process opened: a process that arrives second finds a healthy (new)
file, or another inode, and simply reopens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["DATABASE", "database_identity", "is_corruption", "move_aside_if_damaged"]

DATABASE = "cache.db"
_LOCK = "cache.db.repair-lock"
_KEEP = 2  # damaged copies kept for inspection; older ones are deleted
# Python 3.11+ names the SQLite error; before that only the message tells.
_CORRUPT_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_CORRUPT_MESSAGES = ("file is not a database", "database disk image is malformed")


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "this file is damaged" errors, never for a busy or full database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_CORRUPT_CODES)
    message = str(exc)
    return any(text in message for text in _CORRUPT_MESSAGES)


def database_identity(directory: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory's database, or None if there is none."""
    try:
        stat = os.stat(directory / DATABASE)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def move_aside_if_damaged(directory: Path, opened: tuple[int, int] | None) -> Path | None:
    """Move the database aside if it is still the file ``opened`` and is really damaged.

    ``opened`` is the identity of the file this process used (None: it never
    got as far as opening one). Returns where the damaged file went, or None
    when there was nothing to move (another process healed it first, or a
    fresh check finds it sound).
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / _LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = database_identity(directory)
            if current is None or (opened is not None and current != opened):
                return None  # gone, or already replaced by another process
            if _sound(directory / DATABASE):
                return None
            stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            target = directory / f"{DATABASE}.damaged-{stamp}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(directory / f"{DATABASE}{suffix}", f"{target}{suffix}")
            _prune(directory)
            return target
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sound(database: Path) -> bool:
    """A fresh read-only connection agrees the file is a sound SQLite database."""
    try:
        uri = database.resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as connection:
            row = connection.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.Error as exc:
        return not is_corruption(exc)  # busy, locked...: not proof of damage
    return row is not None and row[0] == "ok"


def _prune(directory: Path) -> None:
    damaged = sorted(directory.glob(f"{DATABASE}.damaged-*[0-9]"), key=os.path.getmtime)
    for old in damaged[:-_KEEP]:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{old}{suffix}")
