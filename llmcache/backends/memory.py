"""MemoryTier: the in-process L1, a true LRU bounded by entries and by bytes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from llmcache.errors import ConfigurationError
from llmcache.keys import namespace_prefix
from llmcache.tiers import InlineAsync

__all__ = ["MemoryTier"]

# Bytes charged per entry on top of key and value: the OrderedDict node, the
# tuple and the two objects' headers. An estimate, so ``max_bytes`` tracks RSS.
_ENTRY_OVERHEAD = 160


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
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
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
        value, expires_at = entry
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
        cost = _cost(key, value)
        with self._lock:
            if key in self._entries:
                self._remove(key)
            if cost > self.max_bytes:
                return
            expires_at = None if ttl is None else self._clock() + ttl
            self._entries[key] = (value, expires_at)
            self._bytes += cost
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                # popitem, not next(iter()): a lock-free get may move an entry meanwhile.
                oldest, (old_value, _) = self._entries.popitem(last=False)
                self._bytes -= _cost(oldest, old_value)

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

    def close(self) -> None:
        """Nothing to release; present for the Tier interface."""

    def _remove(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= _cost(key, value)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + _ENTRY_OVERHEAD
