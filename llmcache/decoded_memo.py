"""Records decoded from recent stored bytes, reused when a tier returns the same bytes."""

from __future__ import annotations

import threading

from llmcache.serialization import Record

__all__ = ["DecodedMemo"]


class DecodedMemo:
    """The records decoded from recent stored bytes, by storage key.

    Decoding (MAC check, JSON parse, allowlist check, then the compiled
    template) is a pure function of the key and the stored bytes under one
    secret. When a top tier that hands back fresh bytes on every read (disk,
    or Redis with no L1 above it) returns the very bytes decoded before under
    that key, the record decoded then is the answer, with its template, and
    the repeated hit skips all of that work. The tier is still read on every
    lookup, so an overwrite, a delete or an expiry anywhere is seen at once:
    this saves work on identical bytes, it never answers instead of the tier.
    Bounded by entries and by the bytes it holds; emptied whole when full
    (forgetting is always safe). Not used under an in-process tier, whose
    promoted copy already keeps the record.
    """

    def __init__(self, max_entries: int = 1024, max_bytes: int = 8 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[str, tuple[bytes, Record]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str, raw: bytes) -> Record | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == raw:
            return entry[1]
        return None

    def put(self, key: str, raw: bytes, record: Record) -> None:
        size = len(raw)
        if size > self.max_bytes // 16:
            return  # one large value must not push out everything else
        with self._lock:
            if len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes:
                self._entries.clear()
                self._bytes = 0
            previous = self._entries.get(key)
            if previous is not None:
                self._bytes -= len(previous[0])
            self._entries[key] = (raw, record)
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
