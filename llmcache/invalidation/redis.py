"""RedisVersions: dependency versions shared by every host, kept current by pub/sub.

Each (namespace, name) has a version key ``<prefix>~v:<namespace>:<name>``
(its own slot on a cluster, so every command on it is single-key) holding a
random value (:func:`llmcache.invalidation.new_version`). A read that finds no
key makes one, atomically (a script: GET, else SET a new value), so a key that
was evicted, deleted, or lost in a restart or a failover comes back with a
value no entry carries: losing a version costs misses, never revives an entry.
``bump`` writes new values and publishes their names on
``<prefix>~chan:versions`` in the same round trip (a pipeline; on a cluster,
one SET per slot and then the PUBLISH).

When the server has replicas, ``bump`` also waits (``WAIT 1``, at most
``replica_wait`` seconds, and at most half the tier's socket timeout) until
one of them has the new values, so a failover
to that replica keeps the invalidation. What is not guaranteed: a failover to
a replica that had not acknowledged it (the wait timed out, counted in
``unacknowledged`` and logged), and clusters (a bump is not followed by a
WAIT there). Even then a lost bump never revives an entry written *before*
the version it replaced was made; it may serve the entries that bump was
meant to retire.

Every store keeps a local copy of the versions it has read, and a listener
thread drops the names published by every bump from it, so a lookup that checks
dependencies costs a dictionary read, not a round trip. The copy is trusted
only while the listener is connected:

* it is dropped whenever the listener (re)subscribes or loses its connection,
  and until the listener is back every read goes to Redis (a server that
  restarts empty therefore drops every process's copy: its versions are made
  again, with new values);
* a connection that dies quietly (a stopped or partitioned server) is found by
  a PING the listener sends every ``ping_interval`` seconds: no PONG within
  the next interval means disconnected (the listener polls four times an
  interval). So another process stops serving an invalidated entry within
  the pub/sub delivery time while connected (about a millisecond on
  loopback), and within ``2.5 * ping_interval`` (1.25 s by default) of a
  connection that died without a word.

The process that bumps applies its own bump before ``bump`` returns.
``clear`` drops a namespace's version keys and ``retain`` (for ``gc``) those
no entry needs; both publish, so every process drops its copies of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from llmcache.backends.redis_batch import PerLoop
from llmcache.backends.redis_subscriber import subscribe_until
from llmcache.invalidation.versions import new_version

if TYPE_CHECKING:
    from llmcache.backends.redis import RedisTier

__all__ = ["RedisVersions"]

logger = logging.getLogger("llmcache")

# Read the versions, making the missing ones: KEYS are the version keys, ARGV
# the new values to give those that do not exist. Atomic, so two processes
# making the same version at once agree on one value.
_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value then
    value = ARGV[i]
    redis.call('SET', key, value)
  end
  out[i] = value
end
return out
"""
_CHUNK = 500  # keys per UNLINK


@dataclass(eq=False)
class _LoopState:
    """An async client and the lock that makes its fetches single-flight, per event loop."""

    client: Any
    fetching: asyncio.Lock

    async def aclose(self) -> None:
        await self.client.aclose()


