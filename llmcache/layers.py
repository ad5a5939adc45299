"""The layering of tiers: written once, driven twice.

:class:`Layers` holds an ordered stack of tiers (fastest first) and the
generator flows over them: lookup order, decoding and verifying, promotion
of a lower-tier hit upward with its remaining TTL, write-through, sweeping.
A flow yields storage operations (:mod:`llmcache.tiers`) and receives their
results; ``Layers.run`` drives it with blocking calls and ``Layers.arun``
with awaits, so the sync and async paths cannot drift apart (the pattern of
httpx's ``auth_flow``).

Fail-open lives in the drivers: an operation that raises is counted, logged
once, and answered with ``None``, which every flow reads as a miss.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

from llmcache import serialization
from llmcache.decoded_memo import DecodedMemo
from llmcache.errors import ConfigurationError, IntegrityError
from llmcache.invalidation import MemoryVersions, VersionStore
from llmcache.lockstep import run_in_lockstep
from llmcache.serialization import Record, Signer
from llmcache.stats import Counters, TierStats
from llmcache.tiers import (
    Clear,
    Delete,
    Flow,
    Get,
    Hit,
    InlineAsync,
    Needs,
    Op,
    Put,
    ReadVersions,
    Tier,
)

__all__ = ["Layers"]

T = TypeVar("T")


class Layers:
    """An ordered stack of tiers (fastest first) with the flows over them."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        versions: VersionStore | None = None,
        signer: Signer | None = None,
        clock: Callable[[], float] = time.time,
        compress_threshold: int = serialization.DEFAULT_COMPRESS_THRESHOLD,
    ) -> None:
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"tier names must be distinct: {names}")
        self.tiers = tuple(tiers)
        self.versions = MemoryVersions() if versions is None else versions
        self.signer = signer
        self.clock = clock
        self.compress_threshold = compress_threshold
        # Operations address their target by index; the version store comes last.
        self._targets: tuple[Any, ...] = (*self.tiers, self.versions)
        self._versions_index = len(self.tiers)
        self._counters = tuple(Counters(target.name) for target in self._targets)
        # Local tiers are read on the spot (see InlineAsync): a hit on them
        # never passes through a driver, which halves the cost of a memory hit.
        self._inline = tuple(isinstance(tier, InlineAsync) for tier in self.tiers)
        top_keeps_records = bool(self.tiers) and (
            getattr(self.tiers[0], "returns_stored_object", False) is True
        )
        self._peekable = bool(self._inline) and self._inline[0] and top_keeps_records
        self._peeks = 0
        # Under a top tier that keeps records, a promoted copy already does the memo's job.
        self.decoded = None if top_keeps_records else DecodedMemo()

    def attach(self, target: Any) -> int:
        """Add a target that is not a tier (it has a ``name``, ``close`` and ``aclose``).

        Returns the index its operations (:class:`TargetOp`) address it by.
        It is closed with the layers; its counters are not a tier's.
        """
        self._targets = (*self._targets, target)
        self._counters = (*self._counters, Counters(target.name))
        return len(self._targets) - 1

    # -- drivers --------------------------------------------------------------

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow with blocking calls."""
        try:
            op = next(flow)
            while True:
                op = flow.send(self._perform(op))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _perform(self, op: Op) -> Any:
        """Run one operation with a blocking call; a failure is counted and reads as None."""
        counters = self._counters[op.index]
        start = time.perf_counter()
        try:
            result = op.run(self._targets[op.index])
        except Exception as exc:  # fail-open: a broken tier is a miss
            counters.failure("errors", op.what, exc)
            return None
        if op.what == "get":
            counters.observe(time.perf_counter() - start)
        return result

    def run_many(self, flows: Sequence[Flow[T]]) -> list[T]:
        """Drive several flows with blocking calls, in lockstep (see ``llmcache.lockstep``)."""
        return run_in_lockstep(flows, self._targets, self._counters, self._perform)

    async def arun(self, flow: Flow[T]) -> T:
        """Drive a flow with awaits (no thread-pool hop)."""
        try:
            op = next(flow)
            while True:
                counters = self._counters[op.index]
                start = time.perf_counter()
                try:
                    result = await op.arun(self._targets[op.index])
                except Exception as exc:  # fail-open: a broken tier is a miss
                    counters.failure("errors", op.what, exc)
                    result = None
                else:
                    if op.what == "get":
                        counters.observe(time.perf_counter() - start)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- flows ----------------------------------------------------------------

    def peek(self, key: str, namespace: str) -> Record | None:
        """The top tier's record when it needs nothing beyond this process, else None.

        The commonest hit, answered without a flow (whose generators and
        driver would double its cost): an in-process top tier holding a record
        this process built or verified, unexpired, and either with no
        dependencies or already found current at this generation of the
        version store. Its payload is parsed from the bytes when first read
        (``serialization.Encoded``). Anything else returns None without
        counting a miss, and :meth:`get_flow` walks the tiers as usual.
        """
        raw = self.peek_encoded(key, namespace)
        return None if raw is None else raw.record

    def peek_encoded(self, key: str, namespace: str) -> serialization.Encoded | None:
        """What :meth:`peek` reads, before any record is made of it (counted as a hit).

        For a face that may answer from what it keeps beside the entry (a
        template, by the entry's ``state.derived``) without even a record.
        """
        if not self._peekable:
            return None
        counters = self._counters[0]
        # One read in eight is timed: an in-process read takes about as long as
        # timing it, and a sample gives the same percentiles.
        self._peeks = peeks = self._peeks + 1  # a lost increment under threads is harmless
        timed = not peeks & 7
        start = time.perf_counter() if timed else 0.0
        try:
            raw = self.tiers[0].get(key)
        except Exception:  # not counted here: the walk reads again, and counts that
            return None
        if timed:
            counters.observe(time.perf_counter() - start)
        if type(raw) is not serialization.Encoded or raw.key != key:
            return None
        state = raw.state  # the expiry and versions, without the payload
        if state.expires_at is not None and state.expired(self.clock()):
            return None
        if state.dependencies:
            generation = self._generation()
            if generation is None or state.derived.get("fresh_at") != (namespace, generation):
                return None
        counters.add("hits")
        return raw

    def get_flow(
        self, key: str, namespace: str = "", dependencies: Collection[str] = ()
    ) -> Flow[tuple[Hit | None, dict[str, int] | None]]:
        """Ask each tier in turn; promote a lower hit into the tiers above it.

        Returns the hit (or None) and, when the call has ``dependencies``, the
        versions they had *before* any tier was read: the snapshot a miss must
        store its answer under (None if the version store could not say).
        An entry whose own recorded versions are no longer current is stale:
        a miss for that tier, deleted there, and the search goes on below.
        """
        snapshot: dict[str, int] | None = {}
        if dependencies:
            # Local stores answer at once; a round trip only when one is needed.
            snapshot = self._peek(namespace, dependencies)
            if snapshot is None:
                snapshot = yield ReadVersions(self._versions_index, namespace, dependencies)
        known = dict(snapshot or {})
        for index, counters in enumerate(self._counters[: self._versions_index]):
            get = Get(index, key)
            raw = self._perform(get) if self._inline[index] else (yield get)
            if raw is None:
                counters.add("misses")
                continue
            now = self.clock()
            own = type(raw) is serialization.Encoded and raw.key == key
            # Parsed here: from stored bytes, or for this read from an in-process tier's.
            parsed = not own or raw.body > 0
            memo = self.decoded if index == 0 and not own else None
            record = None if memo is None else memo.get(key, raw)
            if record is not None:
                parsed = False  # decoded from these very bytes before, and kept
            else:
                try:
                    record = serialization.decode(raw, key=key, signer=self.signer)
                except IntegrityError as exc:
                    # Maybe another process's, under a secret we do not have: a
                    # miss here, but not ours to delete.
                    counters.failure("corrupt", "verify", exc)
                    counters.add("misses")
                    continue
                except Exception as exc:
                    # SerializationError: damaged. decode raises nothing else
                    # (tests/test_stored_bytes_fuzz.py), but a bug there must
                    # still be a miss, never an exception into the caller's call.
                    counters.failure("corrupt", "decode", exc)
                    counters.add("misses")
                    yield Delete(index, key)  # garbage: make room for a clean refill
                    continue
                if memo is not None:
                    memo.put(key, raw, record)
            if record.expired(now):
                counters.add("misses")
                continue
            if record.dependencies:
                # Checked already at this generation of the store? Then nothing
                # moved since: one comparison however many dependencies.
                generation = self._generation()
                checked = (namespace, generation)
                current: bool | None = True
                if generation is None or record.derived.get("fresh_at") != checked:
                    current = yield from self._current(record.dependencies, namespace, known)
                    if current and generation is not None:
                        record.derived["fresh_at"] = checked
                if not current:
                    counters.add("misses")
                    if current is None:
                        continue  # the versions are unknown right now: skip, keep it
                    counters.add("stale")
                    yield Delete(index, key)  # lazily reclaimed: this key only, no scan
                    continue
            counters.add("hits")
            if index:
                ttl = record.remaining_ttl(now)
                promoted = serialization.Encoded.of(raw, key=key, record=record)
                for upper in range(index):
                    yield Put(upper, key, promoted, ttl)
                    self._counters[upper].add("writes")
                retained = promoted.state is record  # else the bytes alone are kept
            else:
                # Kept in memory: an in-process tier's own record (not a payload
                # parsed for this read from its bytes), or the memo's.
                retained = not parsed or memo is not None
            return Hit(record, self.tiers[index].name, parsed, retained), snapshot
        return None, snapshot

    def _current(
        self, recorded: Mapping[str, int], namespace: str, known: dict[str, int]
    ) -> Generator[Op, Any, bool | None]:
        """Are the versions an entry recorded still the current ones? None: cannot tell."""
        needed = [name for name in recorded if name not in known]
        if needed:
            # Local stores answer at once; a round trip only when one is needed.
            found = self._peek(namespace, needed)
            if found is None:
                found = yield ReadVersions(self._versions_index, namespace, needed)
                if found is None:
                    return None
            known.update(found)
        for name, version in recorded.items():  # noqa: SIM110 - a loop: no generator on the hit path
            if known[name] != version:
                return False
        return True

    # Direct, non-blocking calls into the version store, made from inside a
    # flow; like every operation they fail open (here: "cannot say").

    def _generation(self) -> int | None:
        try:
            return self.versions.generation()
        except Exception as exc:
            self._counters[self._versions_index].failure("errors", "generation", exc)
            return None

    def _peek(self, namespace: str, names: Collection[str]) -> dict[str, int] | None:
        try:
            return self.versions.peek(namespace, names)
        except Exception as exc:
            self._counters[self._versions_index].failure("errors", "peek", exc)
            return None

    def put_flow(
        self,
        key: str,
        namespace: str,
        payload: Any,
        *,
        ttl: float | None,
        dependencies: Collection[str] = (),
        versions: Mapping[str, int] | None = None,
    ) -> Flow[int]:
        """Encode and write through. ``versions``: the miss-time snapshot, if there was one.

        With dependencies but no snapshot (an update with no lookup before it),
        the versions current now are recorded. If the version store cannot say,
        nothing is stored. Raises SerializationError before any write.
        """
        if dependencies and versions is None:
            versions = yield ReadVersions(self._versions_index, namespace, dependencies)
            if versions is None:
                return 0
        expires_at = None if ttl is None else self.clock() + ttl
        raw = self.encode(key, Record(payload, expires_at, dict(versions or {})))
        return (yield from self.set_flow(key, raw, ttl))

    def encode(self, key: str, record: Record) -> bytes:
        """The stored bytes for ``record`` under ``key``. Raises SerializationError."""
        return serialization.encode(
            record, key=key, signer=self.signer, compress_threshold=self.compress_threshold
        )

    def set_flow(self, key: str, raw: bytes, ttl: float | None) -> Flow[int]:
        """Write ``raw`` (from :meth:`encode`) through to every tier; returns how many took it."""
        written = 0
        for index, counters in enumerate(self._counters[: self._versions_index]):
            if (yield Put(index, key, raw, ttl)):
                counters.add("writes")
                written += 1
        return written

    def sweep_flow(
        self, index: int, namespace: str, keys: Iterable[str], needs: Needs | None = None
    ) -> Flow[dict[str, int]]:
        """Delete the expired, stale and garbled entries among ``keys`` of one tier.

        The lazy reclaim behind ``llmcache gc``: it reads every key it is given,
        so it is for a maintenance job, never for a request path. Values whose
        signature cannot be checked here are left alone. ``needs`` collects the
        dependency names of the entries kept (for the version store's retain).
        """
        needs = Needs() if needs is None else needs
        removed = {"expired": 0, "stale": 0, "corrupt": 0, "kept": 0}
        now = self.clock()
        known: dict[str, int] = {}
        for key in keys:
            raw = yield Get(index, key)
            if raw is None:
                continue
            try:
                record = serialization.decode(raw, key=key, signer=self.signer)
            except IntegrityError:
                removed["kept"] += 1
                needs.complete = False  # kept, and what it depends on is unknown
                continue
            except Exception:  # SerializationError, or a decoding bug: garbage either way
                reason = "corrupt"
            else:
                if record.expired(now):
                    reason = "expired"
                elif record.dependencies and (
                    (yield from self._current(record.dependencies, namespace, known)) is False
                ):
                    reason = "stale"
                else:
                    removed["kept"] += 1
                    needs.names.update(record.dependencies)
                    continue
            yield Delete(index, key)
            removed[reason] += 1
        return removed

    def delete_flow(self, key: str) -> Flow[None]:
        for index in range(len(self.tiers)):
            yield Delete(index, key)

    def clear_flow(self, namespace: str) -> Flow[None]:
        if self.decoded is not None:
            self.decoded.clear()  # not needed for correctness: frees what is gone
        for index in range(len(self.tiers)):
            yield Clear(index, namespace)
        # The namespace's version records go too (after its entries): with
        # random versions a record made again matches no entry, so this costs
        # nothing but lets a namespace's records be reclaimed at all.
        yield Clear(self._versions_index, namespace)

    # -- stats ----------------------------------------------------------------

    def stats(self) -> dict[str, TierStats]:
        tiers = self._counters[: self._versions_index]
        return {counters.name: counters.tier_snapshot() for counters in tiers}

    def version_errors(self) -> int:
        return self._counters[self._versions_index].get("errors")

    def tier_totals(self, counter: str) -> int:
        """One counter summed over the tiers."""
        return sum(counters.get(counter) for counters in self._counters[: self._versions_index])

    def other_errors(self) -> dict[str, int]:
        """Errors of the targets that are not tiers (the version store, attached ones), by name."""
        return {
            counters.name: counters.get("errors")
            for counters in self._counters[self._versions_index :]
        }

    def tap(self, sinks: Callable[[str], deque[float]]) -> None:
        """Copy every tier's lookup latencies (seconds) into ``sinks(tier name)`` from now on."""
        for counters in self._counters[: self._versions_index]:
            counters.tap(sinks(counters.name))

    def reset_stats(self) -> None:
        for counters in self._counters:
            counters.reset()

    def close(self) -> None:
        for target in self._targets:
            target.close()

    async def aclose(self) -> None:
        for target in self._targets:
            await target.aclose()
