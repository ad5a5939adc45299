"""What a follower waits for: a value set once, from any thread, awaited in any thread or loop.

A leader's answer is set by whichever thread or event loop ends its call, and
its followers wait in other threads (blocking) and other loops (awaiting): an
:class:`Outcome` wakes each of them in its own thread or loop. When there is no
value to hand over, the outcome is one of the signals below, which tell the
waiter what to do instead.

The coalescer (``coalesce/coalescer.py``) and its Redis leases
(``coalesce/redis_leases.py``) wait on these; this module imports nothing of
the project. No lookup runs in its frames, so ``leaders.py`` need not skip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Final

__all__ = ["GIVE_UP", "NOTIFIED", "RETRY", "TIMEOUT", "Outcome", "Signal"]


class Signal(str):
    """What a wait returns when there is no value to hand over."""


TIMEOUT: Final = Signal("TIMEOUT")  # a wait ran out of time
RETRY: Final = Signal("RETRY")  # the leader ended without a value: race to lead
GIVE_UP: Final = Signal("GIVE_UP")  # its value cannot be handed over: each goes alone
NOTIFIED: Final = Signal("NOTIFIED")  # another process finished or let go: read again
_PENDING: Final = Signal("PENDING")


class Outcome:
    """A value set once, from any thread, that threads and event loops can wait for."""

    __slots__ = ("_event", "_futures", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._value: Any = _PENDING
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []

    @property
    def done(self) -> bool:
        return self._value is not _PENDING

    @property
    def value(self) -> Any:
        return self._value

    def set(self, value: Any) -> bool:
        """Set the value and wake every waiter, each in its own thread or loop. First wins."""
        with self._lock:
            if self._value is not _PENDING:
                return False
            self._value = value
            futures, self._futures = self._futures, []
        self._event.set()
        for loop, future in futures:
            _wake(loop, future, value)
        return True

    def wait(self, timeout: float) -> Any:
        """Block up to ``timeout`` seconds: the value, or TIMEOUT."""
        return self._value if self._event.wait(timeout) else TIMEOUT

    async def await_(self, timeout: float) -> Any:
        """Await up to ``timeout`` seconds: the value, or TIMEOUT."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._value is not _PENDING:
                return self._value
            future: asyncio.Future[Any] = loop.create_future()
            self._futures.append((loop, future))
        timer = loop.call_later(timeout, _settle, future, TIMEOUT)
        try:
            return await future
        finally:
            timer.cancel()
            with self._lock:
                if (loop, future) in self._futures:
                    self._futures.remove((loop, future))


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any) -> None:
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _settle(future, value)
    elif not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed in between: nobody waits there now
            loop.call_soon_threadsafe(_settle, future, value)
