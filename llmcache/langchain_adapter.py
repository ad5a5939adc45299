"""TieredCache: LangChain's ``BaseCache`` face over the tier engine.

This is the only module of the engine's path that imports LangChain's cache
interface. It turns (prompt, llm_string) into a canonical key, generations
into a stored payload and back, and drives the flows of ``tiers.Layers``
with blocking calls (``lookup``/``update``) or awaits (``alookup``/``aupdate``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache

from llmcache.backends.disk import DiskTier
from llmcache.coalesce import Coalescer, WaitBound, remote_leases
from llmcache.config import (
    DEFAULT,
    Default,
    check_ttl,
    default_directory,
    is_redis_tier,
    resolve_l1,
    resolve_l2,
)
from llmcache.errors import ConfigurationError, SerializationError, TierError
from llmcache.generations import compile_template, dump_generations
from llmcache.invalidation import (
    DependencyRules,
    DiskVersions,
    MemoryVersions,
    PendingSnapshots,
    VersionStore,
    current_dependencies,
    validate_dependency,
)
from llmcache.keys import KeyMemo, validate_namespace
from llmcache.serialization import DEFAULT_COMPRESS_THRESHOLD, Record, Signer
from llmcache.stats import CacheStats, Counters
from llmcache.tiers import Flow, Layers, Tier

if TYPE_CHECKING:
    from llmcache.semantic.tier import SemanticHit, SemanticTier

__all__ = ["TieredCache", "default_directory"]


logger = logging.getLogger("llmcache")
_warned_unsigned_shared = False


class TieredCache(BaseCache):
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
        semantic: SemanticTier | None = None,
    ) -> None:
        self.namespace = validate_namespace(namespace)
        self.ttl = check_ttl(ttl)
        tiers = [tier for tier in (resolve_l1(l1), resolve_l2(l2)) if tier is not None]
        if not tiers:
            raise ConfigurationError("at least one tier is needed (l1 and l2 are both None)")
        if isinstance(secret, Default):
            signer = Signer.from_env()
        else:
            signer = None if secret is None else Signer.from_secret(secret)
        if signer is None and any(is_redis_tier(tier) for tier in tiers):
            _warn_unsigned_shared()
        self._layers = Layers(
            tiers,
            versions=versions if versions is not None else _default_versions(tiers),
            signer=signer,
            clock=clock,
            compress_threshold=compress_threshold,
        )
        self._rules = dependencies
        self._pending = PendingSnapshots()
        self._counters = Counters("cache")
        self._keys = KeyMemo()
        self._coalescer: Coalescer | None = None
        if coalesce:
            self._coalescer = Coalescer(
                wait=coalesce_wait,
                lease=coalesce_lease,
                remote=remote_leases(tiers, coalesce_lease),
            )
            self._coalescer.attach(self._layers)
        self._semantic = semantic
        if semantic is not None:
            # Consulted only after the exact tiers miss; its entries point at exact entries.
            disk = next((tier for tier in tiers if isinstance(tier, DiskTier)), None)
            semantic.attach(self._layers, None if disk is None else disk.path, _record_text)

    @property
    def tiers(self) -> Sequence[Tier]:
        return self._layers.tiers

    # -- BaseCache ------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        answer, flow = self._lookup(prompt, llm_string)
        return answer if flow is None else self._layers.run(flow)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        answer, flow = self._lookup(prompt, llm_string)
        return answer if flow is None else await self._layers.arun(flow)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._layers.run(self._update_flow(prompt, llm_string, return_val))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self._layers.arun(self._update_flow(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        """Remove this cache's namespace from every tier, and nothing else."""
        self._layers.run(self._clear_flow())

    async def aclear(self, **kwargs: Any) -> None:
        await self._layers.arun(self._clear_flow())

    def _clear_flow(self) -> Flow[None]:
        yield from self._layers.clear_flow(self.namespace)
        if self._semantic is not None:
            yield from self._semantic.clear_flow(self.namespace)

    # -- beyond BaseCache -----------------------------------------------------

    def invalidate(self, *names: str) -> None:
        """Every entry that depends on one of ``names`` is stale from now on, in every tier.

        One version bump per name: O(1), no scan. Unlike lookups this does not
        fail open: if the version store cannot be reached, TierError is raised,
        because a silent failure here would mean serving stale answers.
        """
        checked = _dependency_names(names)
        try:
            self._layers.versions.bump(self.namespace, checked)
        except Exception as exc:
            raise TierError(f"could not invalidate {_listed(checked)}: {exc}") from exc

    def gc(self) -> dict[str, dict[str, int]]:
        """Delete this namespace's expired, stale and garbled entries, tier by tier.

        Stale entries are skipped at once on every read; this reclaims the
        space of those nobody reads again. It scans the namespace, so it is a
        maintenance job (``llmcache gc``), never part of ``invalidate``.
        Returns, per tier that can list its keys, what was removed and kept.
        """
        report: dict[str, dict[str, int]] = {}
        for index, tier in enumerate(self.tiers):
            list_keys = getattr(tier, "keys", None)
            if callable(list_keys):
                keys = list_keys(self.namespace)
                report[tier.name] = self._layers.run(
                    self._layers.sweep_flow(index, self.namespace, keys)
                )
        return report

    async def ainvalidate(self, *names: str) -> None:
        """The async twin of :meth:`invalidate`."""
        checked = _dependency_names(names)
        try:
            await self._layers.versions.abump(self.namespace, checked)
        except Exception as exc:
            raise TierError(f"could not invalidate {_listed(checked)}: {exc}") from exc

    def stats(self) -> CacheStats:
        """Hits, misses, errors and latency per tier; tokens saved by hits."""
        counters = self._counters
        return CacheStats(
            lookups=counters.get("hits") + counters.get("misses"),
            hits=counters.get("hits"),
            misses=counters.get("misses"),
            errors=counters.get("errors"),
            tokens_saved=counters.get("tokens_saved"),
            tiers=self._layers.stats(),
            extra={
                **(self._coalescer.counts() if self._coalescer is not None else {}),
                **(self._semantic.counts() if self._semantic is not None else {}),
            },
        )

    def reset_stats(self) -> None:
        self._counters.reset()
        self._layers.reset_stats()
        if self._coalescer is not None:
            self._coalescer.counters.reset()
        if self._semantic is not None:
            self._semantic.reset_stats()

    def close(self) -> None:
        self._layers.close()

    async def aclose(self) -> None:
        await self._layers.aclose()

    def __repr__(self) -> str:
        tiers = ", ".join(f"{tier.name}={type(tier).__name__}" for tier in self.tiers)
        return f"TieredCache(namespace={self.namespace!r}, {tiers}, ttl={self.ttl})"

    # -- shared by the sync and async paths -----------------------------------

    def _lookup(
        self, prompt: str, llm_string: str
    ) -> tuple[RETURN_VAL_TYPE | None, Flow[RETURN_VAL_TYPE | None] | None]:
        """The answer when memory alone can give it (no flow), else the flow that looks."""
        key = self._keys.key(self.namespace, prompt, llm_string)
        dependencies = self._dependencies(prompt, llm_string)
        if dependencies is None:
            self._counters.add("misses")
            return None, None
        record = self._layers.peek(key, self.namespace)
        if record is not None:
            return self._answer(record, owned=False, retained=True), None
        return None, self._lookup_flow(key, dependencies, prompt, llm_string)

    def _lookup_flow(
        self, key: str, dependencies: frozenset[str], prompt: str, llm_string: str
    ) -> Flow[RETURN_VAL_TYPE | None]:
        coalescer = self._coalescer
        mark = coalescer.completed if coalescer is not None else 0
        hit, snapshot = yield from self._layers.get_flow(key, self.namespace, dependencies)
        if hit is None and self._semantic is not None:
            found = yield from self._semantic.lookup_flow(
                self._layers, self.namespace, prompt, llm_string
            )
            if found is not None:
                return self._semantic_answer(*found)
        if hit is None and coalescer is not None and snapshot is not None:
            # A miss: lead the call, or wait for the identical one in flight.
            hit = yield from coalescer.join_flow(
                key,
                snapshot,
                mark,
                coalescer.bound(prompt, llm_string),
                lambda: self._layers.get_flow(key, self.namespace, dependencies),
            )
        if hit is None:
            if dependencies and snapshot is not None:
                self._pending.remember(key, snapshot)
            self._counters.add("misses")
            return None
        return self._answer(hit.record, owned=hit.parsed, retained=hit.retained)

    def _update_flow(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> Flow[int]:
        dependencies = self._dependencies(prompt, llm_string)
        if not return_val or dependencies is None:
            return 0  # an empty list would read back as a hit with no answer
        key = self._keys.key(self.namespace, prompt, llm_string)
        versions = self._pending.take(key) if dependencies else None
        try:
            payload = dump_generations(return_val)
            written = yield from self._layers.put_flow(
                key,
                self.namespace,
                payload,
                ttl=self.ttl,
                dependencies=dependencies,
                versions=versions,
            )
        except SerializationError as exc:
            # A value we cannot store exactly is not stored; the call still succeeds.
            self._counters.failure("errors", "encode", exc)
            payload, written = None, 0
        if self._coalescer is not None:  # written first: other processes read it on our word
            yield from self._coalescer.finish_flow(key, payload, versions)
        if written and self._semantic is not None:
            text = getattr(return_val[0], "text", None)
            yield from self._semantic.update_flow(
                self.namespace, prompt, llm_string, key, text if isinstance(text, str) else None
            )
        return written

    def _semantic_answer(self, hit: Any, match: SemanticHit) -> RETURN_VAL_TYPE | None:
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
        names = current_dependencies()
        if self._rules is None:
            return names
        try:
            derived = _dependency_names(self._rules(prompt, llm_string))
        except Exception as exc:
            # Not knowing what an answer depends on, we can neither serve nor store it.
            self._counters.failure("errors", "dependency rules", exc)
            return None
        return names | derived

    def _answer(self, record: Record, *, owned: bool, retained: bool) -> RETURN_VAL_TYPE | None:
        """Fresh generations built from a hit's record (None, a miss, if it cannot be).

        ``owned``: nobody else holds the record's payload yet (just parsed);
        ``retained``: the record lives on in this process, so its compiled
        template is kept with it for the next hit.
        """
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
                self._counters.failure("errors", "decode generations", exc)
                self._counters.add("misses")
                return None
            if retained:
                derived["generations"] = template
                # The template holds all that later hits need: keeping the parsed
                # payload too would hold every answer twice (template first, so a
                # thread that finds no payload finds the template).
                record.payload = None
        self._counters.add_hit(template.tokens)
        return template.build()


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


def _dependency_names(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, str):
        raise ConfigurationError("dependencies are a collection of names, not one string")
    return frozenset(validate_dependency(name) for name in names)


def _listed(names: frozenset[str], most: int = 5) -> str:
    """Names for an error message: a few, and how many more."""
    shown = sorted(names)[:most]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(repr(name[:80]) for name in shown) + more


def _default_versions(tiers: Sequence[Tier]) -> VersionStore:
    """Versions shared as widely as the widest tier: Redis, else the disk's host, else memory."""
    for tier in reversed(tiers):
        if is_redis_tier(tier):  # no import: redis is an optional extra
            from llmcache.backends.redis_versions import RedisVersions

            return RedisVersions(tier)  # type: ignore[arg-type]
        if isinstance(tier, DiskTier):
            return DiskVersions(tier.path)
    return MemoryVersions()


def _warn_unsigned_shared() -> None:
    """Once per process: a shared store without a secret trusts whoever can write to it."""
    global _warned_unsigned_shared
    if not _warned_unsigned_shared:
        _warned_unsigned_shared = True
        logger.warning(
            "llmcache: a Redis L2 with no LLMCACHE_SECRET: anyone who can write to that"
            " server can plant answers that every process will serve. Set LLMCACHE_SECRET"
            " (README, 'What it guarantees') to sign and verify every stored value."
        )
