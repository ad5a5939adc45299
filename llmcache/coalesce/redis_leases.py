"""Cross-process leases for in-flight coalescing, on a RedisTier's server.

In-process coalescing is ``coalesce/coalescer.py``; this is its reach across
processes, attached by the engine when the widest tier is a Redis server.

* A process's leader of a key (its first local miss) takes
  ``SET <prefix>~lease:<key> <token> NX PX <lease>`` before calling the model.
  While that leader is alive (its task not done, its frame still on its
  thread's stack) a keeper thread extends the lease every ``lease / 3``
  seconds, compare-and-PEXPIRE, so a long call never loses it; a process that
  dies stops extending, and its lease expires within ``lease`` seconds.
* When the leader has written its value - or failed - it deletes the lease if
  it still holds it and publishes the key on ``<prefix>~chan:coalesce``, in one
  script. A failure noticed outside a flow (a done callback, a frame the
  watcher of ``coalesce/leaders.py`` found gone within 20 ms) is handed to the
  keeper thread, which lets go at once (its queue wakes it), never in an event
  loop. A lead ended by its own thread's or task's next lookup is let go in
  that lookup's flow, before it asks for a lease of its own.
* A process whose SET NX fails has its local leader wait for that message (one
  subscriber thread per process wakes it), reading the tiers again every
  ``fallback`` seconds (0.25) whatever happens: a lost message, a subscriber
  still connecting, or a dead leader cost at most that, never a busy poll.
  What it finds it hands to its own followers. Each read that finds nothing
  tries the lease again, which is how an expired one is taken over.

Connections come from the tier (its settings, breakers and error wrapping);
nothing connects, and no thread starts, before the first lease.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmcache.backends.redis_batch import PerLoop
from llmcache.backends.redis_subscriber import subscribe_until
from llmcache.coalesce.coalescer import COALESCED, Flight, Wait
from llmcache.coalesce.outcome import NOTIFIED, Outcome
from llmcache.errors import TierError
from llmcache.layers import Layers
from llmcache.serialization import Record
from llmcache.stats import Counters
from llmcache.tiers import Flow, Get, Hit

if TYPE_CHECKING:
    from llmcache.backends.redis import RedisTier
    from llmcache.coalesce.coalescer import Coalescer

__all__ = ["RedisLeases"]

# Delete the lease only if it is still ours (it may have expired and been taken
# over), then tell everyone the key is settled either way.
_FINISH = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('publish', ARGV[2], ARGV[3])
return 1
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_STOP = ("", "")


@dataclass(eq=False)
class _LoopClient:
    """One event loop's async client, and on a cluster the lock that serialises it."""

    client: Any
    lock: asyncio.Lock | None

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take the key's lease: True, or False while another process holds it."""

    index: int  # the coalescer's: it counts these operations' failures
    leases: RedisLeases
    key: str
    token: str
    what = "lease"

    def run(self, target: Any) -> bool:
        return self.leases.acquire(self.key, self.token)

    def arun(self, target: Any) -> Any:
        return self.leases.aacquire(self.key, self.token)


@dataclass(frozen=True, slots=True)
class Finish:
    """Let go of the lease and tell the other processes (the value is written, or never will be)."""

    index: int
    leases: RedisLeases
    key: str
    token: str
    what = "lease release"

    def run(self, target: Any) -> None:
        self.leases.finish(self.key, self.token)

    def arun(self, target: Any) -> Any:
        return self.leases.afinish(self.key, self.token)


