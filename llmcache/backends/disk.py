"""DiskTier: an L2 on diskcache (SQLite underneath), bytes only.

diskcache pickles any value that is not bytes/str/int/float, and unpickles
whatever its database says was pickled. We hand it bytes only, and the
``_BytesOnlyDisk`` below refuses to unpickle anything it finds: a foreign
pickled row comes back as empty bytes, which the envelope rejects as corrupt,
so the layering counts it, deletes it and refills the key cleanly.

Several processes may share one directory: SQLite's locking makes that safe,
and each process (each fork, too) opens its own connection lazily.

Reads take a shortcut: one indexed SELECT on diskcache's own table, through
the connection diskcache keeps for the calling thread. ``Cache.get`` costs
2-3 µs more per hit (a process-id system call and its general bookkeeping),
which is a sixth of a disk hit. Only the common row, a value stored inline,
is read that way; everything else (values kept in files, rows of another
writer, a busy database) takes ``Cache.get``. Writes, culling and expiry are
all diskcache's.

A damaged database (SQLite reports it corrupt, or not a database) is moved
aside and recreated (``disk_repair.py``): logged, counted in ``repairs``, and
the cache serves again from the next call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from llmcache.backends.disk_repair import database_identity, is_corruption, move_aside_if_damaged
from llmcache.errors import ConfigurationError
from llmcache.keys import namespace_prefix
from llmcache.tiers import InlineAsync

__all__ = ["DiskTier"]

logger = logging.getLogger("llmcache")
T = TypeVar("T")

_NOT_OURS = b""
# diskcache's own read, less its bookkeeping, on diskcache 5's Cache table
# (pyproject pins diskcache below 6). Were the table ever different, the
# statement would fail and every read would take Cache.get instead.
_SELECT_INLINE = (
    "SELECT mode, value FROM Cache"
    " WHERE key = ? AND raw = 1 AND (expire_time IS NULL OR expire_time > ?)"
)


class _Forks:
    """Counts forks: a child must open its own SQLite connections, never the parent's.

    Checked on every call instead of ``os.getpid()``, which is a system call.
    """

    count = 0

    @classmethod
    def after_in_child(cls) -> None:
        cls.count += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Forks.after_in_child)


class _BytesOnlyDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache ``Disk`` that stores str keys and bytes values, and never unpickles."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"DiskTier keys are str, got {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        # A non-raw key is a pickle someone else wrote; never load it.
        return key if raw else "\x00foreign-key"

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, bytes):
            raise TypeError(f"DiskTier values are bytes, got {type(value).__name__}")
        return super().store(bytes(value), read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_RAW:
            return (
                bytes(value)
                if isinstance(value, (bytes, memoryview, sqlite3.Binary))
                else _NOT_OURS
            )
        if mode == diskcache.core.MODE_BINARY:
            return super().fetch(mode, filename, value, read)
        return _NOT_OURS  # text or pickle: not something we wrote


class DiskTier(InlineAsync):
    """A persistent L2 in a directory.

    ``size_limit`` bounds the directory (diskcache culls the least recently
    stored entries past it; "least recently stored" rather than "used", so a
    read is not also a write that several processes would fight over).
    ``timeout`` bounds how long SQLite may wait on another process's lock.
    Nothing is opened or created until first use, the directory on first write.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size_limit: int = 1 << 30,
        timeout: float = 10.0,
        name: str = "disk",
    ) -> None:
        if size_limit < 1 << 20:
            raise ConfigurationError("size_limit must be at least 1 MiB")
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        self.name = name
        self.path = Path(path).expanduser()
        self.size_limit = size_limit
        self.timeout = timeout
        self._lock = threading.Lock()
        self._cache: diskcache.Cache | None = None
        self._forks = -1  # the fork count when _cache was opened
        # Per thread: (the Cache it belongs to, that thread's SQLite connection).
        self._readers = threading.local()
        self._identity: tuple[int, int] | None = None  # of the cache.db we opened
        #: How many times a damaged database was moved aside and recreated.
        self.repairs = 0

    def _open(self, *, create: bool) -> diskcache.Cache | None:
        cache = self._cache
        if cache is not None and self._forks == _Forks.count:
            return cache
        with self._lock:
            if self._cache is not None and self._forks == _Forks.count:
                return self._cache
            if not create and not self.path.is_dir():
                return None  # nothing written yet: don't create a directory to read it
            try:
                self._cache = self._new_cache()
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                self._repair_locked(exc)
                self._cache = self._new_cache()
            self._identity = database_identity(self.path)
            self._forks = _Forks.count
            return self._cache

    def _new_cache(self) -> diskcache.Cache:
        return diskcache.Cache(
            str(self.path),
            disk=_BytesOnlyDisk,
            size_limit=self.size_limit,
            timeout=self.timeout,
            tag_index=True,
            eviction_policy="least-recently-stored",
        )

    def _repair_locked(self, exc: sqlite3.DatabaseError) -> None:
        """Close, move the damaged database aside (if nobody has yet), forget the connections.

        Called with ``self._lock`` held. The next operation opens a new database.
        """
        if self._cache is not None:
            # Closing a damaged database may fail too; it is being dropped anyway.
            with contextlib.suppress(sqlite3.Error):
                self._cache.close()
        self._cache = None
        self._readers = threading.local()
        moved = move_aside_if_damaged(self.path, self._identity)
        self._identity = None
        if moved is not None:
            self.repairs += 1
            logger.warning(
                "llmcache %s: %s was damaged (%s); moved it to %s and started a new one",
                self.name,
                self.path / "cache.db",
                exc,
                moved.name,
            )

    def _heal(self, exc: sqlite3.DatabaseError) -> None:
        with self._lock:
            self._repair_locked(exc)

    def _guarded(self, operation: Callable[[], T], *, retry: bool) -> T:
        """Run ``operation``; on a damaged database, heal it, then retry once or re-raise."""
        try:
            return operation()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            self._heal(exc)
            if not retry:
                raise
        return operation()

    def get(self, key: str) -> bytes | None:
        try:
            return self._get(key)
        except sqlite3.DatabaseError as exc:
            # This read is a miss either way (the layers count it); the next one
            # finds a sound database.
            if is_corruption(exc):
                self._heal(exc)
            raise

    def _get(self, key: str) -> bytes | None:
        reader: tuple[diskcache.Cache, sqlite3.Connection] | None
        reader = getattr(self._readers, "reader", None)
        if reader is None or reader[0] is not self._cache or self._forks != _Forks.count:
            opened = self._open(create=False)
            if opened is None:
                return None
            reader = self._readers.reader = (opened, opened._con)
        cache, connection = reader
        try:
            row = connection.execute(_SELECT_INLINE, (key, time.time())).fetchone()
        except sqlite3.OperationalError:
            row = ()  # busy past SQLite's own wait (or not our schema): diskcache's read
        if row is None:
            return None
        if row and row[0] == diskcache.core.MODE_RAW and type(row[1]) is bytes:
            return row[1]
        value: bytes | None = cache.get(key, default=None, retry=True)
        return value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._guarded(lambda: self._set(key, value, ttl), retry=True)

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        cache = self._open(create=True)
        if self._identity != database_identity(self.path):
            # Another process moved a damaged database aside: write where
            # everyone reads. (A stat per write; writes follow model calls.)
            with self._lock:
                stale, self._cache = self._cache, None
            if stale is not None:
                stale.close()
            cache = self._open(create=True)
        assert cache is not None
        namespace = key.split(":", 1)[0]
        cache.set(key, value, expire=ttl, tag=namespace, retry=True)

    def delete(self, key: str) -> None:
        def delete() -> None:
            cache = self._open(create=False)
            if cache is not None:
                cache.delete(key, retry=True)

        self._guarded(delete, retry=True)

    def clear(self, namespace: str) -> None:
        """Remove this namespace's entries (by tag), and nothing else."""

        def clear() -> None:
            cache = self._open(create=False)
            if cache is not None:
                # Every entry is tagged with its namespace when written; the tag
                # index makes this a range delete, not a scan of the directory.
                cache.evict(namespace, retry=True)

        self._guarded(clear, retry=True)

    def keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``: a scan, for maintenance jobs (``llmcache gc``)."""

        def keys() -> list[str]:
            cache = self._open(create=False)
            if cache is None:
                return []
            prefix = namespace_prefix(namespace)
            return [k for k in cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]

        return self._guarded(keys, retry=True)

    def expire(self) -> int:
        """Remove expired entries now (diskcache also does it while culling)."""
        cache = self._open(create=False)
        return 0 if cache is None else int(cache.expire(retry=True))

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None
