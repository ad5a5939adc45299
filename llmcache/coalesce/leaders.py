"""Who leads an in-flight key, and when that lead is over (for ``llmcache.coalesce``).

A lead belongs to a *call*: the thread or task that missed, and its caller's
frame - the first frame outside llmcache (and outside LangChain's batch lookup
helpers ``get_prompts``/``aget_prompts``, whose caller ``generate`` then owns
the whole batch). The lead is over when that call is:

* its update (the coalescer resolves the flight; not seen here);
* its frame left the stack: it raised, or returned without an update. A
  watcher thread checks every ``poll`` seconds (20 ms) while any thread has a
  lead: the frame still running, read from that frame alone (a running frame
  refuses ``clear()``; no other thread's stack is walked, which on CPython
  3.11 can crash the process: ``sys._current_frames`` + ``f_back``), or
  for a task whose coroutine looked up from an inner coroutine, that coroutine
  still in the task's await chain (checked in the task's own loop, where the
  task is suspended and the chain exact);
* its task ended (a done callback, at once; no polling);
* the same thread or task asking again: for the same key, in any cache of the
  process (a retry, or code that only looked), or for another key from the
  same frame (a frame leads one key at a time, except LangChain's batch), or
  from anywhere once the earlier frame is gone. So code that only looks never
  holds more than one lead per thread or task.

A stream's lead is held instead (:class:`HeldOwner`, taken with
:func:`leading_as` around its lookup): a generator is off the stack between
chunks, so its lead ends only when the stream says so (stored, failed,
closed), and it is not filed here.

The registry is per process, so two caches see each other's leads: a caller
never waits on a lease its own thread or task holds, whichever cache took it.
It imports nothing of the project.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import CoroutineType, FrameType, GeneratorType
from typing import Any

__all__ = [
    "LEADS",
    "HeldOwner",
    "Lead",
    "Leads",
    "Owner",
    "TaskOwner",
    "ThreadOwner",
    "leading_as",
    "task_owner",
    "thread_owner",
]

# Frames of these modules are the cache's own; the lead belongs to their caller.
_INTERNAL = frozenset(
    {
        __name__,
        "llmcache.coalesce.coalescer",
        "llmcache.tiers",
        "llmcache.layers",
        "llmcache.engine",
        "llmcache.langchain_adapter",
    }
)
# LangChain's BaseLLM looks a batch up in a helper that returns before the model
# call; its caller (generate, agenerate) calls the model and updates the batch.
_BATCH_MODULE = "langchain_core.language_models.llms"
_BATCH_HELPERS = frozenset({"get_prompts", "aget_prompts"})


class Owner:
    """A leader that gives no signal (an ``alookup`` outside a task): only a lease ends it."""

    polled = True  # followers re-check every ``poll`` seconds
    expires = True
    frame: FrameType | None = None
    batch = False

    @property
    def identity(self) -> Hashable | None:
        """The thread or task, as the process registry files its leads (None: not filed)."""
        return None

    def alive(self) -> bool:
        return True

    def same(self, other: Owner) -> bool:
        return False

    def led(self, release: Callable[[], None]) -> None:
        """A flight this owner now leads, and how to end it (only a HeldOwner keeps it)."""


class TaskOwner(Owner):
    polled = False  # its done callback releases the followers
    expires = False

    def __init__(self, task: asyncio.Task[Any], frame: FrameType | None, batch: bool) -> None:
        self.task = task
        self.frame = frame
        self.batch = batch
        # Whether the frame is the task's own coroutine: then the task's end is
        # the call's end, and nothing needs watching.
        self.watched = frame is not None and _top(task) is not frame

    @property
    def identity(self) -> Hashable:
        return self.task

    def alive(self) -> bool:
        # A loop closed under a pending task never runs its done callbacks.
        return not self.task.done() and not self.task.get_loop().is_closed()

    def returned(self) -> bool:
        """Whether the looking coroutine has returned (run in the task's loop, task suspended)."""
        if self.task.done():
            return False  # the done callback's
        awaited: Any = self.task.get_coro()
        while awaited is not None and not _leaf(awaited):
            if isinstance(awaited, CoroutineType):
                frame, awaited = awaited.cr_frame, awaited.cr_await
            elif isinstance(awaited, GeneratorType):
                frame, awaited = awaited.gi_frame, awaited.gi_yieldfrom
            else:
                return False  # an awaitable we cannot see into: it may hold the frame
            if frame is self.frame:
                return False
        # The whole chain seen, down to what the task waits on: the frame is not in it.
        return True

    def same(self, other: Owner) -> bool:
        other = other.base if isinstance(other, HeldOwner) else other
        return isinstance(other, TaskOwner) and other.task is self.task


class ThreadOwner(Owner):
    expires = False

    def __init__(self, ident: int, frame: FrameType | None, batch: bool, loop: Any) -> None:
        self.ident = ident
        self.frame = frame  # the caller's frame: lookup, model and update all happen in it
        self.batch = batch
        self.loop = loop  # the event loop running in this thread, if any

    @property
    def identity(self) -> Hashable:
        return ("thread", self.ident)

    def alive(self) -> bool:
        return self.frame is not None and _running(self.frame)

    def same(self, other: Owner) -> bool:
        other = other.base if isinstance(other, HeldOwner) else other
        return isinstance(other, ThreadOwner) and other.ident == self.ident


class HeldOwner(Owner):
    """A lead held by a call that outlives the frame that looked up: a stream.

    A generator is off its thread's stack (and out of its task's await chain)
    whenever it has yielded a chunk, so a frame's lead would end at the first
    chunk and followers would call the model again. This lead ends only when
    its call says so (:meth:`end`: it stored its answer, failed, or was closed);
    it is not filed with the process's leads, so no other lookup ends it.
    ``base`` is the thread's or task's own owner: the same thread or task
    asking again is the same caller (it never waits on itself).
    """

    polled = True  # followers re-check every ``poll`` seconds whether it ended
    expires = False

    def __init__(self, base: Owner) -> None:
        self.base = base
        self.ended = False
        self._lock = threading.Lock()
        self._releases: list[Callable[[], None]] = []

    @classmethod
    def here(cls, *, in_task: bool) -> HeldOwner:
        """A held lead for a call made from this thread (or, ``in_task``, this task).

        Its base holds no frame: nothing here ends by a frame, and a frame
        kept would keep its locals alive as long as the stream.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        task = asyncio.current_task() if in_task and loop is not None else None
        if task is not None:
            return cls(TaskOwner(task, None, False))
        return cls(Owner() if in_task else ThreadOwner(threading.get_ident(), None, False, loop))

    def alive(self) -> bool:
        return not self.ended

    def same(self, other: Owner) -> bool:
        return self.base.same(other.base if isinstance(other, HeldOwner) else other)

    def led(self, release: Callable[[], None]) -> None:
        with self._lock:
            if not self.ended:
                self._releases.append(release)
                return
        release()  # it ended while the flight was being made

    def end(self) -> None:
        """The call is over: the flights it still leads end now (their followers race to lead).

        A flight it stored an answer for ended already; ending it again does nothing.
        """
        with self._lock:
            self.ended = True
            releases, self._releases = self._releases, []
        for release in releases:
            release()


#: The owner lookups in a ``leading_as`` block lead as (None: their thread's or task's).
_HELD: ContextVar[HeldOwner | None] = ContextVar("llmcache_held_owner", default=None)


@contextmanager
def leading_as(owner: HeldOwner) -> Iterator[None]:
    """Lookups made in this block that lead a key lead it as ``owner`` (a stream's lookup).

    Hold no yield to a consumer inside the block: a context variable set in a
    generator is seen by whoever iterates it until it is reset.
    """
    token = _HELD.set(owner)
    try:
        yield
    finally:
        _HELD.reset(token)


def _caller(top: FrameType | None = None) -> tuple[FrameType | None, bool]:
    """The frame that owns this lookup's call, and whether it looks a batch up.

    ``top``: the task's own coroutine; a task made of a lookup alone is the call.
    """
    frame: FrameType | None = sys._getframe(1)
    batch = False
    while frame is not None and frame is not top:
        module = frame.f_globals.get("__name__")
        if module in _INTERNAL or _delegates_a_lookup(frame):
            frame = frame.f_back
        elif module == _BATCH_MODULE and frame.f_code.co_name in _BATCH_HELPERS:
            batch = True
            frame = frame.f_back
        else:
            break
    return frame, batch


# A cache that wraps ours (to observe, log or route lookups) passes a lookup on
# from a method of the same name and returns before the model is called: the
# call is its caller's, as it is LangChain's when no wrapper stands between.
_LOOKUP_NAMES = frozenset({"lookup", "alookup"})


def _delegates_a_lookup(frame: FrameType) -> bool:
    return frame.f_code.co_name in _LOOKUP_NAMES and "self" in frame.f_locals


def thread_owner() -> Owner:
    held = _HELD.get()
    if held is not None:
        return held
    frame, batch = _caller()
    try:
        loop: Any = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    return ThreadOwner(threading.get_ident(), frame, batch, loop)


def task_owner() -> Owner:
    held = _HELD.get()
    if held is not None:
        return held
    task = asyncio.current_task()
    if task is None:
        return Owner()
    frame, batch = _caller(_top(task))
    return TaskOwner(task, frame, batch)


# -- the process's leads ---------------------------------------------------------------


@dataclass(eq=False)
class Lead:
    """One key led by one call, filed under its thread or task."""

    key: str
    owner: Owner
    home: object  # the coalescer whose flight it is
    gone: Callable[[], bool]  # whether its call is over (the coalescer's rule)
    release: Callable[[], None]  # end it, its lease let go through the keeper
    end: Callable[[], Any]  # end it now, returning the lease for the caller to let go


class Leads:
    """Every lead in this process, by thread or task; and the watcher of thread leads."""

    def __init__(self, poll: float = 0.02) -> None:
        self.poll = poll
        self._lock = threading.Lock()
        self._by_owner: dict[Hashable, dict[object, Lead]] = {}
        self._by_token: dict[object, Lead] = {}
        self._watcher: threading.Thread | None = None
        self._checking: set[asyncio.AbstractEventLoop] = set()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._by_token)

    def add(self, token: object, lead: Lead) -> None:
        identity = lead.owner.identity
        if identity is None:
            return
        with self._lock:
            self._forked()
            self._by_owner.setdefault(identity, {})[token] = lead
            self._by_token[token] = lead
            start = self._watcher is None and _watched(lead.owner)
            if start:
                self._watcher = threading.Thread(
                    target=self._watch, name="llmcache-leaders", daemon=True
                )
        if start and self._watcher is not None:
            self._watcher.start()

    def remove(self, token: object) -> None:
        with self._lock:
            lead = self._by_token.pop(token, None)
            if lead is None:
                return
            identity = lead.owner.identity
            held = self._by_owner.get(identity)
            if held is not None:
                held.pop(token, None)
                if not held:
                    del self._by_owner[identity]

    def ended_by(self, owner: Owner, key: str, home: object) -> list[Lead]:
        """The leads of ``owner``'s thread or task that its new lookup of ``key`` ends.

        Kept: the same key in the same cache (the coalescer treats that as a
        retry of the same flight), and leads of frames still below this one on
        the stack (a call nested in another's model call), or of this very
        frame when it looks a LangChain batch up.
        """
        identity = owner.identity
        if identity is None:
            return []
        with self._lock:
            held = list(self._by_owner.get(identity, {}).values())
        if not held:
            return []
        stack: set[int] = set()
        frame = owner.frame
        while frame is not None:
            stack.add(id(frame))
            frame = frame.f_back
        ended = []
        for lead in held:
            if lead.key == key:
                if lead.home is not home:
                    ended.append(lead)  # another cache's lead of this key: asking again ends it
            elif lead.owner.frame is owner.frame:
                if not owner.batch:
                    ended.append(lead)  # this frame looked once and moved on
            elif id(lead.owner.frame) not in stack:
                ended.append(lead)  # its frame has returned
        return ended

    # -- the watcher ----------------------------------------------------------------

    def _forked(self) -> None:
        # A forked child inherits the parent's leads but not its threads: they are not its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._by_owner.clear()
            self._by_token.clear()
            self._watcher = None
            self._checking.clear()

    def _watch(self) -> None:
        while True:
            with self._lock:
                leads = [lead for lead in self._by_token.values() if _watched(lead.owner)]
                if not leads:
                    self._watcher = None
                    return
            loops: dict[asyncio.AbstractEventLoop, list[Lead]] = {}
            for lead in leads:
                owner = lead.owner
                if isinstance(owner, TaskOwner):
                    loops.setdefault(owner.task.get_loop(), []).append(lead)
                elif not owner.alive() if isinstance(owner, ThreadOwner) else lead.gone():
                    lead.release()
            for loop, task_leads in loops.items():
                self._check_in(loop, task_leads)
            time.sleep(self.poll)

    def _check_in(self, loop: asyncio.AbstractEventLoop, leads: list[Lead]) -> None:
        """Check task leads in their loop (one check pending per loop, however slow it is)."""
        if loop.is_closed():
            for lead in leads:
                lead.release()
            return
        with self._lock:
            if loop in self._checking:
                return
            self._checking.add(loop)
        try:
            loop.call_soon_threadsafe(self._check_tasks, loop, leads)
        except RuntimeError:  # closed in between
            with self._lock:
                self._checking.discard(loop)

    def _check_tasks(self, loop: asyncio.AbstractEventLoop, leads: list[Lead]) -> None:
        with self._lock:
            self._checking.discard(loop)
        for lead in leads:
            owner = lead.owner
            if isinstance(owner, TaskOwner) and owner.returned():
                lead.release()


def _top(task: asyncio.Task[Any]) -> FrameType | None:
    """The frame of the task's own coroutine (None for other awaitables)."""
    frame: FrameType | None = getattr(task.get_coro(), "cr_frame", None)
    return frame


def _leaf(awaited: object) -> bool:
    """A future, or the iterator C futures hand to ``await``: nothing runs inside it."""
    return isinstance(awaited, asyncio.Future) or type(awaited).__name__ == "FutureIter"


# Code whose frame belongs to a generator or coroutine object: clear() would close it.
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _running(frame: FrameType) -> bool:
    """Whether ``frame`` is still running (on some thread's stack), from the frame alone.

    Walking another thread's stack (``sys._current_frames()`` then ``f_back``)
    reads frames that thread may be pushing or popping at that moment: on
    CPython 3.11 that has crashed processes (gh-111363; profilers that sample
    stacks this way, sentry-python and dd-trace-py, hit the same segfaults),
    and crashed this test suite once. ``clear()`` reads only the frame's own
    state: a running frame refuses it (RuntimeError), and a returned one is
    cleared, which drops the locals it still held (its code and line stay for
    tracebacks). A generator's or coroutine's frame is never cleared (that
    would close it): unknown, so running; its followers' wait bound still holds.
    """
    if frame.f_code.co_flags & _SUSPENDABLE:
        return True
    try:
        frame.clear()
    except RuntimeError:
        return True
    return False


def _watched(owner: Owner) -> bool:
    """Leads that only polling can end: a thread's, an inner coroutine's, one with no signal."""
    return owner.polled or (isinstance(owner, TaskOwner) and owner.watched)


#: The process's registry: every cache files its leads here.
LEADS = Leads()