class RedisLeases:
    """Leases, their keeper thread and the subscriber thread of one cache."""

    def __init__(self, tier: RedisTier, *, lease: float = 10.0, fallback: float = 0.25) -> None:
        self._tier = tier
        self.lease = lease
        self.fallback = fallback
        self.channel = tier.channel("coalesce")
        #: Set by the coalescer: releases dead leaders' flights, returns the leases to extend.
        self.tick: Callable[[], list[tuple[str, str]]] | None = None
        self.connected = False  # whether the subscriber is listening (tests, tools)
        self.counters = Counters("coalesce:redis")
        self.tier_index = -1  # set by attach
        self._px = max(1, math.ceil(lease * 1000))
        self._lock = threading.Lock()
        self._interest: dict[str, set[Outcome]] = {}
        self._async_clients: PerLoop[_LoopClient] = PerLoop(self._new_loop_client)
        self._stop = threading.Event()
        self._jobs: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pid = 0

    def lease_key(self, key: str) -> str:
        return self._tier.internal_key("lease", key)

    def attach(self, layers: Layers) -> None:
        """Learn the index the layers address this tier by (for uncounted reads)."""
        self.tier_index = layers.tiers.index(self._tier)

    def _new_loop_client(self) -> _LoopClient:
        return _LoopClient(
            self._tier._new_async_client(), asyncio.Lock() if self._tier.cluster else None
        )

    # -- the flows (driven by lookup and alookup alike) ---------------------------------

    def lead_flow(
        self,
        coalescer: Coalescer,
        flight: Flight,
        deadline: float,
        reread: Callable[[], Flow[tuple[Hit | None, Any]]],
    ) -> Flow[Hit | None]:
        """Lead in this process; lead across processes too, or wait for the one that does."""
        if flight.token is not None:
            return None  # its leader asks again (a retry): this process holds the lease already
        key, token, index = flight.key, uuid.uuid4().hex, coalescer.index
        while True:
            if flight.outcome.done:  # a caller here updated the key meanwhile
                value = flight.outcome.value
                return Hit(value, COALESCED, parsed=False) if isinstance(value, Record) else None
            heard = self.listen(key)  # before the SET NX: no word can slip between them
            try:
                acquired = yield Acquire(index, self, key, token)
                if acquired is None:
                    return None  # Redis unreachable: lead here without a lease (fail-open)
                if not acquired:
                    remaining = deadline - coalescer.clock()
                    if remaining <= 0:
                        coalescer.counters.add("timeouts")
                        return None
                    yield Wait(index, heard, min(self.fallback, remaining))
            finally:
                self.forget(key, heard)
            if acquired:
                flight.token = token
                # Did one finish between this process's read and its lease? A plain
                # GET says, uncounted: the lookup's miss is already in the stats.
                if (yield Get(self.tier_index, key)) is None:
                    return None  # this process leads: call the model
            # Another process finished (or let go), or just did: read what is there.
            hit, _ = yield from reread()
            if hit is not None:
                coalescer.resolve(key, hit.record)
                if acquired:
                    yield Finish(index, self, key, token)
                coalescer.counters.add("coalesced")
                return Hit(hit.record, hit.tier, parsed=False)
            if acquired:
                return None  # there, but stale or unreadable: this process leads

    def finish_flow(self, index: int, key: str, token: str) -> Flow[None]:
        yield Finish(index, self, key, token)

    # -- interest in other processes' word ------------------------------------------

    def listen(self, key: str) -> Outcome:
        """An outcome set when a message about ``key`` arrives (register before the SET NX)."""
        self._start()
        heard = Outcome()
        with self._lock:
            self._interest.setdefault(key, set()).add(heard)
        return heard

    def forget(self, key: str, heard: Outcome) -> None:
        with self._lock:
            waiting = self._interest.get(key)
            if waiting is not None:
                waiting.discard(heard)
                if not waiting:
                    del self._interest[key]

    def _notify(self, key: str) -> None:
        with self._lock:
            waiting = self._interest.pop(key, None)
        for heard in waiting or ():
            heard.set(NOTIFIED)

    # -- the lease: sync and async ------------------------------------------------------
    #
    # Lease traffic reads the tier's circuit breakers (a server known to be down is
    # not asked, nor for a lease one whose last round trip failed) but never moves
    # them: the tier's own read that precedes every lease keeps them accurate, and a
    # failure of lease traffic alone must not shut the cache's reads and writes out.

    def acquire(self, key: str, token: str) -> bool:
        self._start()
        rkey = self.lease_key(key)
        return bool(self._execute(rkey, "lease", "set", rkey, token, nx=True, px=self._px))

    async def aacquire(self, key: str, token: str) -> bool:
        self._start()
        rkey = self.lease_key(key)
        return bool(await self._aexecute(rkey, "lease", "set", rkey, token, nx=True, px=self._px))

    def finish(self, key: str, token: str) -> None:
        rkey = self.lease_key(key)
        self._execute(rkey, "lease release", "eval", _FINISH, 1, rkey, token, self.channel, key)

    async def afinish(self, key: str, token: str) -> None:
        rkey = self.lease_key(key)
        await self._aexecute(rkey, "lease release", "eval", _FINISH, 1, rkey, token,
                             self.channel, key)  # fmt: skip

    def _refuse_if_down(self, rkey: str, what: str) -> None:
        breaker = self._tier._breaker(self._tier._node(rkey))
        if breaker.state == "open":
            raise TierError(f"{self._tier.name}: circuit breaker open, no {what} asked")
        if what == "lease" and breaker.failing:
            # The lookup's read there just failed: a lease after it would wait out a
            # timeout of its own, serially (issue 14). A release is still tried.
            raise TierError(f"{self._tier.name}: last read failed, no lease asked")

    def _execute(self, rkey: str, what: str, command: str, *args: Any, **kwargs: Any) -> Any:
        self._refuse_if_down(rkey, what)
        try:
            return getattr(self._tier._client(), command)(*args, **kwargs)
        except Exception as exc:
            raise TierError(f"{self._tier.name}: {what} failed ({exc!r})") from exc

    async def _aexecute(self, rkey: str, what: str, command: str, *args: Any, **kwargs: Any) -> Any:
        self._refuse_if_down(rkey, what)
        try:
            loop_client = await self._async_clients.get()
            client, lock = loop_client.client, loop_client.lock
            if lock is None:
                return await getattr(client, command)(*args, **kwargs)
            # redis-py's async cluster client loses connections under concurrent
            # direct commands on a fresh client (one failure re-maps the cluster and
            # closes the others' connections): one lease command at a time per loop.
            async with lock:
                return await getattr(client, command)(*args, **kwargs)
        except Exception as exc:
            raise TierError(f"{self._tier.name}: {what} failed ({exc!r})") from exc

    def release_later(self, key: str, token: str) -> None:
        """Finish from the keeper thread (for callers that must not block, e.g. in a loop)."""
        self._start()
        self._jobs.put((key, token))

    # -- threads --------------------------------------------------------------------------

    def _start(self) -> None:
        if self._pid == os.getpid() or self._stop.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # First use, or first use after a fork (threads do not survive one).
            self._jobs = queue.SimpleQueue()
            self._threads = [
                threading.Thread(target=target, name=name, daemon=True)
                for target, name in ((self._keep, "llmcache-leases"),
                                     (self._listen, "llmcache-coalesce"))
            ]  # fmt: skip
            for thread in self._threads:
                thread.start()
            self._pid = os.getpid()

    def _keep(self) -> None:
        """Run queued releases at once; extend live leases every ``lease / 3`` seconds."""
        every = self.lease / 3
        due = time.monotonic() + every
        # Until the _STOP job, not the stop flag: close() queues the releases
        # of whatever it still leads before _STOP, and each must reach Redis.
        while True:
            try:
                wait = max(0.0, due - time.monotonic())
                job: tuple[str, str] | None = self._jobs.get(timeout=wait)
            except queue.Empty:
                job = None
            if job == _STOP:
                return
            try:
                if job is not None:
                    self.finish(*job)
                if time.monotonic() >= due:
                    due = time.monotonic() + every
                    self._renew(self.tick() if self.tick is not None else [])
            except Exception as exc:  # the lease expires on its own; nothing else to do
                self.counters.failure("errors", "lease keeper", exc)

    def _renew(self, held: list[tuple[str, str]]) -> None:
        if not held:
            return
        client = self._tier._client()  # failures are logged by the keeper; no breaker moves
        if self._tier.cluster:
            for key, token in held:
                client.eval(_RENEW, 1, self.lease_key(key), token, self._px)
        else:
            pipe = client.pipeline(transaction=False)
            for key, token in held:
                pipe.eval(_RENEW, 1, self.lease_key(key), token, self._px)
            pipe.execute()

    def _listen(self) -> None:
        # While it is down, followers read the tiers every ``fallback`` seconds.
        subscribe_until(self._tier, self.channel, self._stop, self._serve)

    def _serve(self, pubsub: Any) -> None:
        try:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=self.fallback)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    self.connected = True
                elif message.get("type") == "message":
                    data = message["data"]
                    self._notify(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            self.connected = False

    def close(self) -> None:
        """Stop both threads; wait only for the keeper (its queue wakes it at once).

        The subscriber notices the stop within ``fallback`` seconds and closes its
        own connection: closing never blocks a caller, or its event loop, that long.
        """
        self._stop.set()
        self._jobs.put(_STOP)
        keeper = self._threads[0] if self._threads else None
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=2)
        self._async_clients.close_all()

    async def aclose(self) -> None:
        await self._async_clients.aclose_current()
        self.close()
