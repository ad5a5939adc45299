"""Vector indexes: the interface, and the embedded SQLite (WAL) one searched with numpy.

An index holds, per scope, (text, vector, target) rows, where the target is
the storage key of the exact entry that holds the answer. It is searched one
scope at a time, exactly (a dot product against every vector of the scope).

The embedded index is a SQLite table in WAL mode: several processes on one
host insert into it concurrently and none loses a row (SQLite serialises the
writers; WAL lets readers go on meanwhile). Each process keeps the vectors of
the scopes it searched as a numpy matrix and reads only the rows added since
(``id > last``); a counter bumped by every delete tells it when to reload.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from llmcache.errors import TierError
from llmcache.semantic.blas import blas_threads

__all__ = ["Entry", "Match", "SQLiteIndex", "VectorIndex"]

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Entry:
    """One row to index: a question's text and vector, pointing at an exact entry."""

    namespace: str
    scope: str
    text: str
    target: str
    vector: Vector = field(repr=False)


@dataclass(frozen=True)
class Match:
    similarity: float
    text: str
    target: str


@runtime_checkable
class VectorIndex(Protocol):
    """Add, search one scope, remove by target, clear a namespace. Sync: callers thread it."""

    name: str

    def add(self, entries: Sequence[Entry]) -> None: ...
    def search(
        self, namespace: str, scope: str, vector: Vector, k: int, floor: float
    ) -> list[Match]: ...
    def remove(self, namespace: str, target: str) -> None: ...
    def clear(self, namespace: str) -> None: ...
    def count(self, namespace: str) -> int: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (scope, target)
);
CREATE INDEX IF NOT EXISTS entries_scope ON entries (scope, id);
CREATE INDEX IF NOT EXISTS entries_namespace ON entries (namespace, target);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('deletions', 0);
"""


class _Scope:
    """One scope's vectors in this process: rows up to ``last`` as of ``deletions``.

    The vectors live in the first ``size`` rows of a preallocated matrix whose
    capacity doubles when full, so rows added by other processes cost a copy of
    the new rows only (a concatenation per refresh copied the whole scope).
    ``checked`` is the database state, (``PRAGMA data_version``, this index's
    own commits), that the copy was last brought up to date with.
    """

    __slots__ = ("buffer", "checked", "deletions", "last", "scores", "size", "targets", "texts")

    def __init__(self, deletions: int, dimensions: int) -> None:
        self.deletions = deletions
        self.last = 0
        self.checked: tuple[int, int] | None = None
        self.size = 0
        self.buffer: Vector = np.empty((0, dimensions), dtype=np.float32)
        self.scores: Vector = np.empty(0, dtype=np.float32)
        self.texts: list[str] = []
        self.targets: list[str] = []

    @property
    def matrix(self) -> Vector:
        return self.buffer[: self.size]

    def extend(self, rows: Vector) -> None:
        needed = self.size + len(rows)
        if needed > len(self.buffer):
            capacity = max(needed, 2 * len(self.buffer), 64)
            grown = np.empty((capacity, rows.shape[1]), dtype=np.float32)
            grown[: self.size] = self.buffer[: self.size]
            self.buffer, self.scores = grown, np.empty(capacity, dtype=np.float32)
        self.buffer[self.size : needed] = rows
        self.size = needed


class SQLiteIndex:
    """The embedded index: a SQLite WAL file shared by the processes of one host.

    ``path=None`` keeps it in this process's memory (for a cache whose exact
    entries live only in memory: a shared index would point at nothing).
    Opened on first use; reopened after a fork.
    """

    name = "semantic-sqlite"

    def __init__(self, path: str | os.PathLike[str] | None, *, timeout: float = 30.0) -> None:
        self.path = None if path is None else Path(path)
        self.timeout = timeout
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._scopes: dict[tuple[str, str], _Scope] = {}
        # Commits made through this index's connection: PRAGMA data_version
        # counts only the other connections' commits.
        self._commits = 0

    def _db(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        if self.path is None:
            target = ":memory:"
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer
        # takes the write lock up front instead of failing on upgrade.
        connection = sqlite3.connect(
            target, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        if self.path is not None:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        self._connection, self._pid = connection, os.getpid()
        self._scopes = {}
        return connection

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]], bump: bool) -> None:
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
                if bump:
                    db.execute("UPDATE meta SET value = value + 1 WHERE name = 'deletions'")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._commits += 1  # whatever happened, the next search rereads
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise TierError(f"semantic index {self.path}: {exc}") from exc
            self._commits += 1

    def add(self, entries: Sequence[Entry]) -> None:
        rows = [
            (e.namespace, e.scope, e.target, e.text, np.asarray(e.vector, "<f4").tobytes())
            for e in entries
        ]
        # A target already indexed in this scope is the same question: keep the first.
        self._write(
            "INSERT OR IGNORE INTO entries (namespace, scope, target, text, vector)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
            bump=False,
        )

    def remove(self, namespace: str, target: str) -> None:
        self._write(
            "DELETE FROM entries WHERE namespace = ? AND target = ?", [(namespace, target)], True
        )

    def clear(self, namespace: str) -> None:
        self._write("DELETE FROM entries WHERE namespace = ?", [(namespace,)], bump=True)

    def count(self, namespace: str) -> int:
        with self._lock:
            row = (
                self._db()
                .execute("SELECT COUNT(*) FROM entries WHERE namespace = ?", (namespace,))
                .fetchone()
            )
        return int(row[0])

    def search(
        self, namespace: str, scope: str, vector: Vector, k: int, floor: float
    ) -> list[Match]:
        with self._lock:
            cached = self._refresh(namespace, scope, vector.shape[0])
            if not cached.size:
                return []
            similarities = cached.scores[: cached.size]
            with blas_threads(1):
                np.matmul(cached.matrix, vector, out=similarities)
            return _best(similarities, cached.texts, cached.targets, k, floor)

    def _refresh(self, namespace: str, scope: str, dimensions: int) -> _Scope:
        """This process's copy of a scope, up to date.

        One cheap check when nothing was committed since the last search
        (``PRAGMA data_version`` changes when another connection, in this
        process or another, commits); otherwise two indexed reads: the
        deletions counter, and the rows added since.
        """
        db = self._db()
        try:
            version = (db.execute("PRAGMA data_version").fetchone()[0], self._commits)
            cached = self._scopes.get((namespace, scope))
            if cached is not None and cached.checked == version:
                return cached
            deletions = db.execute("SELECT value FROM meta WHERE name = 'deletions'").fetchone()[0]
            if cached is None or cached.deletions != deletions:
                cached = self._scopes[(namespace, scope)] = _Scope(deletions, dimensions)
            rows = db.execute(
                "SELECT id, text, target, vector FROM entries"
                " WHERE scope = ? AND id > ? AND namespace = ? ORDER BY id",
                (scope, cached.last, namespace),
            ).fetchall()
        except sqlite3.Error as exc:
            raise TierError(f"semantic index {self.path}: {exc}") from exc
        if rows:
            fresh = np.frombuffer(b"".join(row[3] for row in rows), dtype="<f4")
            cached.extend(fresh.reshape(len(rows), -1))
            cached.texts.extend(row[1] for row in rows)
            cached.targets.extend(row[2] for row in rows)
            cached.last = rows[-1][0]
        cached.checked = version
        return cached

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
            self._scopes = {}


def _best(
    similarities: Vector, texts: list[str], targets: list[str], k: int, floor: float
) -> list[Match]:
    """The ``k`` most similar rows at or above ``floor``, most similar first."""
    n = len(similarities)
    if n > k:  # a partial sort of the k largest; the full sort only for those
        top = np.argpartition(similarities, n - k)[n - k :]
    else:
        top = np.arange(n)
    top = top[np.argsort(-similarities[top], kind="stable")]
    return [
        Match(float(similarities[i]), texts[i], targets[i]) for i in top if similarities[i] >= floor
    ]