class RedisVersions:
    """Versions in Redis, cached locally while a pub/sub listener keeps them current."""

    name = "versions:redis"

    def __init__(
        self,
        tier: RedisTier,
        *,
        ping_interval: float = 0.5,
        replica_wait: float = 0.1,
        replica_check: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tier = tier
        self.prefix = tier.prefix
        self.channel = tier.channel("versions")
        self.ping_interval = ping_interval
        self.replica_wait = replica_wait
        self.replica_check = replica_check
        self._clock = clock
        self._replicas: tuple[float, int] | None = None  # (checked at, connected replicas)
        #: Bumps no replica acknowledged within ``replica_wait`` (a failover could lose them).
        self.unacknowledged = 0
        self._lock = threading.Lock()
        self._local: dict[tuple[str, str], int] = {}
        self._generation = 0  # advanced by every applied message and every reset
        self._connected = False
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._fetching = threading.Lock()
        self._loops: PerLoop[_LoopState] = PerLoop(self._new_loop_state)

    def _new_loop_state(self) -> _LoopState:
        return _LoopState(self._tier._new_async_client(), asyncio.Lock())

    # -- keys -------------------------------------------------------------------

    def _key(self, namespace: str, name: str) -> str:
        return self._tier.internal_key("v", f"{namespace}:{name}")

    def _match(self, namespace: str) -> str:
        return self._tier.internal_match("v", f"{namespace}:")

    @property
    def connected(self) -> bool:
        """Whether the listener is subscribed (and so the local copy is trusted)."""
        return self._connected

    # -- reads ------------------------------------------------------------------

    def generation(self) -> int | None:
        # Only while connected does every bump reach us; otherwise we cannot say.
        return self._generation if self._connected else None

    def peek(self, namespace: str, names: Collection[str]) -> dict[str, int] | None:
        found, missing, _ = self._cached(namespace, names)
        return None if missing else found

    def _cached(
        self, namespace: str, names: Collection[str]
    ) -> tuple[dict[str, int], list[str], int]:
        """Versions known locally, names still to fetch, and the generation they were read at."""
        self._ensure_listener()
        with self._lock:
            if not self._connected:
                return {}, list(names), self._generation
            local = self._local
            found = {n: v for n in names if (v := local.get((namespace, n))) is not None}
            return found, [n for n in names if n not in found], self._generation

    def _remember(self, namespace: str, fetched: dict[str, int], generation: int) -> None:
        # A message applied while we were fetching may be newer than what we
        # fetched: then keep nothing, the next read fetches again.
        with self._lock:
            if self._connected and self._generation == generation:
                for name, version in fetched.items():
                    self._local[(namespace, name)] = version

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        found, missing, generation = self._cached(namespace, names)
        if missing:
            with self._fetching:  # one fetch at a time: the others then find it cached
                found, missing, generation = self._cached(namespace, names)
                if missing:
                    found.update(self._fetch(namespace, missing, generation))
        return found

    def _fetch(self, namespace: str, missing: list[str], generation: int) -> dict[str, int]:
        client = self._tier._client()
        keys = [self._key(namespace, name) for name in missing]
        made = [new_version() for _ in keys]
        with self._tier._guard(self._tier._seed, "read versions"):
            if self._tier.cluster:
                values = [client.eval(_READ, 1, key, value)[0] for key, value in zip(keys, made)]
            else:
                values = client.eval(_READ, len(keys), *keys, *made)
        fetched = {name: int(value) for name, value in zip(missing, values)}
        self._remember(namespace, fetched, generation)
        return fetched

    async def acurrent(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        found, missing, generation = self._cached(namespace, names)
        if not missing:
            return found
        state = await self._loops.get()
        async with state.fetching:  # one fetch at a time per loop: the others then find it cached
            found, missing, generation = self._cached(namespace, names)
            if missing:
                found.update(await self._afetch(state.client, namespace, missing, generation))
        return found

    async def _afetch(
        self, client: Any, namespace: str, missing: list[str], generation: int
    ) -> dict[str, int]:
        keys = [self._key(namespace, name) for name in missing]
        made = [new_version() for _ in keys]
        breaker = self._tier._breaker(self._tier._seed)
        breaker.check()  # a server known to be down costs nothing
        try:
            if self._tier.cluster:
                values = [
                    (await client.eval(_READ, 1, key, value))[0] for key, value in zip(keys, made)
                ]
            else:
                values = await client.eval(_READ, len(keys), *keys, *made)
        except Exception as exc:
            raise self._tier._failed(breaker, "read versions", exc) from exc
        breaker.success()
        fetched = {name: int(value) for name, value in zip(missing, values)}
        self._remember(namespace, fetched, generation)
        return fetched

    # -- bumps ------------------------------------------------------------------

    def _message(self, namespace: str, names: list[str] | None) -> str:
        # Names only, no versions: the message can then ride in the same
        # pipeline as the writes, and a receiver simply forgets its copies
        # (of the whole namespace when names is None: a clear).
        document: dict[str, object] = {"ns": namespace}
        document.update({"all": True} if names is None else {"names": names})
        return json.dumps(document, separators=(",", ":"))

    def _replicas_known(self) -> int | None:
        """Connected replicas as last counted, or None when it is time to count again."""
        known = self._replicas
        if known is None or self._clock() - known[0] >= self.replica_check:
            return None
        return known[1]

    def _count_replicas(self, role: Any) -> int:
        # ROLE on a primary: ["master", offset, [[host, port, offset], ...]];
        # None when the server refused ROLE (an ACL): then no WAIT, as before.
        kind = "" if role is None else role[0]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        count = len(role[2]) if kind == "master" else 0
        self._replicas = (self._clock(), count)
        return count

    def _wait_ms(self, replicas: int) -> int:
        if not replicas or self.replica_wait <= 0:
            return 0
        # Within the socket timeout, or the wait itself would fail the bump.
        seconds = min(self.replica_wait, self._tier.socket_timeout / 2)
        return max(1, int(seconds * 1000))

    def _acknowledged(self, acks: Any, names: list[str]) -> None:
        if int(acks) < 1:
            self.unacknowledged += 1
            logger.warning(
                "llmcache: no replica acknowledged the invalidation of %s within %.3f s;"
                " a failover before it replicates could lose it",
                ", ".join(repr(name[:80]) for name in names[:5]),
                self.replica_wait,
            )

    def bump(self, namespace: str, names: Collection[str]) -> None:
        versions = {name: new_version() for name in names}
        client = self._tier._client()
        message = self._message(namespace, list(versions))
        if self._tier.cluster:  # one key per slot: SET each, then publish (no WAIT: see above)
            for name, version in versions.items():
                client.set(self._key(namespace, name), version)
            client.publish(self.channel, message)
        else:  # one round trip (and a second, once per replica_check, to count replicas)
            replicas = self._replicas_known()
            if replicas is None:
                try:
                    role = client.execute_command("ROLE")
                except ResponseError:
                    role = None
                replicas = self._count_replicas(role)
            wait_ms = self._wait_ms(replicas)
            pipe = client.pipeline(transaction=False)
            for name, version in versions.items():
                pipe.set(self._key(namespace, name), version)
            pipe.publish(self.channel, message)
            if wait_ms:  # WAIT counts this connection's writes: same pipeline, same connection
                pipe.execute_command("WAIT", 1, wait_ms)
            replies = pipe.execute()
            if wait_ms:
                self._acknowledged(replies[-1], list(versions))
        self._apply(namespace, versions)

    async def abump(self, namespace: str, names: Collection[str]) -> None:
        versions = {name: new_version() for name in names}
        client = (await self._loops.get()).client
        message = self._message(namespace, list(versions))
        if self._tier.cluster:
            for name, version in versions.items():
                await client.set(self._key(namespace, name), version)
            await client.publish(self.channel, message)
        else:
            replicas = self._replicas_known()
            if replicas is None:
                try:
                    role = await client.execute_command("ROLE")
                except ResponseError:
                    role = None
                replicas = self._count_replicas(role)
            wait_ms = self._wait_ms(replicas)
            pipe = client.pipeline(transaction=False)
            for name, version in versions.items():
                pipe.set(self._key(namespace, name), version)
            pipe.publish(self.channel, message)
            if wait_ms:
                pipe.execute_command("WAIT", 1, wait_ms)
            replies = await pipe.execute()
            if wait_ms:
                self._acknowledged(replies[-1], list(versions))
        self._apply(namespace, versions)

    # -- dropping records: clear, and retain for gc ------------------------------------

    def clear(self, namespace: str) -> None:
        """Drop every version key of ``namespace`` (SCAN, on every master), and say so."""
        self._tier.unlink_matching(self._match(namespace))
        self._tier._client().publish(self.channel, self._message(namespace, None))
        self._forget(namespace, None)

    async def aclear(self, namespace: str) -> None:
        await self._tier.aunlink_matching(self._match(namespace))
        client = (await self._loops.get()).client
        await client.publish(self.channel, self._message(namespace, None))
        self._forget(namespace, None)

    def retain(self, namespace: str, needed: Collection[str]) -> tuple[int, int]:
        """Drop the version keys of ``namespace`` whose names are not in ``needed``."""
        keep = set(needed)
        start = len(self._key(namespace, ""))
        held = self._tier.scan_matching(self._match(namespace))
        dropped = [rkey for rkey in held if rkey[start:] not in keep]
        client = self._tier._client()
        with self._tier._guard(self._tier._seed, "gc versions"):
            if self._tier.cluster:  # each key in its own slot
                for rkey in dropped:
                    client.unlink(rkey)
            else:
                for first in range(0, len(dropped), _CHUNK):
                    client.unlink(*dropped[first : first + _CHUNK])
            if dropped:
                names = [rkey[start:] for rkey in dropped]
                client.publish(self.channel, self._message(namespace, names))
                self._forget(namespace, names)
        return len(dropped), len(held) - len(dropped)

    def _apply(self, namespace: str, versions: dict[str, int]) -> None:
        """Our own bump: we know the new versions.

        Only copies still held are replaced: one dropped meanwhile was dropped
        by a message about a bump that may be newer than ours.
        """
        with self._lock:
            for name, version in versions.items():
                key = (namespace, name)
                if key in self._local:
                    self._local[key] = version
            self._generation += 1  # after the versions: see VersionStore.generation

    def _forget(self, namespace: str, names: list[str] | None) -> None:
        """A bump, clear or gc (ours or another store's): drop our copies; reads fetch them."""
        with self._lock:
            if names is None:
                for key in [key for key in self._local if key[0] == namespace]:
                    del self._local[key]
            else:
                for name in names:
                    self._local.pop((namespace, name), None)
            self._generation += 1

    # -- the listener -------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None and not self._stop.is_set():
            with self._lock:
                if self._listener is None:
                    self._listener = threading.Thread(
                        target=self._listen, name="llmcache-versions", daemon=True
                    )
                    self._listener.start()

    def _set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected
            self._local.clear()
            self._generation += 1

    def _listen(self) -> None:
        subscribe_until(self._tier, self.channel, self._stop, self._serve)

    def _serve(self, pubsub: Any) -> None:
        """Apply messages until the connection fails or goes quiet past a ping."""
        pinged_at: float | None = None
        last_ping = time.monotonic()
        try:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=self.ping_interval / 4)
                now = time.monotonic()
                if message is not None:
                    kind = message.get("type")
                    if kind == "subscribe":
                        self._set_connected(True)
                    elif kind == "pong":
                        pinged_at = None
                    elif kind == "message":
                        document = json.loads(message["data"])
                        names = None if document.get("all") else document["names"]
                        self._forget(
                            str(document["ns"]), None if names is None else [str(n) for n in names]
                        )
                if pinged_at is not None and now - pinged_at > self.ping_interval:
                    raise ConnectionError("no PONG from the version channel: assuming it is gone")
                if pinged_at is None and now - last_ping >= self.ping_interval:
                    pubsub.ping()
                    pinged_at = last_ping = now
        finally:
            self._set_connected(False)

    def close(self) -> None:
        self._stop.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=2)

    async def aclose(self) -> None:
        self.close()
