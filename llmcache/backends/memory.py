"""MemoryTier: the in-process L1, a true LRU bounded by entries and by bytes.

``max_bytes`` bounds the memory the entries really hold, not the length of
the stored bytes: an entry written or promoted by the layers also keeps the
record those bytes encode (its parsed payload, and later the compiled view a
reader builds from it), which for a typical answer is several times the
stored bytes. :func:`entry_size` charges all of it, once, when the entry is
stored; ``tests/test_memory_bound.py`` holds it to what ``tracemalloc`` sees.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from llmcache.errors import ConfigurationError
from llmcache.keys import namespace_prefix
from llmcache.serialization import Encoded
from llmcache.tiers import InlineAsync

__all__ = ["MemoryTier", "entry_size"]

# Bytes per entry on top of its key and value objects: the OrderedDict node
# and its hash-table slot, and the (value, expiry, cost) tuple.
_ENTRY_OVERHEAD = 200
# What an Encoded adds besides its bytes: their instance dict (key, state,
# body, exact) and the state Record with its ``derived`` dict. Fitted with
# tracemalloc on chat, tool-call and plain answers; tests/test_memory_bound.py
# holds the whole estimate to what it measures.
_RECORD_OVERHEAD = 300


def entry_size(key: str, value: bytes) -> int:
    """The bytes an entry holds in this process: key, stored bytes and what they remember.

    An entry whose body is not compressed keeps its bytes and no parsed
    payload (``serialization.Encoded``). A compressed one also keeps its
    payload, then the compiled view a hit builds in its place (which keeps a
    private copy of every container and shares the strings): containers count
    twice, strings once.
    """
    size = _ENTRY_OVERHEAD + sys.getsizeof(key) + sys.getsizeof(value)
    if type(value) is Encoded:
        size += _RECORD_OVERHEAD
        if not value.body:
            containers, leaves = json_size(value.state.payload)
            size += 2 * containers + leaves
    return size


class MemoryTier(InlineAsync):
    """An LRU of bytes with per-entry TTL.

    Re-writing a key that is already present replaces it in place: at
    capacity it does not evict another entry (LangChain's InMemoryCache pops
    the oldest entry first, losing one for nothing). A value larger than
    ``max_bytes`` is not stored. Safe under threads; asyncio callers never
    wait on I/O here, so the async twins call straight through.
    """

    returns_stored_object = True  # see InlineAsync: the layers may peek here

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 256 << 20,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        size: Callable[[str, bytes], int] = entry_size,
        name: str = "memory",
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        if max_bytes < 1:
            raise ConfigurationError("max_bytes must be at least 1")
        if ttl is not None and ttl <= 0:
            raise ConfigurationError("ttl must be positive (or None for no expiry)")
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.default_ttl = ttl
        self._clock = clock
        self._size = size
        self._lock = threading.Lock()
        # key -> (value, expires_at, the bytes charged for it)
        self._entries: OrderedDict[str, tuple[bytes, float | None, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> bytes | None:
        # No lock on a hit: the lookup and the move to the LRU end are each one
        # atomic call on the OrderedDict. Compound changes (set, evict, remove)
        # take the lock.
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at, _ = entry
        if expires_at is not None and self._clock() >= expires_at:
            with self._lock:
                if self._entries.get(key) is entry:
                    self._remove(key)
            return None
        try:  # noqa: SIM105 - contextlib.suppress costs more than the move itself
            self._entries.move_to_end(key)
        except KeyError:
            pass  # removed or replaced meanwhile by another thread: this read stands
        return value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        ttl = self.default_ttl if ttl is None else ttl
        cost = self._size(key, value)  # outside the lock: it walks the record
        with self._lock:
            if key in self._entries:
                self._remove(key)
            if cost > self.max_bytes:
                return
            expires_at = None if ttl is None else self._clock() + ttl
            self._entries[key] = (value, expires_at, cost)
            self._bytes += cost
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                # popitem, not next(iter()): a lock-free get may move an entry meanwhile.
                _, (_, _, charged) = self._entries.popitem(last=False)
                self._bytes -= charged

    def delete(self, key: str) -> None:
        with self._lock:
            if key in self._entries:
                self._remove(key)

    def clear(self, namespace: str) -> None:
        prefix = namespace_prefix(namespace)
        with self._lock:
            # list(): one atomic copy of the keys (a lock-free get may reorder them).
            for key in [k for k in list(self._entries) if k.startswith(prefix)]:
                self._remove(key)

    def held_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace`` held now (a memory-only ByteStore lists its keys so).

        Not ``keys``: ``gc`` sweeps the tiers that have that, and memory
        reclaims its own expired entries as it reads them.
        """
        prefix = namespace_prefix(namespace)
        return [key for key in list(self._entries) if key.startswith(prefix)]

    def close(self) -> None:
        """Nothing to release; present for the Tier interface."""

    def _remove(self, key: str) -> None:
        _, _, charged = self._entries.pop(key)
        self._bytes -= charged


def json_size(value: Any) -> tuple[int, int]:
    """(bytes in containers, bytes in leaves) of a JSON value in memory.

    ``sys.getsizeof`` of each dict and list, and of each string and number in
    them, a long string once however often it stands (a chat answer's text
    and its message content are one object). Dict keys are not counted: they
    are the same few interned names in every payload. Iterative: payloads
    may nest deep. A few microseconds for an answer, paid when it is stored.
    """
    sizeof = sys.getsizeof
    containers = leaves = 0
    seen: set[int] = set()
    stack: list[Any] = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            if len(item) > 256:
                if id(item) in seen:
                    continue
                seen.add(id(item))
            leaves += sizeof(item)
        elif kind is dict:
            containers += sizeof(item)
            extend(item.values())
        elif kind is list:
            containers += sizeof(item)
            extend(item)
        elif item is not None and kind is not bool:
            leaves += sizeof(item)
    return containers, leaves
