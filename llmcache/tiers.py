"""The Tier interface and the layering of tiers: written once, driven twice.

A tier is a dumb byte store (get/set/delete/clear and async twins). All the
decisions - lookup order, decoding and verifying, promotion of a lower-tier
hit upward with its remaining TTL, write-through, fail-open - live in the
generator ``flows`` below. A flow yields storage operations and receives their
results; ``Layers.run`` drives it with blocking calls and ``Layers.arun`` with
awaits, so the sync and async paths cannot drift apart (the pattern of httpx's
``auth_flow``).

Fail-open lives in the drivers: an operation that raises is counted, logged
once, and answered with ``None``, which every flow reads as a miss.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, Union, runtime_checkable

from llmcache import serialization
from llmcache.errors import ConfigurationError, SerializationError
from llmcache.serialization import Record, Signer
from llmcache.stats import Counters, TierStats

__all__ = ["Clear", "Delete", "Flow", "Get", "Hit", "Layers", "Put", "Tier"]

T = TypeVar("T")


@runtime_checkable
class Tier(Protocol):
    """A byte store. Keys are ``"<namespace>:<digest>"``; ``clear`` takes a namespace.

    A tier may raise anything on failure: the layering turns it into a miss.
    """

    name: str

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    def delete(self, key: str) -> None: ...
    def clear(self, namespace: str) -> None: ...
    def close(self) -> None: ...
    async def aget(self, key: str) -> bytes | None: ...
    async def aset(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    async def adelete(self, key: str) -> None: ...
    async def aclear(self, namespace: str) -> None: ...
    async def aclose(self) -> None: ...


# The operations a flow can ask for. Each knows how to run itself both ways.
@dataclass(frozen=True, slots=True)
class Get:
    index: int
    key: str
    what = "get"

    def run(self, tier: Tier) -> bytes | None:
        return tier.get(self.key)

    def arun(self, tier: Tier) -> Awaitable[bytes | None]:
        return tier.aget(self.key)


@dataclass(frozen=True, slots=True)
class Put:
    index: int
    key: str
    value: bytes
    ttl: float | None
    what = "set"

    def run(self, tier: Tier) -> bool:
        tier.set(self.key, self.value, self.ttl)
        return True

    async def arun(self, tier: Tier) -> bool:
        await tier.aset(self.key, self.value, self.ttl)
        return True


@dataclass(frozen=True, slots=True)
class Delete:
    index: int
    key: str
    what = "delete"

    def run(self, tier: Tier) -> bool:
        tier.delete(self.key)
        return True

    async def arun(self, tier: Tier) -> bool:
        await tier.adelete(self.key)
        return True


@dataclass(frozen=True, slots=True)
class Clear:
    index: int
    namespace: str
    what = "clear"

    def run(self, tier: Tier) -> bool:
        tier.clear(self.namespace)
        return True

    async def arun(self, tier: Tier) -> bool:
        await tier.aclear(self.namespace)
        return True


Op = Union[Get, Put, Delete, Clear]
Flow = Generator[Op, Any, T]


@dataclass(frozen=True, slots=True)
class Hit:
    record: Record
    tier: str
    #: True when the record was parsed from stored bytes in this lookup, so
    #: nobody else holds its payload yet; False for an in-process record.
    parsed: bool


class Layers:
    """An ordered stack of tiers (fastest first) with the flows over them."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        signer: Signer | None = None,
        clock: Callable[[], float] = time.time,
        compress_threshold: int = serialization.DEFAULT_COMPRESS_THRESHOLD,
    ) -> None:
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"tier names must be distinct: {names}")
        self.tiers = tuple(tiers)
        self.signer = signer
        self.clock = clock
        self.compress_threshold = compress_threshold
        self._counters = tuple(Counters(tier.name) for tier in self.tiers)

    # -- drivers --------------------------------------------------------------

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow with blocking calls."""
        try:
            op = next(flow)
            while True:
                counters = self._counters[op.index]
                start = time.perf_counter()
                try:
                    result = op.run(self.tiers[op.index])
                except Exception as exc:  # fail-open: a broken tier is a miss
                    counters.failure("errors", op.what, exc)
                    result = None
                else:
                    if op.what == "get":
                        counters.observe(time.perf_counter() - start)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def arun(self, flow: Flow[T]) -> T:
        """Drive a flow with awaits (no thread-pool hop)."""
        try:
            op = next(flow)
            while True:
                counters = self._counters[op.index]
                start = time.perf_counter()
                try:
                    result = await op.arun(self.tiers[op.index])
                except Exception as exc:  # fail-open: a broken tier is a miss
                    counters.failure("errors", op.what, exc)
                    result = None
                else:
                    if op.what == "get":
                        counters.observe(time.perf_counter() - start)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- flows ----------------------------------------------------------------

    def get_flow(self, key: str, accept: Callable[[Record], bool] | None = None) -> Flow[Hit | None]:
        """Ask each tier in turn; promote a lower hit into the tiers above it.

        ``accept`` can veto a decoded record (a dependency that moved on): it
        is then a miss for that tier, and the search goes on below.
        """
        for index, counters in enumerate(self._counters):
            raw = yield Get(index, key)
            if raw is None:
                counters.add("misses")
                continue
            now = self.clock()
            parsed = not (type(raw) is serialization.Encoded and raw.key == key)
            try:
                record = serialization.decode(raw, key=key, signer=self.signer)
            except SerializationError as exc:
                counters.failure("corrupt", "decode", exc)
                counters.add("misses")
                yield Delete(index, key)  # make room for a clean refill
                continue
            if record.expired(now) or (accept is not None and not accept(record)):
                counters.add("misses")
                continue
            counters.add("hits")
            if index:
                ttl = record.remaining_ttl(now)
                promoted = serialization.Encoded.of(raw, key=key, record=record)
                for upper in range(index):
                    yield Put(upper, key, promoted, ttl)
                    self._counters[upper].add("writes")
            return Hit(record, self.tiers[index].name, parsed)
        return None

    def encode(self, key: str, record: Record) -> bytes:
        """The stored bytes for ``record`` under ``key``. Raises SerializationError."""
        return serialization.encode(
            record, key=key, signer=self.signer, compress_threshold=self.compress_threshold
        )

    def set_flow(self, key: str, raw: bytes, ttl: float | None) -> Flow[int]:
        """Write ``raw`` (from :meth:`encode`) through to every tier; returns how many took it."""
        written = 0
        for index, counters in enumerate(self._counters):
            if (yield Put(index, key, raw, ttl)):
                counters.add("writes")
                written += 1
        return written

    def delete_flow(self, key: str) -> Flow[None]:
        for index in range(len(self.tiers)):
            yield Delete(index, key)

    def clear_flow(self, namespace: str) -> Flow[None]:
        for index in range(len(self.tiers)):
            yield Clear(index, namespace)

    # -- stats ----------------------------------------------------------------

    def stats(self) -> dict[str, TierStats]:
        return {counters.name: counters.tier_snapshot() for counters in self._counters}

    def reset_stats(self) -> None:
        for counters in self._counters:
            counters.reset()

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()

    async def aclose(self) -> None:
        for tier in self.tiers:
            await tier.aclose()
