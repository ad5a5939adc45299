"""The threaded Redis path: concurrent threads' operations, few round trips.

LangChain's ``batch`` runs ``invoke`` in worker threads, and each lookup there
is a blocking ``RedisTier.get``. Sent one by one, the lookups of N threads
cost N round trips, N connections from the pool, and a hand-over of the GIL
at every blocking read. A :class:`ThreadBatcher` (the tier keeps one per
server, one per master on a cluster) lets one round trip be in flight at a time:

* a thread that finds none in flight sends its operation at once, alone: a
  lone caller waits for nothing but its own round trip;
* threads that arrive while one is in flight queue up; when it ends, its
  sender wakes the first of them to send the whole queue (up to
  ``max_batch``) as the next round trip - one MGET or pipeline, decided in
  ``redis_round_trips`` as for the async path - and then hands its own
  companions their results;
* a round trip that fails as a whole (a timeout, a lost connection, an open
  breaker) fails the threads queued behind it as well, at once: they waited
  while the server did not answer, and sending them after it would cost each
  another timeout. A caller so waits for at most the round trip in flight
  when it came and its own, and only for the first when that one fails.

The round trip (breaker check, timeouts, error wrapping) is the tier's; the
batcher knows no Redis.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmcache.backends.redis_round_trips import Op, Result, own_error
from llmcache.errors import TierError

__all__ = ["ThreadBatcher", "Waiter"]


@dataclass(slots=True, eq=False)
class Waiter:
    """One thread's operation, and how it is woken when it queued."""

    op: Op
    key: str  # the full Redis key, prefix included
    value: bytes | None
    px: int | None  # TTL in milliseconds, for a set
    result: Result = None
    #: Set (to the batch it must send) when the thread is woken to lead a round trip.
    lead: list[Waiter] | None = None
    #: Held while the thread waits; released to wake it. Only a queued waiter has one.
    wake: Any = None


class ThreadBatcher:
    """Groups the operations of concurrent threads into round trips, one in flight at a time."""

    def __init__(
        self, round_trip: Callable[[Sequence[Waiter]], list[Result]], *, max_batch: int = 512
    ) -> None:
        self._round_trip = round_trip
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[Waiter] = []
        self._busy = False  # a round trip is in flight
        _track(self)
        #: Round trips sent, and operations they carried: for tests and benchmarks.
        self.round_trips = 0
        self.operations = 0

    @property
    def queued(self) -> int:
        """How many threads wait for the next round trip."""
        with self._lock:
            return len(self._queue)

    def submit(self, op: Op, key: str, value: bytes | None = None, px: int | None = None) -> Any:
        """Run one operation, alone or with the threads queued beside it; its own result.

        Raises ``TierError`` when its round trip fails, or its own operation does.
        """
        waiter = Waiter(op, key, value, px)
        with self._lock:
            if self._busy:
                waiter.wake = threading.Lock()
                waiter.wake.acquire()
                self._queue.append(waiter)
                batch = None
            else:
                self._busy = True
                batch = [waiter]
        if batch is None:
            waiter.wake.acquire()  # until a leader hands over a result, or the next batch
            batch = waiter.lead
        if batch is not None:
            self._send(batch)
        result = waiter.result
        if isinstance(result, BaseException):
            raise own_error(result)
        return result

    def _send(self, batch: list[Waiter]) -> None:
        """Lead one round trip: send it, pass the lead on, then hand out the results."""
        results: list[Result] | None = None
        failed: Exception | None = None
        try:
            results = self._round_trip(batch)
        except Exception as exc:
            failed = exc
        finally:
            if results is None and failed is None:  # interrupted (KeyboardInterrupt...)
                failed = TierError("redis: round trip interrupted")
            if failed is not None:
                results = [failed] * len(batch)
            assert results is not None
            self.round_trips += 1  # still the only leader: no other thread counts now
            self.operations += len(batch)
            # Wake the next leader first: its round trip overlaps our hand-out.
            for waiter in self._pass_lead(failed):
                waiter.result = failed
                waiter.wake.release()
            for index, waiter in enumerate(batch):
                waiter.result = results[index] if index < len(results) else None
                if waiter.wake is not None and index:  # the leader (index 0) is not waiting
                    waiter.wake.release()

    def _pass_lead(self, failed: Exception | None) -> list[Waiter]:
        """The next round trip's batch goes to its first thread; returns the waiters refused."""
        with self._lock:
            queue = self._queue
            if failed is not None or not queue:
                self._queue, self._busy = [], False
                return queue
            batch, self._queue = queue[: self._max_batch], queue[self._max_batch :]
        batch[0].lead = batch
        batch[0].wake.release()
        return []

    def _forked(self) -> None:
        # In a child process the threads that were queued or sending do not exist,
        # and one of them may have held the lock when the fork happened.
        self._lock = threading.Lock()
        self._queue, self._busy = [], False


# A child process starts with every batcher idle (an os.getpid() per call would
# cost the lone caller): the hook is set on the first batcher, not at import.
_BATCHERS: weakref.WeakSet[ThreadBatcher] = weakref.WeakSet()
_HOOKED: list[bool] = []


def _track(batcher: ThreadBatcher) -> None:
    if not _HOOKED:
        _HOOKED.append(True)
        os.register_at_fork(after_in_child=_after_fork)
    _BATCHERS.add(batcher)


def _after_fork() -> None:
    for batcher in list(_BATCHERS):
        batcher._forked()
