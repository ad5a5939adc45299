"""Dependency-versioned invalidation: ``depends_on``, version stores, the miss-time snapshot.

Every dependency name has a version counter. An entry records the versions of
its dependencies as they were when its call *missed*; a read serves it only
while they are all still current. ``invalidate(name)`` is one counter bump:
O(1) whatever the number of dependent entries, no scan. Stale entries are
skipped at once and their space comes back lazily (TTL, LRU, ``llmcache gc``).

Names are scoped by namespace, so tenant A's ``invalidate("doc:1")`` never
touches tenant B's entries.

Version stores, matching the deployment:

* ``MemoryVersions``: one process.
* ``DiskVersions``: several processes on one host, beside a DiskTier. Versions
  live in SQLite; every bump also advances an epoch counter in a small
  memory-mapped file, which readers check on every lookup (a few hundred
  nanoseconds) before trusting their local copy. Other processes therefore
  see an invalidation on their very next lookup.
* ``RedisVersions`` (``llmcache.backends.redis_versions``): every host.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import mmap
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from llmcache.errors import ConfigurationError

__all__ = [
    "DependencyRules",
    "DiskVersions",
    "MemoryVersions",
    "PendingSnapshots",
    "VersionStore",
    "current_dependencies",
    "depends_on",
    "validate_dependency",
]

#: Derives dependency names from the call itself: ``(prompt, llm_string) -> names``.
DependencyRules = Callable[[str, str], Iterable[str]]

_dependencies: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "llmcache_dependencies", default=frozenset()
)


def validate_dependency(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 512 or "\x00" in name:
        raise ConfigurationError(
            f"a dependency is a non-empty string of at most 512 characters: {name!r}"
        )
    return name


@contextmanager
def depends_on(*names: str) -> Iterator[frozenset[str]]:
    """Entries written inside this block depend on ``names`` (nested blocks add up).

    A context variable: it reaches every call made inside the block, through
    ``asyncio.gather`` tasks and LangChain's ``batch`` worker threads.
    """
    added = frozenset(validate_dependency(name) for name in names)
    token = _dependencies.set(_dependencies.get() | added)
    try:
        yield _dependencies.get()
    finally:
        _dependencies.reset(token)


def current_dependencies() -> frozenset[str]:
    """The names of the enclosing ``depends_on`` blocks."""
    return _dependencies.get()


@runtime_checkable
class VersionStore(Protocol):
    """Version counters per (namespace, dependency name); 0 for a name never bumped."""

    name: str

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]: ...
    def peek(self, namespace: str, names: Collection[str]) -> dict[str, int] | None:
        """``current`` if it needs no network round trip, else None. Never waits on a server."""
        ...

    def generation(self) -> int | None:
        """A number that changes whenever any version may have changed (None: cannot say).

        Lets a reader that found an entry fresh at generation G skip the check
        while the generation is still G. It must move *after* the versions do.
        """
        ...

    def bump(self, namespace: str, names: Collection[str]) -> None: ...
    def close(self) -> None: ...
    async def acurrent(self, namespace: str, names: Collection[str]) -> dict[str, int]: ...
    async def abump(self, namespace: str, names: Collection[str]) -> None: ...
    async def aclose(self) -> None: ...


class _LocalOnly:
    """Async twins for stores whose operations never wait on the network."""

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        raise NotImplementedError

    def peek(self, namespace: str, names: Collection[str]) -> dict[str, int] | None:
        return self.current(namespace, names)

    def bump(self, namespace: str, names: Collection[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release by default."""

    async def acurrent(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        return self.current(namespace, names)

    async def abump(self, namespace: str, names: Collection[str]) -> None:
        self.bump(namespace, names)

    async def aclose(self) -> None:
        self.close()


class MemoryVersions(_LocalOnly):
    """Versions for one process."""

    name = "versions:memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], int] = {}
        self._generation = 0

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        versions = self._versions
        return {name: versions.get((namespace, name), 0) for name in names}

    def generation(self) -> int:
        return self._generation

    def bump(self, namespace: str, names: Collection[str]) -> None:
        with self._lock:
            for name in names:
                key = (namespace, name)
                self._versions[key] = self._versions.get(key, 0) + 1
            self._generation += 1  # after the versions: see VersionStore.generation


class DiskVersions(_LocalOnly):
    """Versions shared by the processes of one host, in ``directory``.

    ``versions.sqlite`` holds the counters; ``versions.epoch`` is 8 bytes that
    every bump advances *after* its transaction commits, under an exclusive
    file lock. A reader reads the epoch first and its versions second, so a
    local copy tagged with an epoch can only be newer than that epoch, never
    older; when the epoch moves, the copy is dropped.
    """

    name = "versions:disk"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        self._lock = threading.Lock()
        self._local: dict[tuple[str, str], int] = {}
        self._epoch = -1
        self._db: sqlite3.Connection | None = None
        self._map: mmap.mmap | None = None
        self._pid = 0

    def _open(self) -> tuple[sqlite3.Connection, mmap.mmap]:
        if self._db is not None and self._map is not None and self._pid == os.getpid():
            return self._db, self._map
        self.directory.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.directory / "versions.sqlite",
            timeout=10,
            isolation_level=None,
            check_same_thread=False,
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS versions "
            "(namespace TEXT, name TEXT, version INTEGER NOT NULL, PRIMARY KEY (namespace, name))"
        )
        epoch_path = self.directory / "versions.epoch"
        fd = os.open(epoch_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._db, self._pid, self._local, self._epoch = db, os.getpid(), {}, -1
        return db, self._map

    def generation(self) -> int:
        # The epoch moves after every committed bump, from any process.
        epoch: int = struct.unpack_from("<Q", self._open()[1])[0]
        return epoch

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        # The hit path: nothing bumped since we last looked, and every name is
        # known. Reads only, so no lock (the slow path below rebuilds under it).
        if self._map is not None and self._pid == os.getpid():
            local = self._local
            if struct.unpack_from("<Q", self._map)[0] == self._epoch:
                cached = {name: local.get((namespace, name), -1) for name in names}
                if -1 not in cached.values():
                    return cached
        with self._lock:
            db, epoch_map = self._open()
            epoch = struct.unpack_from("<Q", epoch_map)[0]
            if epoch != self._epoch:
                self._local.clear()
                self._epoch = epoch
            local = self._local
            missing = [name for name in names if (namespace, name) not in local]
            if missing:
                found = dict(
                    db.execute(
                        "SELECT name, version FROM versions WHERE namespace = ? AND name IN "
                        f"({','.join('?' * len(missing))})",
                        (namespace, *missing),
                    ).fetchall()
                )
                for name in missing:
                    local[(namespace, name)] = found.get(name, 0)
            return {name: local[(namespace, name)] for name in names}

    def bump(self, namespace: str, names: Collection[str]) -> None:
        with self._lock:
            db, epoch_map = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO versions (namespace, name, version) VALUES (?, ?, 1) "
                    "ON CONFLICT (namespace, name) DO UPDATE SET version = version + 1",
                    [(namespace, name) for name in names],
                )
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
            self._advance_epoch(epoch_map)
            self._local.clear()

    def _advance_epoch(self, epoch_map: mmap.mmap) -> None:
        # Read-modify-write under an exclusive lock: two bumps racing must not
        # both write the same next epoch, or a reader could miss the second.
        with open(self.directory / "versions.epoch", "rb") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                epoch = struct.unpack_from("<Q", epoch_map)[0]
                struct.pack_into("<Q", epoch_map, 0, epoch + 1)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            if self._map is not None:
                self._map.close()
            self._db = self._map = None


