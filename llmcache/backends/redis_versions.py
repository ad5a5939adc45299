"""RedisVersions: dependency versions shared by every host, kept current by pub/sub.

Each (namespace, name) has a counter key ``<prefix>v:<namespace>:<name>`` (its
own slot on a cluster, so INCR is always single-key). ``bump`` increments the
counters and publishes their names on ``<prefix>versions`` in the same round
trip (a pipeline; on a cluster, one INCR per slot and then the PUBLISH).

Every store keeps a local copy of the versions it has read, and a listener
thread drops the names published by every bump from it, so a lookup that checks
dependencies costs a dictionary read, not a round trip. The copy is trusted
only while the listener is connected:

* it is dropped whenever the listener (re)subscribes or loses its connection,
  and until the listener is back every read goes to Redis;
* a connection that dies quietly (a stopped or partitioned server) is found by
  a PING the listener sends every ``ping_interval`` seconds: no PONG within
  the next interval means disconnected (the listener polls four times an
  interval). So another process stops serving an invalidated entry within
  the pub/sub delivery time while connected (about a millisecond on
  loopback), and within ``2.5 * ping_interval`` (1.25 s by default) of a
  connection that died without a word.

The process that bumps applies its own bump before ``bump`` returns.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmcache.backends.redis_batch import PerLoop
from llmcache.backends.redis_subscriber import subscribe_until

if TYPE_CHECKING:
    from llmcache.backends.redis import RedisTier

__all__ = ["RedisVersions"]


@dataclass(eq=False)
class _LoopState:
    """An async client and the lock that makes its fetches single-flight, per event loop."""

    client: Any
    fetching: asyncio.Lock

    async def aclose(self) -> None:
        await self.client.aclose()


class RedisVersions:
    """Version counters in Redis, cached locally while a pub/sub listener keeps them current."""

    name = "versions:redis"

    def __init__(self, tier: RedisTier, *, ping_interval: float = 0.5) -> None:
        self._tier = tier
        self.prefix = tier.prefix
        self.channel = f"{tier.prefix}versions"
        self.ping_interval = ping_interval
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
        return f"{self.prefix}v:{namespace}:{name}"

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
        with self._tier._guard(self._tier._seed, "read versions"):
            if self._tier.cluster:
                values = [client.get(key) for key in keys]
            else:
                values = client.mget(keys)
        fetched = {name: int(value or 0) for name, value in zip(missing, values)}
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
        breaker = self._tier._breaker(self._tier._seed)
        breaker.check()  # a server known to be down costs nothing
        try:
            if self._tier.cluster:
                values = [await client.get(key) for key in keys]
            else:
                values = await client.mget(keys)
        except Exception as exc:
            raise self._tier._failed(breaker, "read versions", exc) from exc
        breaker.success()
        fetched = {name: int(value or 0) for name, value in zip(missing, values)}
        self._remember(namespace, fetched, generation)
        return fetched

    # -- bumps ------------------------------------------------------------------

    def _message(self, namespace: str, names: list[str]) -> str:
        # Names only, no versions: the message can then ride in the same
        # pipeline as the INCRs, and a receiver simply forgets its copies.
        return json.dumps({"ns": namespace, "names": names}, separators=(",", ":"))

    def bump(self, namespace: str, names: Collection[str]) -> None:
        ordered = list(names)
        client = self._tier._client()
        if self._tier.cluster:  # one key per slot: INCR each, then publish
            new = [int(client.incr(self._key(namespace, name))) for name in ordered]
            client.publish(self.channel, self._message(namespace, ordered))
        else:  # one round trip
            pipe = client.pipeline(transaction=False)
            for name in ordered:
                pipe.incr(self._key(namespace, name))
            pipe.publish(self.channel, self._message(namespace, ordered))
            new = [int(value) for value in pipe.execute()[:-1]]
        self._apply(namespace, dict(zip(ordered, new)))

    async def abump(self, namespace: str, names: Collection[str]) -> None:
        ordered = list(names)
        client = (await self._loops.get()).client
        if self._tier.cluster:
            new = [int(await client.incr(self._key(namespace, name))) for name in ordered]
            await client.publish(self.channel, self._message(namespace, ordered))
        else:
            pipe = client.pipeline(transaction=False)
            for name in ordered:
                pipe.incr(self._key(namespace, name))
            pipe.publish(self.channel, self._message(namespace, ordered))
            new = [int(value) for value in (await pipe.execute())[:-1]]
        self._apply(namespace, dict(zip(ordered, new)))

    def _apply(self, namespace: str, versions: dict[str, int]) -> None:
        """Our own bump: we know the new versions."""
        with self._lock:
            for name, version in versions.items():
                key = (namespace, name)
                if key in self._local:
                    self._local[key] = max(self._local[key], version)
            self._generation += 1  # after the versions: see VersionStore.generation

    def _forget(self, namespace: str, names: list[str]) -> None:
        """Another store's bump: drop our copies; the next read fetches them."""
        with self._lock:
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
                        self._forget(str(document["ns"]), [str(n) for n in document["names"]])
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
