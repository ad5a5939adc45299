"""TieredByteStore: a LangChain ``ByteStore`` over the engine, for ``CacheBackedEmbeddings``.

``CacheBackedEmbeddings.from_bytes_store(embeddings, TieredByteStore(...),
namespace=model_name, query_embedding_cache=True)`` keeps embeddings in
memory over disk or Redis, signed, with a TTL, under the store's namespace.
``mget`` and ``mset`` run one engine flow per key in lockstep
(``Engine.run_many``), so a batch of texts costs one Redis round trip, not one
per text (the async twins get the same from the Redis tier's auto-batching).

Each stored value is ``{"k": key, "b": base64 of the bytes}`` in the engine's
envelope: the key is kept so that ``yield_keys`` can list keys, which the
hashed storage keys cannot give back. A value under the wrong key (a copy)
or that does not decode is a miss.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.stores import BaseStore

from llmcache.config import DEFAULT, Default
from llmcache.errors import ConfigurationError, SerializationError
from llmcache.face import EngineFace
from llmcache.invalidation import VersionStore
from llmcache.keys import part_key
from llmcache.serialization import Record, decode
from llmcache.tiers import Flow, Hit, Tier

__all__ = ["TieredByteStore"]

_FACE = "byte_store"


class TieredByteStore(EngineFace, BaseStore[str, bytes]):
    """A ``BaseStore[str, bytes]`` in tiers: L1 in memory, L2 on disk or Redis.

    The constructor takes what ``TieredCache`` takes (``l1``, ``l2`` as a
    tier, a directory or a ``redis://`` URL, ``namespace``, ``ttl`` in
    seconds for every value, ``secret``). Values written inside a
    ``depends_on`` block depend on its names (``invalidate``).
    Nothing is opened or connected until the first call.
    """

    def __init__(
        self,
        *,
        l1: Tier | Default | None = DEFAULT,
        l2: Tier | str | os.PathLike[str] | Default | None = DEFAULT,
        namespace: str = "embeddings",
        ttl: float | None = None,
        secret: str | bytes | Default | None = DEFAULT,
        versions: VersionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # No coalescing: a store has no "call in flight" to wait for; the
        # embeddings a miss leads to are computed by the caller, batched.
        super().__init__(
            l1=l1,
            l2=l2,
            namespace=namespace,
            ttl=ttl,
            secret=secret,
            versions=versions,
            clock=clock,
            coalesce=False,
        )

    # -- BaseStore ------------------------------------------------------------------

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        found, flows = self._mget(keys)
        if flows:
            hits = self._engine.run_many([flow for _, flow in flows])
            self._answers(keys, found, flows, hits)
        return found

    async def amget(self, keys: Sequence[str]) -> list[bytes | None]:
        found, flows = self._mget(keys)
        if flows:
            hits = await self._engine.arun_many([flow for _, flow in flows])
            self._answers(keys, found, flows, hits)
        return found

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        flows = self._mset(key_value_pairs)
        if flows:
            self._engine.run_many(flows)

    async def amset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        flows = self._mset(key_value_pairs)
        if flows:
            await self._engine.arun_many(flows)

    def mdelete(self, keys: Sequence[str]) -> None:
        flows = [self._engine.delete_flow(self._key(key)) for key in keys]
        if flows:
            self._engine.run_many(flows)

    async def amdelete(self, keys: Sequence[str]) -> None:
        flows = [self._engine.delete_flow(self._key(key)) for key in keys]
        if flows:
            await self._engine.arun_many(flows)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """The keys the widest tier holds (a scan: for maintenance, not a request path)."""
        for tier in reversed(self.tiers):
            list_keys = getattr(tier, "keys", None) or getattr(tier, "held_keys", None)
            if callable(list_keys):
                storage_keys = list_keys(self.namespace)
                break
        else:  # pragma: no cover - every tier of this package can list its keys
            return
        now = self._engine.layers.clock()
        for storage_key in storage_keys:
            raw = tier.get(storage_key)
            if raw is None:
                continue
            try:
                record = decode(raw, key=storage_key, signer=self._engine.layers.signer)
            except SerializationError:
                continue
            key = _stored_key(record)
            if (
                key is not None
                and not record.expired(now)
                and (prefix is None or key.startswith(prefix))
            ):
                yield key

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        for key in self.yield_keys(prefix=prefix):
            yield key

    # -- beyond BaseStore -----------------------------------------------------------

    def clear(self) -> None:
        """Remove this store's namespace from every tier, and nothing else."""
        self._engine.run(self._engine.clear_flow())

    # invalidate, stats, close and the rest: EngineFace's.

    # -- shared by the sync and async paths -----------------------------------------

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise ConfigurationError(f"a ByteStore key is a string, not {type(key).__name__}")
        return part_key(self.namespace, _FACE, key)

    def _mget(
        self, keys: Sequence[str]
    ) -> tuple[list[bytes | None], list[tuple[int, Flow[Hit | None]]]]:
        engine = self._engine
        dependencies = engine.dependencies()
        found: list[bytes | None] = [None] * len(keys)
        flows: list[tuple[int, Flow[Hit | None]]] = []
        for position, key in enumerate(keys):
            storage_key = self._key(key)
            record = engine.peek(storage_key)
            if record is not None:
                found[position] = self._value(record, key)
            else:
                flows.append((position, engine.lookup_flow(storage_key, dependencies, 0.0)))
        return found, flows

    def _answers(
        self,
        keys: Sequence[str],
        found: list[bytes | None],
        flows: list[tuple[int, Flow[Hit | None]]],
        hits: list[Hit | None],
    ) -> None:
        for (position, _), hit in zip(flows, hits):
            if hit is not None:
                found[position] = self._value(hit.record, keys[position])

    def _value(self, record: Record, key: str) -> bytes | None:
        """The bytes a record holds for ``key`` (None, a miss, if it holds anything else)."""
        counters = self._engine.counters
        held = record.derived.get("bytes")
        if held is not None:  # bytes are immutable: a record kept in memory shares them
            counters.add_hit(0)
            return held  # type: ignore[no-any-return]
        payload: Any = record.payload
        data = payload.get("b") if isinstance(payload, dict) else None
        try:
            if payload.get("k") != key or not isinstance(data, str):
                raise SerializationError("stored value is not this key's bytes")
            value = base64.b64decode(data, validate=True)
        except (SerializationError, binascii.Error, AttributeError) as exc:
            counters.failure("errors", "decode stored bytes", exc)
            counters.add("misses")
            return None
        record.derived["bytes"] = value
        counters.add_hit(0)
        return value

    def _mset(self, pairs: Sequence[tuple[str, bytes]]) -> list[Flow[int]]:
        engine = self._engine
        dependencies = engine.dependencies()
        flows: list[Flow[int]] = []
        for key, value in pairs:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ConfigurationError(f"a ByteStore value is bytes, not {type(value).__name__}")
            payload = {"k": key, "b": base64.b64encode(value).decode("ascii")}
            flows.append(engine.store_flow(self._key(key), payload, dependencies))
        return flows


def _stored_key(record: Record) -> str | None:
    payload = record.payload
    key = payload.get("k") if isinstance(payload, dict) else None
    return key if isinstance(key, str) else None
