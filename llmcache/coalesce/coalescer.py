"""In-flight coalescing: N identical concurrent misses make one upstream call.

The first lookup that misses a key *leads* it: it goes on to call the model.
Lookups of the same key while that call is in flight *follow*: they wait for
the leader's ``update`` and return its value as a hit (counted "coalesced").
All of it happens inside ``BaseCache``: a miss is where a call starts, its
update is where it ends. The registry is keyed by storage key.

A leader that never updates must not strand its followers, nor anyone else.
Who leads, and when that is over, is ``llmcache.coalesce.leaders``: a lead belongs to a
call (its thread or task, and the frame that looked up), filed in one registry
per process. It ends at the update; at the task's end (a done callback); within
``poll`` (20 ms) of the frame leaving its thread's stack or its task's await
chain (raised, cancelled, returned without an update: a watcher thread sees
it); or when the same thread or task looks up again - the same key through any
cache of the process (it never waits on itself), or another key from the same
frame (code that only looks holds one lead at a time). Ended by a new lookup,
the earlier lead's lease is let go before the new one is asked for. Last
resort: a leader with no signal at all (an ``alookup`` outside any task)
expires after ``lease`` seconds; no follower waits longer than its bound
(``wait``: seconds, or a function of the call), then it is a plain miss.

Released followers race to lead; the registry's lock lets exactly one win.

Dependencies: a caller follows a leader only if both missed at the same
dependency versions (their snapshots are equal), so the leader's answer is
exactly as fresh as the follower's own call would have been. If a dependency is
invalidated while the leader is in flight, its answer is stored stale (it
records the leader's snapshot) and is still handed to the followers that had
joined; a caller that misses after the invalidation does not join.

Across processes, with a Redis L2, this process's leader also takes a lease
in Redis, or waits for the process that holds it: ``coalesce/redis_leases.py``,
which the engine attaches (this module never imports it). What followers wait
on, a value set once from any thread or loop, is ``coalesce/outcome.py``.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol

from llmcache.coalesce.leaders import (
    LEADS,
    HeldOwner,
    Lead,
    Owner,
    TaskOwner,
    ThreadOwner,
    task_owner,
    thread_owner,
)
from llmcache.coalesce.outcome import GIVE_UP, RETRY, TIMEOUT, Outcome, Signal
from llmcache.errors import ConfigurationError
from llmcache.layers import Layers
from llmcache.serialization import Record
from llmcache.stats import Counters
from llmcache.tiers import Flow, Hit

__all__ = [
    "COALESCED",
    "Coalescer",
    "Flight",
    "Joined",
    "Outcome",
    "RemoteLeases",
    "Wait",
    "WaitBound",
]

#: The tier named by a hit that a leader handed over in this process.
COALESCED: Final = "coalesced"
#: Seconds a follower may wait, or a function of ``(prompt, llm_string)`` giving them.
WaitBound = float | Callable[[str, str], float]


def _blocks_its_leader(follower: Owner, leader: Owner) -> bool:
    """A blocking wait in the thread of the leader's own event loop would freeze the leader."""
    follower = follower.base if isinstance(follower, HeldOwner) else follower
    leader = leader.base if isinstance(leader, HeldOwner) else leader
    return (
        isinstance(follower, ThreadOwner)
        and follower.loop is not None
        and isinstance(leader, TaskOwner)
        and leader.task.get_loop() is follower.loop
    )


@dataclass(eq=False)
class Flight:
    """One key's call in flight in this process: its leader, and what its followers await."""

    key: str
    snapshot: Mapping[str, int]
    owner: Owner
    started: float
    outcome: Outcome = field(default_factory=Outcome)
    followers: int = 0
    token: str | None = None  # the Redis lease this process holds for the key


class RemoteLeases(Protocol):
    """Coalescing's reach across processes (``coalesce.redis_leases``), as the coalescer uses it.

    A protocol, so that this module never imports its Redis side: the engine
    attaches one when the widest tier is a Redis server.
    """

    counters: Counters
    tick: Callable[[], list[tuple[str, str]]] | None

    def attach(self, layers: Layers) -> None: ...
    def lead_flow(
        self,
        coalescer: Coalescer,
        flight: Flight,
        deadline: float,
        reread: Callable[[], Flow[tuple[Hit | None, Any]]],
    ) -> Flow[Hit | None]: ...
    def finish_flow(self, index: int, key: str, token: str) -> Flow[None]: ...
    def finish(self, key: str, token: str) -> None: ...
    async def afinish(self, key: str, token: str) -> None: ...
    def release_later(self, key: str, token: str) -> None: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


