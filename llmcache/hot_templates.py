"""The compiled templates of the answers hit again and again, and only those.

A memory entry keeps its stored bytes alone (``serialization.Encoded``); a
hit parses them and builds its generations from what it parsed
(``generations.build_owned``). That is the cheapest first hit and the
smallest entry, but an answer read over and over would be parsed and checked
on every read, where a compiled template (``generations.Template``) only
copies containers: about a third of the cost. So the face keeps templates
here, for a bounded set of answers, admitted on their second hit within a
window (a "doorkeeper"): a pass over many answers read once (a big cache's
first hits) compiles and keeps nothing, so it allocates no long-lived
objects for the garbage collector to walk, while a hot set of up to
``max_entries`` answers is served from templates.

A template is filed under its storage key together with the entry's
``derived`` dict, which is the identity of one stored version: an entry
rewritten or promoted anew has a new one, and the old template is not served
for it. Bounded by entries and by an estimate of the bytes held; the least
recently used go first. Safe under threads: reads take no lock (each dict
operation is atomic) and a lost race costs a compile, never a wrong answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from llmcache.backends.memory import json_size
from llmcache.generations import Template

__all__ = ["HotTemplates"]

# A template's own objects beside the payload it copies (parts, copy plans).
_TEMPLATE_OVERHEAD = 600


class HotTemplates:
    """Templates of recently re-read entries, by storage key; see the module docstring."""

    def __init__(self, max_entries: int = 4096, max_bytes: int = 32 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # key -> (the entry's derived dict, its template, the bytes charged)
        self._templates: OrderedDict[str, tuple[dict[str, Any], Template, int]] = OrderedDict()
        self._bytes = 0
        # Keys read once recently: a second read within the window admits a template.
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._templates)

    def get(self, key: str, derived: dict[str, Any]) -> Template | None:
        """The template of the entry whose ``derived`` dict this is, if kept."""
        held = self._templates.get(key)
        if held is None or held[0] is not derived:
            return None
        try:  # noqa: SIM105 - contextlib.suppress costs more than the move itself
            self._templates.move_to_end(key)
        except KeyError:
            pass  # dropped meanwhile by another thread: this read stands
        return held[1]

    def admit(self, key: str) -> bool:
        """Is this read of ``key`` the second within the window? (Else it is remembered.)"""
        seen = self._seen
        if key in seen:
            seen.discard(key)
            return True
        if len(seen) >= 2 * self.max_entries:
            seen.clear()  # forgetting is safe: it only delays an admission
        seen.add(key)
        return False

    def put(self, key: str, derived: dict[str, Any], template: Template, payload: Any) -> None:
        """Keep ``template`` (compiled from ``payload``) for the entry of ``derived``."""
        containers, leaves = json_size(payload)
        cost = _TEMPLATE_OVERHEAD + containers + leaves
        if cost > self.max_bytes // 16:
            return  # one large answer must not push out every other
        with self._lock:
            previous = self._templates.pop(key, None)
            if previous is not None:
                self._bytes -= previous[2]
            self._templates[key] = (derived, template, cost)
            self._bytes += cost
            while len(self._templates) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, _, charged) = self._templates.popitem(last=False)
                self._bytes -= charged

    def clear(self) -> None:
        with self._lock:
            self._templates.clear()
            self._seen.clear()
            self._bytes = 0
