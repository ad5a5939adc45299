"""DiskVersions: dependency versions shared by the processes of one host, beside a DiskTier.

``versions.sqlite`` holds the versions (random values, see
:func:`llmcache.invalidation.new_version`); ``versions.epoch`` is 8 bytes that
every bump, clear and retain advances *after* its transaction commits, under an
exclusive file lock. A reader reads the epoch first and its versions second,
so a local copy tagged with an epoch can only be newer than that epoch, never
older; when the epoch moves, the copy is dropped. Readers check the epoch on
every lookup (a few hundred nanoseconds), so other processes see an
invalidation on their very next lookup.

The files can be lost or swapped under running processes (deleted by hand, a
directory restored from a backup). That costs misses only:

* a deleted file is made again, its versions made again with new random
  values that no entry carries;
* every process notices that either file is no longer the one it opened (its
  device and inode changed) before each write, and otherwise within
  ``check_interval`` seconds (a stat costs microseconds, too much for every
  lookup); it then drops its local copy and opens the files now in place;
* a new epoch file starts at a random value, so a generation read from it
  never equals one read from the file it replaced;
* the database remembers the inode it was created as: a copy of it put in
  place (a backup restored with ``mv`` or ``cp``) finds a different inode and
  gives every version a new value, so an older copy's versions revive nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from llmcache.invalidation.versions import _LocalOnly, new_version

__all__ = ["DiskVersions"]

_EPOCH = struct.Struct("<Q")
Identity = tuple[int, int]  # (st_dev, st_ino)


class DiskVersions(_LocalOnly):
    """Versions shared by the processes of one host, in ``directory``."""

    name = "versions:disk"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        check_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._local: dict[tuple[str, str], int] = {}
        self._epoch = -1
        self._db: sqlite3.Connection | None = None
        self._map: mmap.mmap | None = None
        self._pid = 0
        self._identity: tuple[Identity, Identity] | None = None
        self._next_check = 0.0
        #: How many times this store found its files replaced and opened the new ones.
        self.reopened = 0

    @property
    def _db_path(self) -> Path:
        return self.directory / "versions.sqlite"

    @property
    def _epoch_path(self) -> Path:
        return self.directory / "versions.epoch"

    # -- opening, and noticing the files replaced -------------------------------------

    def _open(self, *, check: bool = False) -> tuple[sqlite3.Connection, mmap.mmap]:
        """The open files (call under the lock); ``check``: make sure they are still in place."""
        if self._db is not None and self._map is not None and self._pid == os.getpid():
            if not check and self._clock() < self._next_check:
                return self._db, self._map
            if self._on_disk() == self._identity:
                self._next_check = self._clock() + self.check_interval
                return self._db, self._map
            self.reopened += 1
            # Closed before the new files are opened: closing the last connection
            # of a WAL database deletes "versions.sqlite-wal" by name.
            self._release()
        return self._connect()

    def _on_disk(self) -> tuple[Identity, Identity] | None:
        try:
            db, epoch = os.stat(self._db_path), os.stat(self._epoch_path)
        except FileNotFoundError:
            return None
        return (db.st_dev, db.st_ino), (epoch.st_dev, epoch.st_ino)

    def _connect(self) -> tuple[sqlite3.Connection, mmap.mmap]:
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch_map, epoch_identity = _map_epoch(self._epoch_path)
        db = sqlite3.connect(
            self._db_path, timeout=10, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # As diskcache does for the entries beside it: a commit survives a
            # crashed process; a power cut may lose the last ones (no fsync each).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS versions (namespace TEXT, name TEXT,"
                " version INTEGER NOT NULL, PRIMARY KEY (namespace, name))"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
            stat = os.stat(self._db_path)
            db_identity = (stat.st_dev, stat.st_ino)
            if _adopt(db, db_identity):
                _advance_epoch(epoch_map, self._epoch_path)
        except BaseException:
            db.close()
            epoch_map.close()
            raise
        self._db, self._map, self._pid = db, epoch_map, os.getpid()
        self._identity = (db_identity, epoch_identity)
        self._local, self._epoch = {}, -1
        self._next_check = self._clock() + self.check_interval
        return db, epoch_map

    def _release(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._map is not None:
            self._map.close()
        self._db = self._map = None
        self._local, self._epoch = {}, -1

    # -- reads --------------------------------------------------------------------------

    def generation(self) -> int:
        # The epoch moves after every committed bump, from any process.
        epoch_map = self._map
        if epoch_map is None or self._pid != os.getpid() or self._clock() >= self._next_check:
            with self._lock:
                epoch_map = self._open()[1]
        epoch: int = _EPOCH.unpack_from(epoch_map)[0]
        return epoch

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        # The hit path: nothing bumped since we last looked, and every name is
        # known. Reads only, so no lock (the slow path below rebuilds under it).
        epoch_map = self._map
        if (
            epoch_map is not None
            and self._pid == os.getpid()
            and self._clock() < self._next_check
            and _EPOCH.unpack_from(epoch_map)[0] == self._epoch
        ):
            local = self._local
            cached = {name: local.get((namespace, name), -1) for name in names}
            if -1 not in cached.values():
                return cached
        with self._lock:
            db, epoch_map = self._open()
            epoch = _EPOCH.unpack_from(epoch_map)[0]
            if epoch != self._epoch:
                self._local.clear()
                self._epoch = epoch
            local = self._local
            missing = [name for name in names if (namespace, name) not in local]
            if missing:
                found = _select(db, namespace, missing)
                if len(found) < len(missing):
                    found = self._create(db, namespace, missing)
                for name in missing:
                    local[(namespace, name)] = found[name]
            return {name: local[(namespace, name)] for name in names}

    def _create(self, db: sqlite3.Connection, namespace: str, names: list[str]) -> dict[str, int]:
        """Give the names with no record one, with a new version; another process's may win."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO versions (namespace, name, version) VALUES (?, ?, ?)",
                [(namespace, name, new_version()) for name in names],
            )
            found = _select(db, namespace, names)
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        return found

    # -- writes -------------------------------------------------------------------------

    def bump(self, namespace: str, names: Collection[str]) -> None:
        self._write(
            "INSERT INTO versions (namespace, name, version) VALUES (?, ?, ?) "
            "ON CONFLICT (namespace, name) DO UPDATE SET version = excluded.version",
            [(namespace, name, new_version()) for name in names],
        )

    def clear(self, namespace: str) -> None:
        self._write("DELETE FROM versions WHERE namespace = ?", [(namespace,)])

    def retain(self, namespace: str, needed: Collection[str]) -> tuple[int, int]:
        keep = set(needed)
        with self._lock:
            db, _ = self._open(check=True)
            held = [row[0] for row in db.execute(
                "SELECT name FROM versions WHERE namespace = ?", (namespace,)
            )]  # fmt: skip
        dropped = [name for name in held if name not in keep]
        if dropped:
            # A name written again since the SELECT loses its record too: a miss, no more.
            self._write(
                "DELETE FROM versions WHERE namespace = ? AND name = ?",
                [(namespace, name) for name in dropped],
            )
        return len(dropped), len(held) - len(dropped)

    def _write(self, statement: str, rows: list[tuple[object, ...]]) -> None:
        """One transaction, then the epoch: every process drops its copy on its next read."""
        with self._lock:
            db, epoch_map = self._open(check=True)  # never write into a file that was replaced
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(statement, rows)
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
            _advance_epoch(epoch_map, self._epoch_path)
            self._local.clear()

    def close(self) -> None:
        with self._lock:
            self._release()


