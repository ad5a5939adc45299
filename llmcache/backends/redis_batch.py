"""The async Redis path: per-loop state, and auto-batching (many awaits, few round trips).

An ``asyncio.gather`` of a hundred ``ainvoke`` calls issues a hundred cache
lookups within one turn of the event loop. Sent one by one they cost a
hundred round trips and, with redis.asyncio, a hundred pooled connections.
The :class:`AutoBatcher` queues them instead: the first operation of a loop
tick schedules a flush with ``call_soon``; every operation queued before the
flush runs goes out with it, as one MGET (single server) or one pipeline per
cluster node. Each caller awaits its own future and gets its own result, or
its own error.

Both the batcher and the client under it belong to one event loop;
:class:`PerLoop` keeps one of them per running loop and closes it when its loop
shuts down. What a batch becomes on the wire is ``redis_round_trips``' (shared
with the threaded path, ``redis_threads``); the batcher knows no Redis. Breaker
checks and error wrapping are the tier's (``guard``), applied per round trip,
so a dead cluster node fails its own keys only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from llmcache.backends.redis_round_trips import (
    Op,
    Result,
    adrive,
    by_node,
    node_pipeline,
    own_error,
    single_server,
)
from llmcache.errors import TierError

__all__ = ["AutoBatcher", "Op", "Pending", "PerLoop", "RoundTrip", "run_cluster", "run_single"]

_ClusterErrors = (RedisError, RedisClusterException)  # the latter is no RedisError
RoundTrip = Callable[[Sequence["Pending"]], Awaitable[list[Result]]]
#: ``guard(node, round_trip)``: the tier's breaker check and error wrapping around one
#: round trip; raises (a TierError) when the round trip fails or may not go out.
Guard = Callable[[str, Callable[[], Awaitable[list[Result]]]], Awaitable[list[Result]]]


@dataclass(slots=True)
class Pending:
    op: Op
    key: str  # the full Redis key, prefix included
    value: bytes | None
    px: int | None  # TTL in milliseconds, for a set
    future: asyncio.Future[Any]


class AutoBatcher:
    """Coalesces the operations queued in one event-loop tick into one flush.

    Bound to the loop it was created in; the tier keeps one per running loop.
    A flush larger than ``max_batch`` operations is split into several round
    trips, sent concurrently.
    """

    def __init__(self, round_trip: RoundTrip, *, max_batch: int = 512) -> None:
        self._round_trip = round_trip
        self._max_batch = max_batch
        self._loop = asyncio.get_running_loop()
        self._queue: list[Pending] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self, op: Op, key: str, value: bytes | None = None, px: int | None = None
    ) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._queue.append(Pending(op, key, value, px, future))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self._max_batch):
            task = self._loop.create_task(self._run(queue[start : start + self._max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[Pending]) -> None:
        try:
            results = await self._round_trip(batch)
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(batch)
        for pending, result in zip(batch, results, strict=False):
            if pending.future.done():
                continue  # its caller gave up (cancelled); nobody to tell
            if isinstance(result, BaseException):
                pending.future.set_exception(own_error(result))
            else:
                pending.future.set_result(result)

    async def aclose(self) -> None:
        """Cancel what is queued and in flight (the loop is going away)."""
        for pending in self._queue:
            pending.future.cancel()
        self._queue = []
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- one per event loop ---------------------------------------------------------


class _Closable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Closable)
Loop = asyncio.AbstractEventLoop


class PerLoop(Generic[C]):
    """One value per running event loop, made on first use there, closed with the loop.

    ``asyncio.run`` (every ``asyncio.Runner``, pytest-asyncio too) closes a loop's
    async generators before closing the loop: a parked generator per value is
    the one hook asyncio offers to release a loop's sockets while it still runs.
    A loop closed by hand without that step leaves its value to the garbage
    collector; call ``aclose_current`` before closing such a loop.
    """

    def __init__(self, factory: Callable[[], C]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._values: weakref.WeakKeyDictionary[Loop, C] = weakref.WeakKeyDictionary()
        # The loop holds its async generators weakly: these keep each closer alive.
        self._closers: weakref.WeakKeyDictionary[Loop, AsyncGenerator[None, None]]
        self._closers = weakref.WeakKeyDictionary()

    def current(self) -> C | None:
        """This loop's value, if it has one (the fast path: no await)."""
        return self._values.get(asyncio.get_running_loop())

    async def get(self) -> C:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is not None:
            return value
        with self._lock:  # a loop closed without shutting down: nothing left to close
            for old in [old for old in self._values if old.is_closed()]:
                del self._values[old]
                self._closers.pop(old, None)
        value = self._factory()
        closer = self._close_with(value)
        await closer.asend(None)  # parked until the loop finalizes its async generators
        with self._lock:
            self._values[loop] = value
            self._closers[loop] = closer
        return value

    async def _close_with(self, value: C) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:  # runs in the value's own loop, whoever closes the generator
            loop = asyncio.get_running_loop()
            with self._lock:
                if self._values.get(loop) is value:
                    del self._values[loop]
                    self._closers.pop(loop, None)
            await value.aclose()

    async def aclose_current(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            closer = self._closers.pop(loop, None)
            self._values.pop(loop, None)
        if closer is not None:
            await closer.aclose()

    def close_all(self) -> None:
        """From sync code: close every loop's value, as far as its loop allows."""
        with self._lock:
            closers = list(self._closers.items())
            self._closers.clear()
            self._values.clear()
        for loop, closer in closers:
            if loop.is_closed():
                continue  # its sockets went with it
            if loop.is_running():  # a sync close inside async code, or another thread's loop
                asyncio.run_coroutine_threadsafe(_finish(closer), loop)
            else:
                loop.run_until_complete(_finish(closer))


async def _finish(closer: AsyncGenerator[None, None]) -> None:
    await closer.aclose()


# -- round trips ----------------------------------------------------------------


async def run_single(client: Any, batch: Sequence[Pending], guard: Guard) -> list[Result]:
    """One round trip to one server (``redis_round_trips.single_server``)."""
    return await guard("server", lambda: adrive(single_server(client, batch)))


async def run_cluster(
    client: Any, batch: Sequence[Pending], guard: Guard, seed: str
) -> list[Result]:
    """One pipeline per master, sent concurrently; a failing master fails its keys only."""
    try:
        masters = [client.get_node_from_key(pending.key).name for pending in batch]
    except _ClusterErrors:  # no slot map yet: the first use in this loop
        await guard(seed, lambda: _mapped(client))  # the seed's breaker guards the bootstrap
        try:
            masters = [client.get_node_from_key(pending.key).name for pending in batch]
        except _ClusterErrors as exc:
            raise TierError(f"redis cluster: {exc}") from exc
    groups = by_node(masters)

    async def for_node(node: str, indices: list[int]) -> list[Result]:
        members = [batch[index] for index in indices]
        try:
            return await guard(node, lambda: adrive(node_pipeline(client, members)))
        except Exception as exc:
            return [exc] * len(members)

    results: list[Result] = [None] * len(batch)
    answers = await asyncio.gather(*(for_node(node, idx) for node, idx in groups.items()))
    for indices, values in zip(groups.values(), answers, strict=False):
        for index, value in zip(indices, values, strict=False):
            results[index] = value
    return results


async def _mapped(client: Any) -> list[Result]:
    await client.initialize()  # CLUSTER SLOTS (and COMMAND) from the seed
    return []