def _roll_back(db: sqlite3.Connection) -> None:
    """Undo an open transaction, and never hide why it failed.

    On some errors (a full disk: SQLITE_FULL) SQLite has already rolled the
    transaction back, and a ROLLBACK then raises "no transaction is active",
    which would replace the real cause in the caller's traceback.
    """
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class PendingSnapshots:
    """The versions current when a key missed, kept until its ``update`` arrives.

    LangChain calls ``lookup``, then the model, then ``update``: the versions an
    entry records must be the ones from the lookup, or an answer computed
    while its dependency was being invalidated would be stored as fresh. The
    *oldest* snapshot of a key wins (two concurrent misses: the earlier one is
    the safe one). Bounded by entries and by age: a call that failed never
    updates, and its snapshot must not pin the key's versions for long.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: OrderedDict[str, tuple[float, Mapping[str, int]]] = OrderedDict()

    def remember(self, key: str, versions: Mapping[str, int]) -> None:
        now = self._clock()
        with self._lock:
            held = self._snapshots.get(key)
            if held is not None and now - held[0] < self.max_age:
                return
            self._snapshots[key] = (now, versions)
            self._snapshots.move_to_end(key)
            while len(self._snapshots) > self.max_entries:
                self._snapshots.popitem(last=False)

    def take(self, key: str) -> Mapping[str, int] | None:
        with self._lock:
            held = self._snapshots.pop(key, None)
        if held is None or self._clock() - held[0] >= self.max_age:
            return None
        return held[1]
