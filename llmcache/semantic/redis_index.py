"""The Redis index: redisvl on Redis with the search module, the scope as a TAG filter.

One search index per namespace (``llmcache-semantic:<namespace>``), over the
hashes under its own prefix, so clearing a namespace drops its index and its
documents and nothing else. Within it every query filters on the scope tag:
entries of two scopes never compete, and since a document's key is derived
from the exact entry it points at, two scopes never overwrite each other.
Accepts a URL (then it owns and closes the client) or a ready client.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcache.errors import TierError
from llmcache.semantic.index import Entry, Match, Vector

__all__ = ["RedisIndex"]

_PREFIX = "llmcache-semantic"


class RedisIndex:
    """A :class:`~llmcache.semantic.index.VectorIndex` on Redis (redisvl, exact FLAT search)."""

    name = "semantic-redis"

    def __init__(self, redis: Any, *, prefix: str = _PREFIX) -> None:
        self._owns_client = isinstance(redis, str)
        self._redis = redis
        self.prefix = prefix
        self._client: Any = None
        self._indexes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        if self._client is None:
            if self._owns_client:
                import redis as redis_py

                self._client = redis_py.Redis.from_url(self._redis)
            else:
                self._client = self._redis
        return self._client

    def _index(self, namespace: str, dimensions: int | None) -> Any:
        """The namespace's search index; created on first write (its vector size known then)."""
        with self._lock:
            index = self._indexes.get(namespace)
            if index is not None:
                return index
            from redisvl.index import SearchIndex
            from redisvl.schema import IndexSchema

            client = self._connection()
            name = f"{self.prefix}:{namespace}"
            if dimensions is None:
                try:
                    info = client.execute_command("FT.INFO", name)
                except Exception:
                    return None  # no index yet: nothing was ever added here
                dimensions = _dimensions(info)
            schema = IndexSchema.from_dict(
                {
                    "index": {"name": name, "prefix": f"{name}:", "storage_type": "hash"},
                    "fields": [
                        {"name": "scope", "type": "tag"},
                        {
                            "name": "vector",
                            "type": "vector",
                            "attrs": {
                                "dims": dimensions,
                                "distance_metric": "cosine",
                                "algorithm": "flat",
                                "datatype": "float32",
                            },
                        },
                    ],
                }
            )
            index = SearchIndex(schema, redis_client=client)
            index.create(overwrite=False)
            self._indexes[namespace] = index
            return index

    def _key(self, namespace: str, target: str) -> str:
        return f"{self.prefix}:{namespace}:{hashlib.sha256(target.encode()).hexdigest()[:32]}"

    def add(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            try:
                index = self._index(entry.namespace, int(entry.vector.shape[0]))
                index.load(
                    [
                        {
                            "scope": entry.scope,
                            "target": entry.target,
                            "text": entry.text,
                            "vector": np.asarray(entry.vector, "<f4").tobytes(),
                        }
                    ],
                    keys=[self._key(entry.namespace, entry.target)],
                )
            except Exception as exc:
                raise TierError(f"semantic index on Redis: {exc}") from exc

    def search(
        self, namespace: str, scope: str, vector: Vector, k: int, floor: float
    ) -> list[Match]:
        from redisvl.query import VectorQuery
        from redisvl.query.filter import Tag

        try:
            index = self._index(namespace, None)
            if index is None:
                return []
            query = VectorQuery(
                vector=np.asarray(vector, "<f4").tobytes(),
                vector_field_name="vector",
                return_fields=["text", "target", "vector_distance"],
                num_results=k,
                filter_expression=Tag("scope") == scope,
            )
            rows = index.query(query)
        except Exception as exc:
            raise TierError(f"semantic index on Redis: {exc}") from exc
        matches = [
            Match(1.0 - float(row["vector_distance"]), str(row["text"]), str(row["target"]))
            for row in rows
        ]
        return [m for m in sorted(matches, key=lambda m: -m.similarity) if m.similarity >= floor]

    def remove(self, namespace: str, target: str) -> None:
        try:
            self._connection().delete(self._key(namespace, target))
        except Exception as exc:
            raise TierError(f"semantic index on Redis: {exc}") from exc

    def clear(self, namespace: str) -> None:
        """Drop this namespace's index and its documents (and nobody else's)."""
        index = self._index(namespace, None)
        if index is not None:
            try:
                index.delete(drop=True)
            except Exception as exc:
                raise TierError(f"semantic index on Redis: {exc}") from exc
        with self._lock:
            self._indexes.pop(namespace, None)

    def count(self, namespace: str) -> int:
        client = self._connection()
        return sum(1 for _ in client.scan_iter(match=f"{self.prefix}:{namespace}:*", count=1000))

    def close(self) -> None:
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
            self._client = None
            self._indexes = {}


def _dimensions(info: Any) -> int:
    """The vector field's size from FT.INFO: flat lists of names and values (RESP2), or dicts.

    redis-py 8 answers FT.INFO with a dict, and its attributes may be dicts too.
    """

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            for name, item in value.items():
                name = name.decode() if isinstance(name, bytes) else name
                if isinstance(name, str) and name.lower() in ("dim", "dims", "dimension"):
                    return int(item)
            for item in value.values():
                found = walk(item)
                if found is not None:
                    return found
        if isinstance(value, list | tuple):
            items = list(value)
            for i, item in enumerate(items[:-1]):
                name = item.decode() if isinstance(item, bytes) else item
                if isinstance(name, str) and name.lower() in ("dim", "dims", "dimension"):
                    return int(items[i + 1])
            for item in items:
                found = walk(item)
                if found is not None:
                    return found
        return None

    found = walk(info)
    if found is None:
        raise TierError("semantic index on Redis: FT.INFO shows no vector dimension")
    return int(found)
