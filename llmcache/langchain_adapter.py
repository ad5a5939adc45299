"""TieredCache: LangChain's ``BaseCache`` face over the engine.

It turns (prompt, llm_string) into a canonical key, generations into a
stored payload and back (``generations``), and LangChain's blocking and
async calls into runs of the engine's flows. Everything else (tiers,
versions, coalescing, failing open) is the engine's (``llmcache.engine``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache

from llmcache.backends.disk import DiskTier
from llmcache.coalesce import Coalescer, WaitBound
from llmcache.config import DEFAULT, Default, default_directory
from llmcache.engine import dependency_names
from llmcache.errors import SerializationError
from llmcache.face import UNSIGNED_SHARED_WARNING, EngineFace
from llmcache.generations import build_owned, compile_template, dump_generations
from llmcache.hot_templates import HotTemplates
from llmcache.invalidation import DependencyRules, VersionStore
from llmcache.keys import KeyMemo
from llmcache.layers import Layers
from llmcache.memoize import Memoizing
from llmcache.serialization import DEFAULT_COMPRESS_THRESHOLD, Record
from llmcache.stats import CacheStats
from llmcache.tiers import Flow, Hit, Tier

if TYPE_CHECKING:
    from llmcache.semantic.tier import SemanticHit, SemanticTier

__all__ = ["TieredCache", "default_directory"]


logger = logging.getLogger("llmcache")
_warned_unsigned_shared = False


class TieredCache(EngineFace, Memoizing, BaseCache):
    """An LLM cache in tiers: L1 in memory, L2 on disk or Redis.

    ``TieredCache()`` is an L1 MemoryTier over a DiskTier in
    :func:`default_directory`. Pass ``l1=None`` or ``l2=None`` to switch a
    tier off; ``l2`` also takes a ``redis://`` URL or a directory path.
    ``secret`` (default: ``$LLMCACHE_SECRET``) signs every stored value.
    Identical concurrent misses make one model call (``llmcache.coalesce``):
    followers wait for the leader's update at most ``coalesce_wait`` seconds
    (or a function of ``(prompt, llm_string)``; 0 for no waiting); with a Redis
    L2 the leader holds a lease of ``coalesce_lease`` seconds, kept while it
    lives. ``coalesce=False`` switches it off.
    With a disk or Redis L2, the counters of ``stats()`` are also added to the
    store every ``stats_interval`` seconds, at ``close()`` and at exit, so that
    ``llmcache stats`` shows every process's (``llmcache.fleet``; None: never).
    ``memoize`` caches plain functions' JSON results in the same tiers
    (``llmcache.memoize``), apart from the LLM entries.
    Nothing is opened, created or connected until the first call.
    """

    def __init__(
        self,
        *,
        l1: Tier | Default | None = DEFAULT,
        l2: Tier | str | os.PathLike[str] | Default | None = DEFAULT,
        namespace: str = "default",
        ttl: float | None = None,
        secret: str | bytes | Default | None = DEFAULT,
        dependencies: DependencyRules | None = None,
        versions: VersionStore | None = None,
        clock: Callable[[], float] = time.time,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        coalesce: bool = True,
        coalesce_wait: WaitBound = 30.0,
        coalesce_lease: float = 10.0,
        stats_interval: float | None = 10.0,
        semantic: SemanticTier | None = None,
    ) -> None:
        super().__init__(
            l1=l1,
            l2=l2,
            namespace=namespace,
            ttl=ttl,
            secret=secret,
            versions=versions,
            clock=clock,
            compress_threshold=compress_threshold,
            coalesce=coalesce,
            coalesce_wait=coalesce_wait,
            coalesce_lease=coalesce_lease,
            stats_interval=stats_interval,
            on_unsigned_shared=_warn_unsigned_shared,
        )
        self._rules = dependencies
        self._keys = KeyMemo()
        self._hot = HotTemplates()
        self._semantic = semantic
        if semantic is not None:
            # Consulted only after the exact tiers miss; its entries point at exact entries.
            disk = next((tier for tier in self.tiers if isinstance(tier, DiskTier)), None)
            semantic.attach(self._engine.layers, None if disk is None else disk.path, _record_text)

    @property
    def _layers(self) -> Layers:
        return self._engine.layers

    @property
    def _coalescer(self) -> Coalescer | None:
        return self._engine.coalescer

    # -- BaseCache ------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        answer, flow = self._lookup(prompt, llm_string)
        return answer if flow is None else self._engine.run(flow)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        answer, flow = self._lookup(prompt, llm_string)
        return answer if flow is None else await self._engine.arun(flow)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._engine.run(self._update_flow(prompt, llm_string, return_val))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self._engine.arun(self._update_flow(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        """Remove this cache's namespace from every tier, and nothing else."""
        self._engine.run(self._clear_flow())

    async def aclear(self, **kwargs: Any) -> None:
        await self._engine.arun(self._clear_flow())

    def _clear_flow(self) -> Flow[None]:
        self._hot.clear()  # not needed for correctness (a new entry is a new version): frees
        yield from self._engine.clear_flow()
        if self._semantic is not None:
            yield from self._semantic.clear_flow(self.namespace)

    # -- beyond BaseCache -----------------------------------------------------

    def stats(self) -> CacheStats:
        """Hits, misses, errors and latency per tier; tokens and cost saved by hits.

        ``print()`` it for a table; ``errors`` counts every error, the tiers' too.
        """
        stats = super().stats()
        if self._semantic is not None:
            stats.extra.update(self._semantic.counts())
        return stats

    def reset_stats(self) -> None:
        super().reset_stats()
        if self._semantic is not None:
            self._semantic.reset_stats()

    def _repr_tail(self) -> str:
        return f", ttl={self.ttl}"

    # -- shared by the sync and async paths -----------------------------------

    def _lookup(
        self, prompt: str, llm_string: str
    ) -> tuple[RETURN_VAL_TYPE | None, Flow[RETURN_VAL_TYPE | None] | None]:
        """The answer when memory alone can give it (no flow), else the flow that looks."""
        key = self._keys.key(self.namespace, prompt, llm_string)
        dependencies = self._dependencies(prompt, llm_string)
        if dependencies is None:
            self._engine.counters.add("misses")
            return None, None
        raw = self._engine.peek_encoded(key)
        if raw is not None:
            # An answer read again and again: its template, kept beside the entry.
            template = self._hot.get(key, raw.state.derived)
            if template is not None:
                self._engine.counters.add_hit(template.tokens, template.nanos)
                return template.build(), None
            # Parsed from memory's bytes for this read (private), or memory's own.
            record = raw.record
            return self._answer(record, owned=record.private, retained=True, key=key), None
        return None, self._lookup_flow(key, dependencies, prompt, llm_string)

    def _lookup_flow(
        self, key: str, dependencies: frozenset[str], prompt: str, llm_string: str
    ) -> Flow[RETURN_VAL_TYPE | None]:
        engine = self._engine
        read = yield from engine.read_flow(key, dependencies)
        if read.hit is None and self._semantic is not None:
            # After the exact tiers miss, before waiting on an identical call.
            found = yield from self._semantic.lookup_flow(
                engine.layers, self.namespace, prompt, llm_string
            )
            if found is not None:
                return self._semantic_answer(*found)
        hit = yield from engine.settle_flow(read, engine.wait_bound(prompt, llm_string))
        if hit is None:
            return None
        return self._answer(hit.record, owned=hit.parsed, retained=hit.retained, key=key)

    def _update_flow(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> Flow[int]:
        dependencies = self._dependencies(prompt, llm_string)
        if not return_val or dependencies is None:
            return 0  # an empty list would read back as a hit with no answer
        key = self._keys.key(self.namespace, prompt, llm_string)
        try:
            payload = dump_generations(return_val)
        except SerializationError as exc:
            # A value we cannot store exactly is not stored; the call still succeeds.
            self._engine.counters.failure("errors", "encode", exc)
            yield from self._engine.abandon_flow(key, retry=False)
            return 0
        written = yield from self._engine.store_flow(key, payload, dependencies)
        if written and self._semantic is not None:
            text = getattr(return_val[0], "text", None)
            yield from self._semantic.update_flow(
                self.namespace, prompt, llm_string, key, text if isinstance(text, str) else None
            )
        return written

    def _semantic_answer(self, hit: Hit, match: SemanticHit) -> RETURN_VAL_TYPE | None:
        """A semantic hit's generations, marked in ``response_metadata`` if asked."""
        answer = self._answer(hit.record, owned=hit.parsed, retained=hit.retained)
        if answer is not None and self._semantic is not None and self._semantic.mark:
            mark = {"similarity": round(match.similarity, 4), "matched": match.matched}
            for generation in answer:
                message = getattr(generation, "message", None)
                if message is not None:
                    message.response_metadata["llmcache_semantic"] = dict(mark)
        return answer

    def _dependencies(self, prompt: str, llm_string: str) -> frozenset[str] | None:
        """The enclosing ``depends_on`` names plus the rules' (None: do not cache this call)."""
        if self._rules is None:
            return self._engine.dependencies()
        try:
            derived = dependency_names(self._rules(prompt, llm_string))
        except Exception as exc:
            # Not knowing what an answer depends on, we can neither serve nor store it.
            self._engine.counters.failure("errors", "dependency rules", exc)
            return None
        return self._engine.dependencies(derived)

    def _answer(
        self, record: Record, *, owned: bool, retained: bool, key: str | None = None
    ) -> RETURN_VAL_TYPE | None:
        """Fresh generations built from a hit's record (None, a miss, if it cannot be).

        ``owned``: nobody else holds the record's payload yet (just parsed);
        ``retained``: the record lives on in this process, so its compiled
        template is kept with it for the next hit. Any other record (one
        parsed for this read, from memory's bytes or a lower tier's) keeps
        nothing with it: the template of an answer read again and again from
        memory is kept in ``_hot``, by ``key``, instead. (A record parsed from
        a lower tier's bytes is not filed there: memory, if it took the
        entry, is read next time, and without memory its next read is
        another parse, another ``derived``, which no kept template matches.)
        """
        if record.private:
            return self._answer_unkept(record, owned=owned, key=key)
        if not retained:
            return self._answer_unkept(record, owned=owned, key=None)
        derived = record.derived
        template = derived.get("generations")
        if template is None:
            payload = record.payload
            if payload is None:  # another thread compiled it meanwhile, and let it go
                template = derived.get("generations")
        if template is None:
            try:
                template = compile_template(payload, owned=owned, reusable=retained)
            except SerializationError as exc:
                self._engine.counters.failure("errors", "decode generations", exc)
                self._engine.counters.add("misses")
                return None
            if retained:
                derived["generations"] = template
                # The template holds all that later hits need: keeping the parsed
                # payload too would hold every answer twice (template first, so a
                # thread that finds no payload finds the template).
                record.payload = None
        self._engine.counters.add_hit(template.tokens, template.nanos)
        return template.build()

    def _answer_unkept(
        self, record: Record, *, owned: bool, key: str | None
    ) -> RETURN_VAL_TYPE | None:
        """Generations of a record nothing keeps: parsed for this read.

        A memory entry holds its bytes alone (``serialization.Encoded``),
        and shares ``derived`` with the record read from them: a first read
        builds from what it parsed and keeps nothing; a second one within
        the window compiles a template into ``_hot`` (not with no ``key``),
        which serves the reads after it. ``owned`` is False only when the
        read was handed to other callers too (coalesced followers): then
        each copies.
        """
        hot = self._hot
        template = None if key is None else hot.get(key, record.derived)
        try:
            if template is None and key is not None and hot.admit(key):
                payload = record.payload
                template = compile_template(payload, owned=owned, reusable=True)
                hot.put(key, record.derived, template, payload)
            if template is not None:  # the payload is not even parsed
                generations, tokens, nanos = template.build(), template.tokens, template.nanos
            elif owned:
                generations, tokens, nanos = build_owned(record.payload)
            else:
                template = compile_template(record.payload, owned=False, reusable=False)
                generations, tokens, nanos = template.build(), template.tokens, template.nanos
        except SerializationError as exc:
            self._engine.counters.failure("errors", "decode generations", exc)
            self._engine.counters.add("misses")
            return None
        self._engine.counters.add_hit(tokens, nanos)
        return generations


def _record_text(record: Record) -> str | None:
    """The first generation's text of a stored record (shadow mode compares it)."""
    try:
        template = record.derived.get("generations")
        if template is None and record.payload is not None:
            template = compile_template(record.payload, owned=False, reusable=False)
        built = template.build() if template is not None else []
    except SerializationError:
        return None
    return built[0].text if built else None


def _warn_unsigned_shared() -> None:
    """Once per process: a shared store without a secret trusts whoever can write to it."""
    global _warned_unsigned_shared
    if not _warned_unsigned_shared:
        _warned_unsigned_shared = True
        logger.warning(UNSIGNED_SHARED_WARNING)
