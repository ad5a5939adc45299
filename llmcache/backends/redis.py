"""RedisTier: a shared L2 on Redis or Redis Cluster, sync and natively async.

Like every tier it is a dumb byte store: it keeps the engine's bytes as they
are (signed by the engine when ``LLMCACHE_SECRET`` is set), under
``prefix + "<namespace>:<digest>"``, with the TTL kept by the server (SET PX).

The key layout under ``prefix`` (``llmcache:`` by default)::

    <namespace>:<digest>           an entry
    ~v:<namespace>:<name>          a dependency's version (invalidation/redis.py)
    ~lease:<namespace>:<digest>    a miss being computed (coalesce/redis_leases.py)
    ~chan:versions, ~chan:coalesce the pub/sub channels

Internal names start with ``~``, a character ``validate_namespace`` refuses,
so the SCAN pattern of a namespace (``<namespace>:*``) can never match them,
whatever the namespace is called (``v``, ``lease``, ``chan``...).

* Sync calls use redis-py; async calls use redis.asyncio directly, no thread
  hop. An async client belongs to the loop it was created in, so there is one
  per running loop, closed when that loop shuts down its async generators
  (``asyncio.run`` and pytest-asyncio do), never used from another loop.
* Concurrent async operations are auto-batched (``redis_batch``): one MGET,
  or one pipeline per cluster master, per event-loop tick. Concurrent threads'
  operations are grouped too (``redis_threads``): those that arrive while a
  round trip is in flight go together in the next one; a lone call goes at once.
* Fail-open is the engine's job; this tier's part is to fail fast. Short
  socket and connect timeouts, no client-side retries, and a circuit breaker
  per server (per master on a cluster) that refuses calls at once while the
  server is down. Every failure is raised as ``TierError`` from the driver's
  exception.
* Nothing connects until the first call; clients passed in are never closed.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import ClusterDownError, RedisClusterException, ResponseError

from llmcache.backends.breaker import CircuitBreaker
from llmcache.backends.redis_batch import AutoBatcher, PerLoop, run_cluster, run_single
from llmcache.backends.redis_clear import SCAN_COUNT, clear_steps, issue, node_name
from llmcache.backends.redis_clients import async_client, close_sync_client, sync_client
from llmcache.backends.redis_round_trips import (
    Command,
    Op,
    Result,
    alone,
    drive,
    node_pipeline,
    single_server,
)
from llmcache.backends.redis_threads import ThreadBatcher
from llmcache.config import check_redis_url, redact, redis_node_name
from llmcache.errors import ConfigurationError, TierError
from llmcache.keys import namespace_prefix

__all__ = ["RedisTier"]

#: Starts every internal key and channel; validate_namespace refuses it in a namespace.
INTERNAL = "~"


@dataclass(eq=False)
class _LoopState:
    """What the tier keeps per running event loop."""

    client: Any
    batcher: AutoBatcher
    owned: bool
    closed: bool = False

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.batcher.aclose()
            if self.owned:
                await self.client.aclose()


class RedisTier:
    """A tier on a Redis server (``redis://``, ``rediss://``, ``unix://``) or cluster.

    ``RedisTier("redis://host:6379/0")``, ``RedisTier("redis://host:7000", cluster=True)``
    or ``RedisTier(client=redis.Redis(...), async_client=redis.asyncio.Redis(...))``.
    Given one client only, the tier opens (and later closes) the other kind to the
    same server; on a cluster pass both. ``client_options`` go to the clients the
    tier creates. ``socket_timeout``/``connect_timeout`` bound each call while the
    breaker is closed; ``failure_threshold`` consecutive failures open a server's
    breaker for ``cooldown`` seconds of the injected ``clock``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        cluster: bool = False,
        client: Any = None,
        async_client: Any = None,
        prefix: str = "llmcache:",
        socket_timeout: float = 0.25,
        connect_timeout: float = 0.5,
        failure_threshold: int = 3,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_batch: int = 512,
        client_options: Mapping[str, Any] | None = None,
        name: str = "redis",
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ConfigurationError("RedisTier needs a URL, or a client and/or async_client")
        if url is not None and (client is not None or async_client is not None):
            raise ConfigurationError("pass either a URL or clients, not both")
        if url is not None:
            check_redis_url(url)
        cluster = (
            cluster
            or isinstance(client, redis.cluster.RedisCluster)
            or isinstance(async_client, redis.asyncio.cluster.RedisCluster)
        )
        if cluster and url is not None and url.startswith("unix://"):
            raise ConfigurationError("a Redis Cluster is reached over TCP, not unix://")
        if cluster and url is None and (client is None or async_client is None):
            raise ConfigurationError("on a cluster pass both client and async_client")
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("timeouts must be positive")
        if max_batch < 1:
            raise ConfigurationError("max_batch must be at least 1")
        self.name = name
        self.url = url
        self.cluster = cluster
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_batch = max_batch
        self._options = dict(client_options or {})
        self._byo_client, self._byo_async = client, async_client
        self._breaker_settings = (failure_threshold, cooldown, clock)
        CircuitBreaker(failure_threshold, cooldown, clock=clock)  # validates the settings now
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._sync: Any = client
        self._threads: dict[str, ThreadBatcher] = {}  # per breaker: "server", or per master
        self._loops: PerLoop[_LoopState] = PerLoop(self._new_loop_state)
        # The breaker for calls made before a cluster's map is known (and for clear).
        self._seed = "server" if not cluster else redis_node_name(url) if url else "cluster"

    # -- breakers and errors ------------------------------------------------------

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """The circuit breaker of each server asked so far ("server", or "host:port" per master)."""
        with self._lock:
            return dict(self._breakers)

    def _breaker(self, node: str) -> CircuitBreaker:
        breaker = self._breakers.get(node)
        if breaker is None:
            threshold, cooldown, clock = self._breaker_settings
            with self._lock:
                breaker = self._breakers.setdefault(
                    node,
                    CircuitBreaker(threshold, cooldown, clock=clock, name=f"{self.name} {node}"),
                )
        return breaker

    def _failed(self, breaker: CircuitBreaker, what: str, exc: Exception) -> TierError:
        if _answered(exc):
            breaker.success()  # the server answered: alive, whatever it said
        else:
            breaker.failure()
        return TierError(f"{self.name}: {what} failed ({type(exc).__name__}: {exc})")

    @contextmanager
    def _guard(self, node: str, what: str) -> Iterator[None]:
        breaker = self._breaker(node)
        breaker.check()
        try:
            yield
        except Exception as exc:
            raise self._failed(breaker, what, exc) from exc
        breaker.success()

    async def _aguard(
        self, node: str, round_trip: Callable[[], Awaitable[list[Result]]]
    ) -> list[Result]:
        breaker = self._breaker(node)
        breaker.check()
        try:
            # Socket timeouts bound each read; this bounds the whole round trip,
            # reconnects and cluster redirections included.
            result = await _within(self.connect_timeout + self.socket_timeout, round_trip)
        except Exception as exc:
            raise self._failed(breaker, "round trip", exc) from exc
        breaker.success()
        return result

    # -- keys -----------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _match(self, namespace: str) -> str:
        return _glob_escape(self.prefix + namespace_prefix(namespace)) + "*"

    def internal_key(self, kind: str, rest: str) -> str:
        """``<prefix>~<kind>:<rest>``: out of every namespace's reach (see the module docstring)."""
        return f"{self.prefix}{INTERNAL}{kind}:{rest}"

    def internal_match(self, kind: str, rest: str) -> str:
        """The SCAN pattern of the internal keys starting ``<prefix>~<kind>:<rest>``."""
        return _glob_escape(self.internal_key(kind, rest)) + "*"

    def channel(self, kind: str) -> str:
        """The pub/sub channel ``<prefix>~chan:<kind>``."""
        return self.internal_key("chan", kind)

    # -- clients ----------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            **self._options,
        }

    def _client(self) -> Any:
        client = self._sync
        if client is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._new_sync_client()
                client = self._sync
        return client

    def _new_sync_client(self) -> Any:
        return sync_client(
            self.url, cluster=self.cluster, options=self._client_options(), like=self._byo_async
        )

    def _new_async_client(self) -> Any:
        return async_client(
            self.url, cluster=self.cluster, options=self._client_options(), like=self._byo_client
        )

    def _node(self, rkey: str) -> str:
        """The breaker name for ``rkey``: its master on a cluster."""
        if not self.cluster:
            return "server"
        if self._sync is None:
            return self._seed  # the client is created (and the cluster mapped) in the guard
        try:
            return str(self._sync.get_node_from_key(rkey).name)
        except (redis.RedisError, RedisClusterException):  # no slot map: ask as the seed
            return self._seed

    def _new_loop_state(self) -> _LoopState:
        owned = self._byo_async is None
        client = self._new_async_client() if owned else self._byo_async
        run = partial(run_cluster, seed=self._seed) if self.cluster else run_single
        batcher = AutoBatcher(
            lambda batch: run(client, batch, self._aguard), max_batch=self.max_batch
        )
        return _LoopState(client, batcher, owned)

    # -- Tier: sync -----------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._submit("get", self._key(key))
        return value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._submit("set", self._key(key), _as_bytes(value), _px(ttl))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Many gets, one round trip per ``max_batch`` keys: MGET, or a pipeline on a cluster.

        Chunked like the async batcher: one reply of 10,000 embeddings would be
        tens of MB, read against a socket timeout meant for one value.
        """
        values: list[Any] = []
        for start in range(0, len(keys), self.max_batch):
            rkeys = [self._key(key) for key in keys[start : start + self.max_batch]]
            with self._guard(self._seed if self.cluster else "server", "get_many"):
                client = self._client()
                if self.cluster:
                    pipe = client.pipeline()
                    for rkey in rkeys:
                        pipe.get(rkey)
                    values.extend(pipe.execute(raise_on_error=False))
                else:
                    values.extend(client.mget(rkeys))  # another type under a key reads as nil
        return [value if isinstance(value, bytes) else None for value in values]

    def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """Many sets, each with its own TTL: a non-transactional pipeline per ``max_batch``."""
        for start in range(0, len(items), self.max_batch):
            with self._guard(self._seed if self.cluster else "server", "set_many"):
                client = self._client()
                pipe = client.pipeline() if self.cluster else client.pipeline(transaction=False)
                for key, value, ttl in items[start : start + self.max_batch]:
                    pipe.set(self._key(key), _as_bytes(value), px=_px(ttl))
                pipe.execute()

    def delete(self, key: str) -> None:
        self._submit("delete", self._key(key))

    def _submit(self, op: Op, rkey: str, value: bytes | None = None, px: int | None = None) -> Any:
        """One blocking operation, sent with those of the threads beside it (redis_threads)."""
        node = self._node(rkey)
        batcher = self._threads.get(node)
        if batcher is None:
            with self._lock:
                batcher = self._threads.get(node)
                if batcher is None:
                    round_trip = partial(self._round_trip, node)
                    batcher = ThreadBatcher(round_trip, max_batch=self.max_batch)
                    self._threads[node] = batcher
        return batcher.submit(op, rkey, value, px)

    def _round_trip(self, node: str, batch: Sequence[Command]) -> list[Result]:
        """One guarded blocking round trip to ``node`` for a batch of threads' operations.

        ``_guard`` spelled out: this runs on every sync call, and a generator-based
        context manager costs about 2 µs of a 20 µs lookup.
        """
        breaker = self._breaker(node)
        breaker.check()
        try:
            client = self._client()
            if len(batch) == 1:  # the commonest: a lone call (what the steps would pick)
                results = drive(alone(client, batch[0]))
            else:
                results = drive((node_pipeline if self.cluster else single_server)(client, batch))
        except Exception as exc:
            what = batch[0].op if len(batch) == 1 else f"round trip of {len(batch)}"
            error = self._failed(breaker, what, exc)
            error.__cause__ = exc
            if _answered(exc):
                # The server is up and refused this batch: its callers fail, but the
                # threads queued behind it are sent as usual (redis_threads).
                return [error] * len(batch)
            raise error from exc
        breaker.success()
        return results

    def clear(self, namespace: str) -> None:
        """UNLINK this namespace's keys, found by SCAN (on every master); never FLUSHDB."""
        self.unlink_matching(self._match(namespace))

    def unlink_matching(self, match: str) -> None:
        """UNLINK every key matching the SCAN pattern ``match``, on every master."""
        with self._guard(self._seed, "clear"):
            client = self._client()
            nodes = client.get_primaries() if self.cluster else [None]
        steps, reply = clear_steps(match, nodes), None
        with suppress(StopIteration):
            while True:
                step = steps.send(reply)
                with self._guard(node_name(step[1]), "clear"):
                    pending, finish = issue(client, step)
                    reply = finish(pending)

    def keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace`` (without the prefix): SCAN, for maintenance jobs only."""
        return [rkey[len(self.prefix) :] for rkey in self.scan_matching(self._match(namespace))]

    def scan_matching(self, match: str) -> list[str]:
        """Every key matching the SCAN pattern ``match`` (on every master), prefix included."""
        with self._guard(self._seed, "scan"):
            client = self._client()
            if self.cluster:
                found = client.scan_iter(
                    match=match, count=SCAN_COUNT,
                    target_nodes=redis.cluster.RedisCluster.PRIMARIES,
                )  # fmt: skip
            else:
                found = client.scan_iter(match=match, count=SCAN_COUNT)
            return [_as_bytes(rkey).decode() for rkey in found]

    def close(self) -> None:
        """Close what this tier opened, in every loop it can still reach."""
        with self._lock:
            sync, self._sync = self._sync, self._byo_client
        if sync is not None and sync is not self._byo_client:
            close_sync_client(sync)
        self._loops.close_all()

    # -- Tier: async ------------------------------------------------------------------------

    async def aget(self, key: str) -> bytes | None:
        if not self.cluster and self._breaker("server").state == "open":
            self._breaker("server").check()  # refuse now, not one loop tick later
        state = self._loops.current() or await self._loops.get()
        value: bytes | None = await state.batcher.submit("get", self._key(key))
        return value

    async def aset(self, key: str, value: bytes, ttl: float | None = None) -> None:
        value = _as_bytes(value)
        state = self._loops.current() or await self._loops.get()
        await state.batcher.submit("set", self._key(key), value, _px(ttl))

    async def adelete(self, key: str) -> None:
        state = self._loops.current() or await self._loops.get()
        await state.batcher.submit("delete", self._key(key))

    async def aclear(self, namespace: str) -> None:
        await self.aunlink_matching(self._match(namespace))

    async def aunlink_matching(self, match: str) -> None:
        client = (await self._loops.get()).client
        with self._guard(self._seed, "clear"):
            if self.cluster:
                await client.initialize()
            nodes = client.get_primaries() if self.cluster else [None]
        steps, reply = clear_steps(match, nodes), None
        with suppress(StopIteration):
            while True:
                step = steps.send(reply)
                with self._guard(node_name(step[1]), "clear"):
                    pending, finish = issue(client, step)
                    reply = finish(await pending)

    async def aclose(self) -> None:
        await self._loops.aclose_current()
        self.close()

    def __repr__(self) -> str:
        where = redact(self.url) if self.url else "clients passed in"
        return f"RedisTier({where!r}, cluster={self.cluster}, prefix={self.prefix!r})"


# -- helpers --------------------------------------------------------------------------------


async def _within(seconds: float, call: Callable[[], Awaitable[list[Result]]]) -> list[Result]:
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):  # no extra task per round trip, unlike wait_for
            return await call()
    return await asyncio.wait_for(call(), seconds)  # pragma: no cover - Python 3.10


def _answered(exc: BaseException) -> bool:
    """Did the server answer (an error reply), so that it is known to be alive?"""
    return isinstance(exc, ResponseError) and not isinstance(exc, ClusterDownError)


def _px(ttl: float | None) -> int | None:
    # At least 1 ms: PX 0 is an error, and an entry with no time left is as good as gone.
    return None if ttl is None else max(1, math.ceil(ttl * 1000))


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"RedisTier values are bytes, got {type(value).__name__}")


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
