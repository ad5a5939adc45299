"""Dependency-versioned invalidation: ``depends_on``, version stores, the miss-time snapshot.

Every dependency name has a version. An entry records the versions of its
dependencies as they were when its call *missed*; a read serves it only while
they are all still current. ``invalidate(name)`` is one write of a new version:
O(1) whatever the number of dependent entries, no scan. Stale entries are
skipped at once and their space comes back lazily (TTL, LRU, ``llmcache gc``).

A version is not a counter: it is a random 62-bit value (:func:`new_version`),
made when a name is first read and made anew by every bump. No earlier state
of a store can take it again, so a version record that is lost (evicted,
deleted, a server restarted empty, a file deleted) is simply made again with a
fresh value, which no entry carries: losing a record costs misses, and never
brings back an entry recorded under an earlier version (with counters, a
recreated counter would count 0, 1, 2 again and match old entries).

Names are scoped by namespace, so tenant A's ``invalidate("doc:1")`` never
touches tenant B's entries, and ``clear``/``retain`` drop one namespace's
records only.

Version stores, matching the deployment:

* ``MemoryVersions``: one process.
* ``DiskVersions`` (``invalidation/disk.py``): several processes on one host,
  beside a DiskTier.
* ``RedisVersions`` (``invalidation/redis.py``, loaded only with a Redis tier): every host.
"""

from __future__ import annotations

import contextvars
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from llmcache.errors import ConfigurationError

__all__ = [
    "DependencyRules",
    "MemoryVersions",
    "PendingSnapshots",
    "VersionStore",
    "current_dependencies",
    "depends_on",
    "new_version",
    "validate_dependency",
]

#: Derives dependency names from the call itself: ``(prompt, llm_string) -> names``.
DependencyRules = Callable[[str, str], Iterable[str]]

_dependencies: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "llmcache_dependencies", default=frozenset()
)


def validate_dependency(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 512 or "\x00" in name:
        raise ConfigurationError(
            f"a dependency is a non-empty string of at most 512 characters: {name!r}"
        )
    return name


@contextmanager
def depends_on(*names: str) -> Iterator[frozenset[str]]:
    """Entries written inside this block depend on ``names`` (nested blocks add up).

    A context variable: it reaches every call made inside the block, through
    ``asyncio.gather`` tasks and LangChain's ``batch`` worker threads.
    """
    added = frozenset(validate_dependency(name) for name in names)
    token = _dependencies.set(_dependencies.get() | added)
    try:
        yield _dependencies.get()
    finally:
        _dependencies.reset(token)


def current_dependencies() -> frozenset[str]:
    """The names of the enclosing ``depends_on`` blocks."""
    return _dependencies.get()


_VERSION_FLOOR = 1 << 62


def new_version() -> int:
    """A version no store has used before: 62 random bits, at least 2**62.

    Random, so a record made again after it was lost never equals one an entry
    carries; at least 2**62, so it never equals a counter of the old scheme
    (small integers, 0 for a name never bumped) that entries written by an
    earlier release still hold; below 2**63, so SQLite keeps it as an INTEGER.
    """
    return _VERSION_FLOOR | secrets.randbits(62)


@runtime_checkable
class VersionStore(Protocol):
    """Versions per (namespace, dependency name), made on first read (see :func:`new_version`)."""

    name: str

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        """The versions of ``names``; a name with no record gets one now, with a new version."""
        ...

    def peek(self, namespace: str, names: Collection[str]) -> dict[str, int] | None:
        """``current`` if it needs no network round trip, else None. Never waits on a server."""
        ...

    def generation(self) -> int | None:
        """A number that changes whenever any version may have changed (None: cannot say).

        Lets a reader that found an entry fresh at generation G skip the check
        while the generation is still G. It must move *after* the versions do,
        and never come back to an earlier value (a store made again included).
        """
        ...

    def bump(self, namespace: str, names: Collection[str]) -> None: ...
    def clear(self, namespace: str) -> None:
        """Drop every version record of ``namespace`` (its entries then miss, see new_version)."""
        ...

    def retain(self, namespace: str, needed: Collection[str]) -> tuple[int, int]:
        """Drop the records of ``namespace`` not in ``needed``: (removed, kept). For ``gc``."""
        ...

    def close(self) -> None: ...
    async def acurrent(self, namespace: str, names: Collection[str]) -> dict[str, int]: ...
    async def abump(self, namespace: str, names: Collection[str]) -> None: ...
    async def aclear(self, namespace: str) -> None: ...
    async def aclose(self) -> None: ...


class _LocalOnly:
    """Async twins for stores whose operations never wait on the network."""

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        raise NotImplementedError

    def peek(self, namespace: str, names: Collection[str]) -> dict[str, int] | None:
        return self.current(namespace, names)

    def bump(self, namespace: str, names: Collection[str]) -> None:
        raise NotImplementedError

    def clear(self, namespace: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release by default."""

    async def acurrent(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        return self.current(namespace, names)

    async def abump(self, namespace: str, names: Collection[str]) -> None:
        self.bump(namespace, names)

    async def aclear(self, namespace: str) -> None:
        self.clear(namespace)

    async def aclose(self) -> None:
        self.close()


class MemoryVersions(_LocalOnly):
    """Versions for one process."""

    name = "versions:memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], int] = {}
        self._generation = 0

    def current(self, namespace: str, names: Collection[str]) -> dict[str, int]:
        versions = self._versions
        try:  # the hit path: every name has its record
            return {name: versions[(namespace, name)] for name in names}
        except KeyError:
            with self._lock:
                return {
                    name: versions.setdefault((namespace, name), new_version()) for name in names
                }

    def generation(self) -> int:
        return self._generation

    def bump(self, namespace: str, names: Collection[str]) -> None:
        with self._lock:
            for name in names:
                self._versions[(namespace, name)] = new_version()
            self._generation += 1  # after the versions: see VersionStore.generation

    def clear(self, namespace: str) -> None:
        with self._lock:
            for key in [key for key in self._versions if key[0] == namespace]:
                del self._versions[key]
            self._generation += 1

    def retain(self, namespace: str, needed: Collection[str]) -> tuple[int, int]:
        keep = set(needed)
        with self._lock:
            ours = [key for key in self._versions if key[0] == namespace]
            dropped = [key for key in ours if key[1] not in keep]
            for key in dropped:
                del self._versions[key]
            self._generation += 1
        return len(dropped), len(ours) - len(dropped)


class PendingSnapshots:
    """The versions current when a key missed, kept until its ``update`` arrives.

    LangChain calls ``lookup``, then the model, then ``update``: the versions an
    entry records must be the ones from the lookup, or an answer computed
    while its dependency was being invalidated would be stored as fresh. The
    *oldest* snapshot of a key wins (two concurrent misses: the earlier one is
    the safe one). Bounded by entries and by age: a call that failed never
    updates, and its snapshot must not pin the key's versions for long.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: OrderedDict[str, tuple[float, Mapping[str, int]]] = OrderedDict()

    def remember(self, key: str, versions: Mapping[str, int]) -> None:
        now = self._clock()
        with self._lock:
            held = self._snapshots.get(key)
            if held is not None and now - held[0] < self.max_age:
                return
            self._snapshots[key] = (now, versions)
            self._snapshots.move_to_end(key)
            while len(self._snapshots) > self.max_entries:
                self._snapshots.popitem(last=False)

    def take(self, key: str) -> Mapping[str, int] | None:
        with self._lock:
            held = self._snapshots.pop(key, None)
        if held is None or self._clock() - held[0] >= self.max_age:
            return None
        return held[1]
