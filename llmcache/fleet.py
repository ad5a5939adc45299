"""Fleet-wide counters: every process adds what its caches counted to the shared L2.

A cache's counters live in its process. So that ``llmcache stats --url/--dir``
can show the hit rate, calls, tokens and cost saved of every process that
used a store, each cache with a disk or Redis L2 adds its counters' *deltas*
since its last report to a small record in that store:

* Redis: one hash per namespace at ``<prefix>~stats:<namespace>`` (no
  namespace can contain ``~``, so no cache key can be it), written with one
  MULTI/EXEC of HINCRBYs: one round trip, all or nothing.
* disk: ``stats.sqlite`` beside the cache (not among diskcache's entries),
  one small transaction of upserts.

When: one thread per process wakes every ``interval`` seconds and reports the
caches that counted something since; a cache also reports when it is closed,
at interpreter exit, and after it is collected (the thread's next wake-up
sends its last report: a collection runs at whatever allocation triggers it,
perhaps while that very thread holds one of our locks or is inside a store
write, so the finalizer only queues the recorder). Never on a lookup's path:
a lookup only starts the thread, once, from its slow path. A report that fails is
logged once and retried at the next (its deltas are kept); the cache's own
counters are never touched. A forked child reports only what it counts itself.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "FIELDS",
    "DiskFleetStore",
    "FleetRecorder",
    "FleetStore",
    "RedisFleetStore",
    "fleet_key",
    "read_disk",
    "read_redis",
]

logger = logging.getLogger("llmcache")

#: The counters a process reports, as ``TieredCache.totals()`` names them.
FIELDS = (
    "hits",
    "misses",
    "errors",
    "coalesced",
    "stale",
    "corrupt",
    "tokens_saved",
    "cost_saved_nanos",
    "tokens_unpriced",
)
#: Also in each namespace's record: how many processes reported, and when last (epoch s).
PROCESSES, UPDATED = "processes", "updated_at"
STATS_FILE = "stats.sqlite"


class FleetStore(Protocol):
    """Where reports go: ``add`` adds deltas atomically (or raises, having added nothing).

    It returns False, having added nothing, when the store does not exist yet
    (the deltas are kept for a later report).
    """

    def add(self, namespace: str, deltas: Mapping[str, int], now: int) -> bool: ...


def fleet_key(prefix: str, namespace: str) -> str:
    return f"{prefix}~stats:{namespace}"


class RedisFleetStore:
    """Reports into ``<prefix>~stats:<namespace>`` hashes through a Redis tier's sync client."""

    def __init__(self, client: Callable[[], Any], prefix: str) -> None:
        self._client = client  # the tier's: opened lazily, closed with the tier
        self.prefix = prefix

    def add(self, namespace: str, deltas: Mapping[str, int], now: int) -> bool:
        pipe = self._client().pipeline(transaction=True)
        key = fleet_key(self.prefix, namespace)
        for name, amount in deltas.items():
            pipe.hincrby(key, name, amount)
        pipe.hset(key, UPDATED, now)
        pipe.execute()
        return True


