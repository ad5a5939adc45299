"""NodeCache: LangGraph's node cache (``langgraph.cache.base.BaseCache``) over the engine.

``graph.compile(cache=NodeCache())`` keeps the results of nodes that have a
``CachePolicy`` in memory over disk (or Redis), so they survive restarts and
are shared by every process (and, through Redis, every host) that opens the
same store. LangGraph asks for a whole step's keys in one ``get`` and
stores each finished node's writes with ``set``; both run here as lockstep
engine flows, so a step costs one Redis round trip, not one per node.

Values: LangGraph passes the node's writes as live objects and leaves their
serialization to the cache. Its own serializer can fall back to pickle and
rebuild classes named in the stored bytes; this face ignores it and stores
JSON that decodes through an allowlist (``llmcache.node_values``), signed
with the engine's HMAC like every other value.

Dependencies: a node's result depends on the names of the enclosing
``depends_on`` block (around ``graph.invoke``) and on those ``dependencies``
gives for the node; ``invalidate(name)`` makes exactly those results stale,
in every process. ``clear(namespaces)`` of some nodes is a version bump too
(each node's entries depend on a name of their own), so it is O(1) and
reaches every process and tier without a scan.

Coalescing: not applied. LangGraph reads all of a step's keys in one ``get``
and only then runs the missing nodes, from another thread or task than the
one that asked; a follower's wait would hold up its whole step, a get that
led several keys could wait on another process leading them in the other
order, and a node that fails is never reported to the cache (no ``set``),
which would leave followers waiting out their bound. Two identical node runs
at once both run; the second ``set`` writes the same value again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from langgraph.cache.base import BaseCache, FullKey, Namespace

from llmcache.config import DEFAULT, Default
from llmcache.engine import dependency_names
from llmcache.errors import ConfigurationError, SerializationError
from llmcache.face import EngineFace
from llmcache.invalidation import VersionStore
from llmcache.keys import part_key
from llmcache.node_values import ValueTypes, dump_writes, load_writes
from llmcache.tiers import Flow, Hit, Tier

__all__ = ["NodeCache", "NodeDependencies"]

Writes = list[tuple[str, Any]]
#: What a node's results depend on, by node name: a mapping or a function of the name.
NodeDependencies = Mapping[str, Iterable[str]] | Callable[[str], Iterable[str]]

_FACE = "langgraph"
# The implicit dependency of every entry of one LangGraph namespace (one node):
# ``clear(namespaces)`` bumps it.
_NODE_DEPENDENCY = "llmcache.langgraph.node:"


class NodeCache(EngineFace, BaseCache[Writes]):
    """LangGraph's node cache in tiers: L1 in memory, L2 on disk or Redis.

    The constructor takes what ``TieredCache`` takes (``l1``, ``l2`` as a
    tier, a directory or a ``redis://`` URL, ``namespace``, ``ttl``,
    ``secret``), plus ``types``: the pydantic models and dataclasses that
    node results may hold (see ``llmcache.node_values``), and
    ``dependencies``: per node name, the names its results depend on. ``ttl``
    applies to nodes whose ``CachePolicy`` gives none.
    Nothing is opened or connected until the first call.
    """

    def __init__(
        self,
        *,
        l1: Tier | Default | None = DEFAULT,
        l2: Tier | str | os.PathLike[str] | Default | None = DEFAULT,
        namespace: str = "langgraph",
        ttl: float | None = None,
        secret: str | bytes | Default | None = DEFAULT,
        types: Iterable[type] | Mapping[str, type] = (),
        dependencies: NodeDependencies | None = None,
        versions: VersionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            l1=l1,
            l2=l2,
            namespace=namespace,
            ttl=ttl,
            secret=secret,
            versions=versions,
            clock=clock,
            coalesce=False,  # why: the module docstring
        )
        self.types = types if isinstance(types, ValueTypes) else ValueTypes(types)
        if dependencies is not None and not (
            callable(dependencies) or isinstance(dependencies, Mapping)
        ):
            raise ConfigurationError("dependencies is a mapping of node names, or a function")
        self._rules = dependencies

    # -- langgraph.cache.base.BaseCache ---------------------------------------------

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, Writes]:
        found, flows = self._get(keys)
        if flows:
            hits = self._engine.run_many([flow for _, flow in flows])
            found.update(self._answers(flows, hits))
        return found

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, Writes]:
        found, flows = self._get(keys)
        if flows:
            hits = await self._engine.arun_many([flow for _, flow in flows])
            found.update(self._answers(flows, hits))
        return found

    def set(self, pairs: Mapping[FullKey, tuple[Writes, int | None]]) -> None:
        flows = self._set(pairs)
        if flows:
            self._engine.run_many(flows)

    async def aset(self, pairs: Mapping[FullKey, tuple[Writes, int | None]]) -> None:
        flows = self._set(pairs)
        if flows:
            await self._engine.arun_many(flows)

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Every node's results (None), or those of the nodes ``namespaces`` name."""
        if namespaces is None:
            self._engine.run(self._engine.clear_flow())
        else:
            self._engine.invalidate([_node_dependency(ns) for ns in namespaces])

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        if namespaces is None:
            await self._engine.arun(self._engine.clear_flow())
        else:
            await self._engine.ainvalidate([_node_dependency(ns) for ns in namespaces])

    # invalidate, stats, close and the rest: EngineFace's.

    # -- shared by the sync and async paths -----------------------------------------

    def _get(
        self, keys: Sequence[FullKey]
    ) -> tuple[dict[FullKey, Writes], list[tuple[FullKey, Flow[Hit | None]]]]:
        """The answers memory alone gives, and a lookup flow for each other key."""
        found: dict[FullKey, Writes] = {}
        flows: list[tuple[FullKey, Flow[Hit | None]]] = []
        for full in keys:
            key, dependencies = self._key(full), self._dependencies(full[0])
            if dependencies is None:
                self._engine.counters.add("misses")
                continue
            record = self._engine.peek(key)
            if record is not None:
                writes = self._load(record.payload)
                if writes is not None:
                    found[full] = writes
                continue
            flows.append((full, self._engine.lookup_flow(key, dependencies, 0.0)))
        return found, flows

    def _answers(
        self, flows: list[tuple[FullKey, Flow[Hit | None]]], hits: list[Hit | None]
    ) -> dict[FullKey, Writes]:
        found: dict[FullKey, Writes] = {}
        for (full, _), hit in zip(flows, hits):
            if hit is not None:
                writes = self._load(hit.record.payload)
                if writes is not None:
                    found[full] = writes
        return found

    def _load(self, payload: Any) -> Writes | None:
        """Fresh writes from a stored payload (None, a miss, if it does not rebuild)."""
        counters = self._engine.counters
        try:
            writes = load_writes(payload, self.types)
        except SerializationError as exc:
            counters.failure("errors", "decode node writes", exc)
            counters.add("misses")
            return None
        counters.add_hit(0)
        return writes

    def _set(self, pairs: Mapping[FullKey, tuple[Writes, int | None]]) -> list[Flow[int]]:
        flows: list[Flow[int]] = []
        for full, (writes, ttl) in pairs.items():
            key, dependencies = self._key(full), self._dependencies(full[0])
            if dependencies is None:
                continue
            try:
                payload = dump_writes(writes, self.types)
            except SerializationError as exc:
                # Not storable exactly: not stored, and the node simply runs next time.
                self._engine.counters.failure("errors", "encode node writes", exc)
                self._engine.run(self._engine.abandon_flow(key))  # drops its miss's snapshot
                continue
            ttl_seconds = None if ttl is None else float(ttl)
            flows.append(self._engine.store_flow(key, payload, dependencies, ttl_seconds))
        return flows

    def _key(self, full: FullKey) -> str:
        namespace, key = full
        return part_key(self.namespace, _FACE, *namespace, key)

    def _dependencies(self, namespace: Namespace) -> frozenset[str] | None:
        """The node's dependencies: its own name's, the rules', the enclosing block's.

        None when the rules fail: not knowing what a result depends on, we can
        neither serve nor store it.
        """
        names = {_node_dependency(namespace)}
        rules = self._rules
        if rules is not None and namespace:
            node = namespace[-1]
            try:
                if isinstance(rules, Mapping):
                    names.update(dependency_names(rules.get(node, ())))
                else:
                    names.update(dependency_names(rules(node)))
            except Exception as exc:
                self._engine.counters.failure("errors", "node dependencies", exc)
                return None
        return self._engine.dependencies(names)


def _node_dependency(namespace: Namespace) -> str:
    """The dependency every entry of one LangGraph namespace (one node) carries."""
    if not isinstance(namespace, (tuple, list)) or not all(isinstance(p, str) for p in namespace):
        raise ConfigurationError(f"a LangGraph namespace is a tuple of strings: {namespace!r}")
    joined = "\x1f".join(namespace)
    if len(joined) > 300:  # dependency names are bounded; a digest keeps it exact
        joined = hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()
    return _NODE_DEPENDENCY + joined