# -- the operations (waiting is I/O-like: the drivers block or await) -----------------

#: What a join answers: the leases of the caller's own leads it ended (for the caller to
#: let go of before asking for one), and to lead (the flight, True), follow (the flight,
#: False), a value handed over just now (a Hit), or neither (None).
Joined = tuple[list[tuple["RemoteLeases", str, str]], "tuple[Flight, bool] | Hit | None"]


@dataclass(frozen=True, slots=True)
class Join:
    """Lead the key, follow its leader, or neither (a plain miss: None)."""

    index: int
    key: str
    snapshot: Mapping[str, int]
    mark: int
    what = "join"

    def run(self, target: Coalescer) -> Joined:
        return target.join(self.key, self.snapshot, self.mark, thread_owner())

    async def arun(self, target: Coalescer) -> Joined:
        return target.join(self.key, self.snapshot, self.mark, task_owner())


@dataclass(frozen=True, slots=True)
class Wait:
    index: int
    outcome: Outcome
    timeout: float
    what = "wait"

    def run(self, target: Coalescer) -> Any:
        return self.outcome.wait(self.timeout)

    def arun(self, target: Coalescer) -> Any:
        return self.outcome.await_(self.timeout)


# -- the registry ---------------------------------------------------------------------


class Coalescer:
    """In-flight keys of one cache, their leaders and followers; a target of the layers."""

    name = "coalesce"

    def __init__(
        self,
        *,
        wait: WaitBound = 30.0,
        lease: float = 10.0,
        poll: float = 0.02,
        remote: RemoteLeases | None = None,
        clock: Callable[[], float] = time.monotonic,
        recent: int = 256,
    ) -> None:
        if not callable(wait) and (not isinstance(wait, (int, float)) or wait < 0):
            raise ConfigurationError(f"coalesce_wait is seconds >= 0 or a function: {wait!r}")
        if lease <= 0 or poll <= 0:
            raise ConfigurationError("coalesce_lease and poll must be positive")
        self.wait = wait
        self.lease = lease
        self.poll = poll
        self.remote = remote
        self.index = -1
        self.counters = Counters(self.name)
        self.clock = clock
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        # Values handed over lately, for a caller that missed just before the
        # leader's update and joins just after it: (completion number, snapshot, record).
        self._recent: OrderedDict[str, tuple[int, Mapping[str, int], Record]] = OrderedDict()
        self._recent_max = recent
        #: Values handed over so far. A lookup notes it as it starts: a value
        #: completed after that may be handed to it even once its flight is over.
        self.completed = 0
        self._sweep_at = 64
        if remote is not None:
            remote.tick = self._renewals
            # A process that ends while it leads keys (a lookup never followed
            # by its update) releases their leases on the way out, instead of
            # making other processes wait them out. Not in a forked child: the
            # flights it inherited are its parent's.
            atexit.register(_close_at_exit, weakref.ref(self), os.getpid())

    def attach(self, layers: Layers) -> None:
        self.index = layers.attach(self)
        if self.remote is not None:
            self.remote.attach(layers)

    def bound(self, prompt: str, llm_string: str) -> float:
        """How long a follower of this call may wait (0: do not coalesce it)."""
        if not callable(self.wait):
            return float(self.wait)
        try:
            return float(self.wait(prompt, llm_string))
        except Exception as exc:  # not knowing the bound, do not wait at all
            self.counters.failure("errors", "coalesce_wait", exc)
            return 0.0

    def followers(self) -> int:
        """How many callers joined the flights in the air (for tests and tools)."""
        return sum(flight.followers for flight in list(self._flights.values()))

    def in_flight(self) -> int:
        return len(self._flights)

    def counts(self) -> dict[str, int]:
        get = self.counters.get
        return {
            "coalesced": get("coalesced"),
            "coalesce_timeouts": get("timeouts"),
            "coalesce_released": get("released"),
        }

    # -- the flows: written once, driven by lookup and by alookup ------------------------

    def join_flow(
        self,
        key: str,
        snapshot: Mapping[str, int],
        mark: int,
        bound: float,
        reread: Callable[[], Flow[tuple[Hit | None, Any]]],
    ) -> Flow[Hit | None]:
        """After a miss: the leader's value as a hit, or None to go on and call the model."""
        if bound <= 0:
            return None
        deadline = self.clock() + bound
        while True:
            answer = yield Join(self.index, key, snapshot, mark)
            if answer is None:
                return None  # the join itself failed: a plain miss
            ended, joined = answer
            for leases, ended_key, token in ended:
                # Leads this call ended (its own earlier lookups) let go of their
                # leases before it asks for one: it never waits on its own.
                yield from leases.finish_flow(self.index, ended_key, token)
            if joined is None or isinstance(joined, Hit):
                return joined
            flight, leading = joined
            if leading:
                if self.remote is None:
                    return None
                return (yield from self.remote.lead_flow(self, flight, deadline, reread))
            outcome = yield from self._follow(flight, deadline)
            if isinstance(outcome, Record):
                self.counters.add("coalesced")
                return Hit(outcome, COALESCED, parsed=False)
            if outcome is not RETRY:
                return None  # out of time, nothing to hand over, or an error

    def _follow(self, flight: Flight, deadline: float) -> Flow[Any]:
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.counters.add("timeouts")
                return TIMEOUT
            if flight.owner.polled:
                remaining = min(remaining, self.poll)
            outcome = yield Wait(self.index, flight.outcome, remaining)
            if outcome is not TIMEOUT:
                return outcome
            self.check(flight)

    def finish_flow(
        self, key: str, payload: Any | None, versions: Mapping[str, int] | None
    ) -> Flow[None]:
        """At an update: hand the value to the key's followers (None: it could not be stored)."""
        record = None if payload is None else Record(payload, None, dict(versions or {}))
        flight = self.resolve(key, record)
        if flight is not None and flight.token is not None and self.remote is not None:
            yield from self.remote.finish_flow(self.index, key, flight.token)

    def abandon_flow(self, key: str) -> Flow[None]:
        """The leader's call ended with no answer: its followers race to lead again now.

        For a face that knows its call failed (a stream cut off half-way), so
        nobody waits for a lead that can no longer end with a value; its Redis
        lease is let go in this flow.
        """
        flight = self._flights.get(key)
        if flight is None:
            return
        held = self.abandon(flight)
        if held is not None:
            leases, lease_key, token = held
            yield from leases.finish_flow(self.index, lease_key, token)

    # -- registry operations (thread-safe, never blocking) -----------------------------

    def join(self, key: str, snapshot: Mapping[str, int], mark: int, owner: Owner) -> Joined:
        """Lead, follow, or neither; and the leases of the caller's own leads this ended."""
        ended = [lead.end() for lead in LEADS.ended_by(owner, key, self)]
        leases = [lease for lease in ended if lease is not None]
        return leases, self._join(key, snapshot, mark, owner)

    def _join(
        self, key: str, snapshot: Mapping[str, int], mark: int, owner: Owner
    ) -> tuple[Flight, bool] | Hit | None:
        made = False  # whether this join made a new flight
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None and flight.owner.same(owner):
                # It asks again, so its earlier attempt ended without an update: lead on.
                if flight.owner is owner:
                    return flight, True
                flight.owner = owner
                self._file(flight)
            else:
                if flight is not None and self._gone(flight):
                    self._release_locked(flight, RETRY)
                    flight = None
                if flight is not None:
                    if flight.snapshot != snapshot or _blocks_its_leader(owner, flight.owner):
                        return None
                    flight.followers += 1
                    return flight, False
                held = self._recent.get(key)
                if held is not None and held[0] > mark and held[1] == snapshot:
                    self.counters.add("coalesced")
                    return Hit(held[2], COALESCED, parsed=False)
                flight = self._flights[key] = Flight(key, snapshot, owner, self.clock())
                made = True
                self._file(flight)
                if len(self._flights) > self._sweep_at:
                    self._sweep_locked()
        # Outside the lock: a held owner that has ended releases the flight at once.
        if isinstance(owner, HeldOwner):
            owner.led(partial(self._release_led, flight, owner))
        elif made and isinstance(owner, TaskOwner):
            owner.task.add_done_callback(partial(self.release, flight, RETRY))
        return flight, True

    def _file(self, flight: Flight) -> None:
        """File the flight with the process's leads (under its thread or task)."""
        lead = Lead(
            flight.key,
            flight.owner,
            self,
            partial(self._gone, flight),
            partial(self.release, flight, RETRY),
            partial(self.abandon, flight),
        )
        LEADS.add(flight, lead)

    def check(self, flight: Flight) -> None:
        """Release the flight if its leader's call is over (polled by waiting followers)."""
        if self._flights.get(flight.key) is flight and self._gone(flight):
            self.release(flight, RETRY)

    def release(self, flight: Flight, signal: Signal = RETRY, *_: Any) -> None:
        """End the flight without a value (a no-op if it ended already); also a done callback."""
        with self._lock:
            self._release_locked(flight, signal)

    def _release_led(self, flight: Flight, owner: Owner) -> None:
        """A held lead's call ended: release its flight if it still leads it (not taken over)."""
        with self._lock:
            if flight.owner is owner:
                self._release_locked(flight, RETRY)

    def abandon(self, flight: Flight) -> tuple[RemoteLeases, str, str] | None:
        """End the flight, its leader asking for something else; its lease for the caller to end."""
        with self._lock:
            ended = self._release_locked(flight, RETRY, later=False)
        if not ended or flight.token is None or self.remote is None:
            return None  # ended already: whoever ended it lets go of the lease
        return self.remote, flight.key, flight.token

    def _gone(self, flight: Flight) -> bool:
        if flight.owner.expires:
            return self.clock() - flight.started >= self.lease
        return not flight.owner.alive()

    def _release_locked(self, flight: Flight, signal: Signal, *, later: bool = True) -> bool:
        if self._flights.get(flight.key) is not flight:
            return False
        del self._flights[flight.key]
        LEADS.remove(flight)
        self.counters.add("released")
        flight.outcome.set(signal)
        if later and flight.token is not None and self.remote is not None:
            # The keeper thread lets go at once (its queue wakes it): never in a loop.
            self.remote.release_later(flight.key, flight.token)
        return True

    def _sweep_locked(self) -> None:
        # Flights whose thread leader failed with nobody following linger until
        # looked at; sweeping when the registry doubles keeps that amortised O(1).
        for flight in list(self._flights.values()):
            if self._gone(flight):
                self._release_locked(flight, RETRY)
        self._sweep_at = 2 * len(self._flights) + 64

    def resolve(self, key: str, record: Record | None) -> Flight | None:
        """End the key's flight with a value (None: one that cannot be handed over)."""
        with self._lock:
            flight = self._flights.pop(key, None)
            if flight is None:
                return None
            LEADS.remove(flight)
            if record is not None:
                self.completed += 1
                self._recent[key] = (self.completed, flight.snapshot, record)
                self._recent.move_to_end(key)
                while len(self._recent) > self._recent_max:
                    self._recent.popitem(last=False)
        flight.outcome.set(GIVE_UP if record is None else record)
        return flight

    def _renewals(self) -> list[tuple[str, str]]:
        """For the lease keeper: the leases to extend; releases those whose leader is gone."""
        with self._lock:
            held = [flight for flight in self._flights.values() if flight.token is not None]
        renew = []
        for flight in held:
            if self._gone(flight):
                self.release(flight, RETRY)
            elif flight.token is not None:
                renew.append((flight.key, flight.token))
        return renew

    def close(self) -> None:
        with self._lock:
            for flight in list(self._flights.values()):
                self._release_locked(flight, GIVE_UP)
        if self.remote is not None:
            self.remote.close()

    async def aclose(self) -> None:
        if self.remote is not None:
            await self.remote.aclose()
        self.close()


def _close_at_exit(ref: weakref.ref[Coalescer], pid: int) -> None:
    coalescer = ref()
    if coalescer is not None and os.getpid() == pid:
        coalescer.close()