# -- helpers ----------------------------------------------------------------------------


def _select(db: sqlite3.Connection, namespace: str, names: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(names))
    rows = db.execute(
        f"SELECT name, version FROM versions WHERE namespace = ? AND name IN ({marks})",
        (namespace, *names),
    ).fetchall()
    return dict(rows)


def _map_epoch(path: Path) -> tuple[mmap.mmap, Identity]:
    """Map the epoch file, made with a random start if new (under its lock: one maker wins)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size < _EPOCH.size:
                # Random, not 0: generations read from a file made again must not
                # repeat the ones the file it replaces gave (see VersionStore.generation).
                os.pwrite(fd, _EPOCH.pack(new_version()), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        stat = os.fstat(fd)
        return mmap.mmap(fd, _EPOCH.size), (stat.st_dev, stat.st_ino)
    finally:
        os.close(fd)


def _adopt(db: sqlite3.Connection, identity: Identity) -> bool:
    """Make sure the database is the file it was created as; True if its versions were renewed.

    A database records the device and inode it was created on. Found under
    another one, it is a copy put in place (perhaps an older backup), whose
    versions may be ones that were bumped since: every version gets a new
    value, which costs a miss per entry and revives none.
    """
    recorded = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('dev', 'ino')"))
    if recorded == {"dev": identity[0], "ino": identity[1]}:
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        recorded = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('dev', 'ino')"))
        renewed = bool(recorded) and recorded != {"dev": identity[0], "ino": identity[1]}
        if renewed:
            held = db.execute("SELECT namespace, name FROM versions").fetchall()
            db.executemany(
                "UPDATE versions SET version = ? WHERE namespace = ? AND name = ?",
                [(new_version(), namespace, name) for namespace, name in held],
            )
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("dev", identity[0]), ("ino", identity[1])],
        )
        db.execute("COMMIT")
    except BaseException:
        _roll_back(db)
        raise
    return renewed


def _advance_epoch(epoch_map: mmap.mmap, path: Path) -> None:
    # Read-modify-write under an exclusive lock: two bumps racing must not
    # both write the same next epoch, or a reader could miss the second.
    with open(path, "rb") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            epoch = _EPOCH.unpack_from(epoch_map)[0]
            _EPOCH.pack_into(epoch_map, 0, (epoch + 1) & 0xFFFF_FFFF_FFFF_FFFF)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _roll_back(db: sqlite3.Connection) -> None:
    """Undo an open transaction, and never hide why it failed.

    On some errors (a full disk: SQLITE_FULL) SQLite has already rolled the
    transaction back, and a ROLLBACK then raises "no transaction is active",
    which would replace the real cause in the caller's traceback.
    """
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
