"""The Tier interface, and the operations a flow over the tiers asks for.

A tier is a dumb byte store (get/set/delete/clear and async twins). All the
decisions - lookup order, decoding and verifying, promotion of a lower-tier
hit upward with its remaining TTL, write-through, fail-open - live in the
generator flows of :mod:`llmcache.layers`. A flow yields the operations
defined here (:class:`Get`, :class:`Put`, ...) and receives their results;
each operation knows how to run itself blocking and awaited.
"""

from __future__ import annotations

from collections.abc import (
    Awaitable,
    Collection,
    Generator,
)
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from llmcache.invalidation import VersionStore
from llmcache.serialization import Record

__all__ = [
    "Clear",
    "Delete",
    "Flow",
    "Get",
    "Hit",
    "InlineAsync",
    "Needs",
    "Op",
    "Put",
    "ReadVersions",
    "TargetOp",
    "Tier",
]

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


class InlineAsync:
    """The async half of the Tier interface for a tier whose work is local and fast.

    Each async method runs its sync twin inline: a memory operation or a
    SQLite read of a few KB takes microseconds, far less than a hop to a
    thread pool and back. A tier whose calls wait on a network must not use it.
    The layers rely on this: they read such a tier with ``get`` on the spot,
    from the sync and the async path alike, without yielding to a driver.
    """

    #: True for a tier whose ``get`` hands back the very object ``set`` was
    #: given (an in-process store): :meth:`Layers.peek` may answer from it.
    returns_stored_object: bool = False

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def clear(self, namespace: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def aget(self, key: str) -> bytes | None:
        return self.get(key)

    async def aset(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.set(key, value, ttl)

    async def adelete(self, key: str) -> None:
        self.delete(key)

    async def aclear(self, namespace: str) -> None:
        self.clear(namespace)

    async def aclose(self) -> None:
        self.close()


# The operations a flow can ask for. Each knows how to run itself both ways.
# Not frozen: a frozen dataclass costs twice as much to build, and a Get is
# built on every lookup.
@dataclass(slots=True)
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


@dataclass(frozen=True, slots=True)
class ReadVersions:
    """Ask the version store for the current versions of some dependencies."""

    index: int
    namespace: str
    names: Collection[str]
    what = "versions"

    def run(self, store: VersionStore) -> dict[str, int]:
        return store.current(self.namespace, self.names)

    def arun(self, store: VersionStore) -> Awaitable[dict[str, int]]:
        return store.acurrent(self.namespace, self.names)


class TargetOp(Protocol):
    """An operation on a target added with :meth:`Layers.attach` (coalescing's joins and waits).

    Like the operations above it runs itself both ways; its ``run`` may block
    and its ``arun`` may await (a wait for another caller is I/O-like).
    """

    @property
    def index(self) -> int: ...
    @property
    def what(self) -> str: ...
    def run(self, target: Any) -> Any: ...
    def arun(self, target: Any) -> Awaitable[Any]: ...


Op = Get | Put | Delete | Clear | ReadVersions | TargetOp
Flow = Generator[Op, Any, T]


@dataclass(slots=True)
class Needs:
    """The dependency names the entries a gc kept depend on.

    ``complete`` is False when some kept entry could not be read (signed with
    another secret): then nobody knows every name still needed.
    """

    names: set[str] = field(default_factory=set)
    complete: bool = True


@dataclass(slots=True)
class Hit:
    record: Record
    tier: str
    #: True when the record was parsed from stored bytes in this lookup, so
    #: nobody else holds its payload yet; False for an in-process record.
    parsed: bool
    #: True when the record lives on in this process (an in-process tier, or a
    #: hand-over to coalesced followers) and may be built from again.
    retained: bool = True