class DiskFleetStore:
    """Reports into ``stats.sqlite`` in a cache directory; a connection per report."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def add(self, namespace: str, deltas: Mapping[str, int], now: int) -> bool:
        if not self.directory.is_dir():
            return False  # nothing was ever written here: a report must not create the cache
        db = sqlite3.connect(self.directory / STATS_FILE, timeout=10, isolation_level=None)
        with contextlib.closing(db):
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_CREATE)
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO fleet (namespace, field, value) VALUES (?, ?, ?) ON CONFLICT"
                    " (namespace, field) DO UPDATE SET value = value + excluded.value",
                    [(namespace, name, amount) for name, amount in deltas.items()],
                )
                db.execute(
                    "INSERT INTO fleet (namespace, field, value) VALUES (?, ?, ?) ON CONFLICT"
                    " (namespace, field) DO UPDATE SET value = max(value, excluded.value)",
                    (namespace, UPDATED, now),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        return True


_CREATE = (
    "CREATE TABLE IF NOT EXISTS fleet (namespace TEXT NOT NULL, field TEXT NOT NULL,"
    " value INTEGER NOT NULL, PRIMARY KEY (namespace, field))"
)


def read_disk(directory: Path, namespace: str | None = None) -> dict[str, dict[str, int]]:
    """Every namespace's reported counters in a cache directory (read-only; {} if none)."""
    database = directory / STATS_FILE
    if not database.is_file():
        return {}
    query = "SELECT namespace, field, value FROM fleet" + (
        "" if namespace is None else " WHERE namespace = ?"
    )
    uri = database.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        try:
            rows = db.execute(query, () if namespace is None else (namespace,)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return {}  # the first report is creating the file this instant: none yet
    found: dict[str, dict[str, int]] = {}
    for name, field, value in rows:
        found.setdefault(str(name), {})[str(field)] = int(value)
    return found


def read_redis(client: Any, prefix: str, namespace: str | None = None) -> dict[str, dict[str, int]]:
    """Every namespace's reported counters under ``prefix`` (SCAN, never KEYS)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in fleet_key(prefix, ""))
    pattern = escaped + ("*" if namespace is None else namespace)
    start = len(fleet_key(prefix, ""))
    found: dict[str, dict[str, int]] = {}
    for key in client.scan_iter(match=pattern, count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        fields = client.hgetall(key)
        found[text[start:]] = {
            (k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in fields.items()
        }
    return found


class FleetRecorder:
    """One cache's reports: the deltas of ``totals()`` since the last report that succeeded.

    ``totals`` must not hold the cache itself (it reads the cache's counters):
    the recorder lives as long as its cache, and reports one last time when
    the cache is closed, after it is collected (``weakref.finalize``, through
    the flusher thread), or when the interpreter exits.
    """

    def __init__(
        self,
        store: FleetStore,
        namespace: str,
        totals: Callable[[], Mapping[str, int]],
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.interval = interval
        self.clock = clock
        self._totals = totals
        self._lock = threading.Lock()
        self._reported: dict[str, int] = {}
        self._first = True
        self._logged = False
        self._final: weakref.finalize[Any, Any] | None = None
        self.started = False
        self.failures = 0
        _ALL.add(self)

    def attach(self, owner: object) -> None:
        """Report one last time after ``owner`` (the cache) is collected, or at exit."""
        # The finalizer takes no lock and does no I/O (see the module docstring);
        # exit is reported by _report_at_exit, in the exiting thread.
        self._final = weakref.finalize(owner, _FLUSHER.retire, self)
        self._final.atexit = False

    def start(self) -> None:
        """Report every ``interval`` seconds from now on (called once, off the hit path)."""
        self.started = True
        _FLUSHER.add(self)

    def close(self) -> None:
        """Report what is left and stop: the cache is being closed."""
        if self._final is not None:
            self._final.detach()
        self._last_report()

    def _last_report(self) -> None:
        _FLUSHER.discard(self)
        if self.started:
            self.flush()
        self.started = False

    def flush(self) -> bool:
        """Report what was counted since the last report; False if the store failed."""
        with self._lock:
            totals = dict(self._totals())
            deltas = {
                name: totals.get(name, 0) - self._reported.get(name, 0)
                for name in FIELDS
                if totals.get(name, 0) != self._reported.get(name, 0)
            }
            if not deltas:
                return True
            if self._first:
                deltas[PROCESSES] = 1
            try:
                if not self.store.add(self.namespace, deltas, int(self.clock())):
                    return True  # no store yet: nothing lost, the deltas wait for it
            except Exception as exc:  # a report is never worth an exception: try again later
                self.failures += 1
                level = logging.DEBUG if self._logged else logging.WARNING
                self._logged = True
                logger.log(level, "llmcache: fleet stats report failed (%s: %s)",
                           type(exc).__name__, exc)  # fmt: skip
                return False
            self._reported, self._first = totals, False
            return True

    def rebase(self) -> None:
        """The cache's counters were reset: count deltas from their new values."""
        with self._lock:
            self._reported = dict(self._totals())

    def _forked(self) -> None:
        # What the parent counted is the parent's to report (and it will).
        self._lock = threading.Lock()
        self._reported = dict(self._totals())
        self._first = True


class _Flusher:
    """The one thread per process that reports every started recorder now and then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recorders: weakref.WeakSet[FleetRecorder] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Recorders whose caches were collected, for their last report. Appended
        # by finalizers (deque.append is atomic: no lock), drained by the thread.
        self._retired: deque[FleetRecorder] = deque()

    def add(self, recorder: FleetRecorder) -> None:
        with self._lock:
            self._recorders.add(recorder)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llmcache-fleet", daemon=True
                )
                self._thread.start()
            else:
                self._wake.set()  # it may have a shorter interval than the thread sleeps for

    def discard(self, recorder: FleetRecorder) -> None:
        with self._lock:
            self._recorders.discard(recorder)

    def retire(self, recorder: FleetRecorder) -> None:
        """Its cache was collected: the thread sends its last report at its next wake-up.

        Called by a finalizer, in whichever thread the collection ran: it must
        not wait for a lock that thread may hold (``Event.set`` would), so the
        thread is not woken, and a last report waits at most one interval.
        """
        if recorder.started:
            self._retired.append(recorder)

    def report_retired(self) -> None:
        """The last report of every collected cache queued so far."""
        while True:
            try:
                recorder = self._retired.popleft()
            except IndexError:
                return
            recorder._last_report()

    def _run(self) -> None:
        due: weakref.WeakKeyDictionary[FleetRecorder, float] = weakref.WeakKeyDictionary()
        while True:
            self.report_retired()
            now = time.monotonic()
            with self._lock:
                recorders = list(self._recorders)
            wait = 60.0
            for recorder in recorders:
                at = due.setdefault(recorder, now + recorder.interval)
                if at <= now:
                    recorder.flush()
                    due[recorder] = at = now + recorder.interval
                wait = min(wait, at - now)
            del recorders  # hold no recorder while asleep: its cache may be collected
            self._wake.wait(max(wait, 0.01))
            self._wake.clear()

    def _forked(self) -> None:
        # The thread did not come along into the child: a new one reports the
        # child's own counts of the caches the parent had started (a prefork
        # server's workers may serve from a warm memory tier and never reach
        # the slow path that starts a recorder).
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        self._recorders = weakref.WeakSet()
        self._retired = deque()  # the parent's to report
        for recorder in list(_ALL):
            recorder._forked()
            if recorder.started:
                self.add(recorder)


def _report_at_exit() -> None:
    """At interpreter exit: the last report of every started recorder, collected or not."""
    _FLUSHER.report_retired()
    for recorder in list(_ALL):
        if recorder.started:
            recorder._last_report()


_ALL: weakref.WeakSet[FleetRecorder] = weakref.WeakSet()
_FLUSHER = _Flusher()
atexit.register(_report_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_FLUSHER._forked)
