"""TieredCache behaviour at the BaseCache level: layering, TTL, namespaces, fail-open."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import diskcache
import pytest
from langchain_core.language_models import FakeListLLM
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from llmcache import (
    ConfigurationError,
    DiskTier,
    LLMCacheError,
    MemoryTier,
    TieredCache,
    depends_on,
)
from llmcache.keys import cache_key
from llmcache.tiers import InlineAsync
from tests.conftest import FakeClock

ANSWER = [
    ChatGeneration(
        message=AIMessage(
            "41 g carbs",
            usage_metadata={"input_tokens": 20, "output_tokens": 10, "total_tokens": 30},
        )
    )
]


def _content(value: Any) -> str:
    assert isinstance(value, list)
    return str(value[0].message.content)


class BrokenTier(InlineAsync):
    """A tier whose backend is down: every operation raises."""

    name = "broken"

    def get(self, key: str) -> bytes | None:
        raise ConnectionError("backend down")

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        raise ConnectionError("backend down")

    def delete(self, key: str) -> None:
        raise ConnectionError("backend down")

    def clear(self, namespace: str) -> None:
        raise ConnectionError("backend down")

    def close(self) -> None:
        pass


def test_zero_config_touches_nothing_until_first_write(default_cache_dir: Path) -> None:
    cache = TieredCache()
    assert cache.lookup("p", "l") is None
    assert not default_cache_dir.exists()
    cache.update("p", "l", ANSWER)
    assert default_cache_dir.is_dir()
    assert _content(TieredCache().lookup("p", "l")) == "41 g carbs"  # a new instance reads L2


def test_l2_hit_is_promoted_into_l1(tmp_path: Path) -> None:
    TieredCache(l1=None, l2=DiskTier(tmp_path)).update("p", "l", ANSWER)
    l1 = MemoryTier()
    cache = TieredCache(l1=l1, l2=DiskTier(tmp_path))
    assert _content(cache.lookup("p", "l")) == "41 g carbs"
    assert len(l1) == 1
    assert _content(cache.lookup("p", "l")) == "41 g carbs"
    tiers = cache.stats().tiers
    assert (tiers["memory"].hits, tiers["memory"].misses) == (1, 1)
    assert (tiers["disk"].hits, tiers["disk"].misses) == (1, 0)
    assert cache.stats().tokens_saved == 60


def test_promotion_carries_the_remaining_ttl(tmp_path: Path, clock: FakeClock) -> None:
    writer = TieredCache(l1=None, l2=DiskTier(tmp_path), ttl=100, clock=clock)
    writer.update("p", "l", ANSWER)
    clock.advance(60)
    l1 = MemoryTier(clock=clock)
    reader = TieredCache(l1=l1, l2=DiskTier(tmp_path), ttl=100, clock=clock)
    assert reader.lookup("p", "l") is not None
    key = cache_key("default", *_prompt_pair())
    assert l1.get(key) is not None
    clock.advance(41)  # 101 s after the write: past the entry's life, though only 41 s in L1
    assert l1.get(key) is None
    assert reader.lookup("p", "l") is None


def _prompt_pair() -> tuple[str, str]:
    return "p", "l"


def test_ttl_is_driven_by_the_injected_clock(clock: FakeClock) -> None:
    cache = TieredCache(l1=MemoryTier(clock=clock), l2=None, ttl=10, clock=clock)
    cache.update("p", "l", ANSWER)
    clock.advance(9)
    assert cache.lookup("p", "l") is not None
    clock.advance(2)
    assert cache.lookup("p", "l") is None


def test_mutating_a_hit_never_changes_the_cache() -> None:
    cache = TieredCache(l2=None)
    cache.update("p", "l", ANSWER)
    first = cache.lookup("p", "l")
    assert first is not None
    first[0].message.content = "poisoned"  # type: ignore[attr-defined]
    first[0].message.usage_metadata["total_tokens"] = -1  # type: ignore[attr-defined]
    first.append(Generation(text="extra"))
    second = cache.lookup("p", "l")
    assert second is not None
    assert len(second) == 1
    assert _content(second) == "41 g carbs"
    assert second[0].message.usage_metadata["total_tokens"] == 30  # type: ignore[attr-defined]
    assert first[0].message.id != second[0].message.id  # type: ignore[attr-defined]
    ANSWER[0].message.content = "41 g carbs"  # the caller's own object was never shared either


def test_update_does_not_keep_a_reference_to_the_callers_objects() -> None:
    generations = [ChatGeneration(message=AIMessage("original"))]
    cache = TieredCache(l2=None)
    cache.update("p", "l", generations)
    generations[0].message.content = "mutated after update"
    assert _content(cache.lookup("p", "l")) == "original"


def test_namespaces_isolate_and_clear_only_their_own(tmp_path: Path) -> None:
    a = TieredCache(l2=DiskTier(tmp_path), namespace="tenant-a")
    b = TieredCache(l2=DiskTier(tmp_path), namespace="tenant-b")
    a.update("p", "l", ANSWER)
    assert b.lookup("p", "l") is None
    b.update("p", "l", [ChatGeneration(message=AIMessage("b's answer"))])
    a.clear()
    assert a.lookup("p", "l") is None
    assert _content(b.lookup("p", "l")) == "b's answer"
    assert (
        _content(TieredCache(l1=None, l2=DiskTier(tmp_path), namespace="tenant-b").lookup("p", "l"))
        == "b's answer"
    )


def test_a_broken_tier_is_a_miss_never_an_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TieredCache(l1=BrokenTier(), l2=DiskTier(tmp_path))
    assert cache.lookup("p", "l") is None
    cache.update("p", "l", ANSWER)
    assert _content(cache.lookup("p", "l")) == "41 g carbs"  # the disk tier still serves
    cache.clear()
    stats = cache.stats().tiers["broken"]
    assert stats.errors >= 4
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "broken" in r.getMessage()
    ]
    assert len(warnings) == 3  # once per kind of operation (get, set, clear), not once per call


async def test_a_broken_tier_on_the_async_path(tmp_path: Path) -> None:
    cache = TieredCache(l1=BrokenTier(), l2=None)
    assert await cache.alookup("p", "l") is None
    await cache.aupdate("p", "l", ANSWER)
    await cache.aclear()
    assert cache.stats().tiers["broken"].errors == 3


def _disk_key(prompt: str = "p", llm_string: str = "l") -> str:
    return cache_key("default", prompt, llm_string)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda good: good[: len(good) // 2],  # truncated
        lambda good: b"\x00" * 40,  # garbage
        lambda good: good[:-3] + b"}}}",  # flipped tail
        lambda good: b"LLMC\x01\x00" + b'{"p": [{"type": "SystemMessage"}]}',  # foreign class
    ],
    ids=["truncated", "garbage", "tampered-body", "foreign-class"],
)
def test_corrupt_disk_values_are_a_miss_then_refill(tmp_path: Path, corrupt: Any) -> None:
    TieredCache(l1=None, l2=DiskTier(tmp_path)).update("p", "l", ANSWER)
    raw = diskcache.Cache(str(tmp_path))
    good = raw.get(_disk_key())
    raw.set(_disk_key(), corrupt(good))
    raw.close()
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    assert cache.lookup("p", "l") is None
    stats = cache.stats()
    assert stats.tiers["disk"].corrupt + stats.errors == 1
    cache.update("p", "l", ANSWER)  # the refill
    assert _content(cache.lookup("p", "l")) == "41 g carbs"


def test_a_foreign_pickled_value_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    raw = diskcache.Cache(str(tmp_path))
    raw.set(_disk_key(), Exploit())
    raw.close()
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    assert cache.lookup("p", "l") is None
    assert not marker.exists()
    assert cache.stats().tiers["disk"].corrupt == 1


def test_with_a_secret_a_value_copied_from_another_key_is_rejected(tmp_path: Path) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path), secret="s" * 32)
    cache.update("question A", "l", [ChatGeneration(message=AIMessage("answer A"))])
    raw = diskcache.Cache(str(tmp_path))
    raw.set(_disk_key("question B"), raw.get(_disk_key("question A")))
    raw.close()
    assert cache.lookup("question B", "l") is None
    assert cache.stats().tiers["disk"].corrupt == 1
    assert _content(cache.lookup("question A", "l")) == "answer A"
    # Without a secret the key-bound checksum refuses the same copy (a forger
    # could recompute it: that is what the HMAC is for).
    unsigned = TieredCache(l1=None, l2=DiskTier(tmp_path / "u"), secret=None)
    unsigned.update("question A", "l", [ChatGeneration(message=AIMessage("answer A"))])
    raw = diskcache.Cache(str(tmp_path / "u"))
    raw.set(_disk_key("question B"), raw.get(_disk_key("question A")))
    raw.close()
    assert unsigned.lookup("question B", "l") is None
    assert unsigned.stats().tiers["disk"].corrupt == 1


def test_secret_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCACHE_SECRET", "e" * 32)
    TieredCache(l1=None, l2=DiskTier(tmp_path)).update("p", "l", ANSWER)
    monkeypatch.delenv("LLMCACHE_SECRET")
    reader = TieredCache(l1=None, l2=DiskTier(tmp_path))
    assert reader.lookup("p", "l") is None  # signed values need the secret to be trusted
    assert reader.stats().tiers["disk"].corrupt == 1


def test_values_that_cannot_be_stored_exactly_are_skipped() -> None:
    cache = TieredCache(l2=None)
    odd = [ChatGeneration(message=AIMessage("x"), generation_info={"handle": object()})]
    cache.update("p", "l", odd)  # no exception into the caller
    assert cache.lookup("p", "l") is None
    assert cache.stats().errors == 1
    cache.update("p", "l", [])  # nothing to store: an empty list would read as an empty hit
    assert cache.lookup("p", "l") is None


def test_large_answers_round_trip_compressed(tmp_path: Path) -> None:
    long = [ChatGeneration(message=AIMessage("bibimbap " * 5000))]
    TieredCache(l1=None, l2=DiskTier(tmp_path)).update("p", "l", long)
    raw = diskcache.Cache(str(tmp_path))
    stored = raw.get(_disk_key())
    raw.close()
    assert len(stored) < 5000
    assert (
        _content(TieredCache(l1=None, l2=DiskTier(tmp_path)).lookup("p", "l")) == "bibimbap " * 5000
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": "has space"},
        {"ttl": 0},
        {"ttl": -5},
        {"l1": None, "l2": None},
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as raised:
        TieredCache(**kwargs)
    assert isinstance(raised.value, LLMCacheError)


def test_l2_accepts_a_path(tmp_path: Path) -> None:
    cache = TieredCache(l2=str(tmp_path / "as-string"))
    cache.update("p", "l", ANSWER)
    assert (tmp_path / "as-string").is_dir()
    assert isinstance(cache.tiers[1], DiskTier)


def test_plain_llms_are_cached_too(tmp_path: Path) -> None:
    llm = FakeListLLM(
        responses=["first answer", "second answer"], cache=TieredCache(l2=DiskTier(tmp_path))
    )
    assert llm.invoke("tell me") == "first answer"
    assert llm.invoke("tell me") == "first answer"  # a hit: the fake would have said "second"
    fresh = FakeListLLM(
        responses=["first answer", "second answer"],
        cache=TieredCache(l1=None, l2=DiskTier(tmp_path)),
    )
    assert fresh.invoke("tell me") == "first answer"
    assert fresh.i == 0  # served from disk: the model was never called


async def test_plain_llms_async(tmp_path: Path) -> None:
    llm = FakeListLLM(responses=["a", "b", "c"], cache=TieredCache(l2=DiskTier(tmp_path)))
    first = await asyncio.gather(llm.ainvoke("q1"), llm.ainvoke("q2"))
    again = await asyncio.gather(llm.ainvoke("q1"), llm.ainvoke("q2"))
    assert first == again


def test_mutating_a_promoted_hit_never_changes_l1(tmp_path: Path) -> None:
    TieredCache(l1=None, l2=DiskTier(tmp_path)).update("p", "l", ANSWER)
    cache = TieredCache(l2=DiskTier(tmp_path))
    from_disk = cache.lookup("p", "l")  # parsed from disk, promoted into L1
    assert from_disk is not None
    from_disk[0].message.content = "poisoned"  # type: ignore[attr-defined]
    from_disk[0].message.usage_metadata["total_tokens"] = -1  # type: ignore[attr-defined]
    from_memory = cache.lookup("p", "l")
    assert _content(from_memory) == "41 g carbs"
    assert from_memory[0].message.usage_metadata["total_tokens"] == 30  # type: ignore[index]
    assert cache.stats().tiers["memory"].hits == 1
    assert cache.stats().tokens_saved == 60


class _CountedFlows:
    """Counts the flows a cache drives (peeked hits drive none)."""

    def __init__(self, cache: TieredCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        layers = cache._layers
        run, arun = layers.run, layers.arun

        def counted_run(flow: Any) -> Any:
            self.count += 1
            return run(flow)

        async def counted_arun(flow: Any) -> Any:
            self.count += 1
            return await arun(flow)

        monkeypatch.setattr(layers, "run", counted_run)
        monkeypatch.setattr(layers, "arun", counted_arun)


async def test_a_memory_hit_is_answered_without_a_flow_and_counted_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = TieredCache(l1=MemoryTier(), l2=DiskTier(tmp_path))
    flows = _CountedFlows(cache, monkeypatch)
    assert cache.lookup("p", "l") is None  # a miss walks the tiers
    cache.update("p", "l", ANSWER)
    assert flows.count == 2
    assert _content(cache.lookup("p", "l")) == "41 g carbs"
    assert _content(await cache.alookup("p", "l")) == "41 g carbs"
    assert flows.count == 2  # both hits came from memory with no flow
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.tokens_saved) == (2, 1, 60)
    assert (stats.tiers["memory"].hits, stats.tiers["memory"].misses) == (2, 1)
    assert (stats.tiers["disk"].hits, stats.tiers["disk"].misses) == (0, 1)


def test_an_expired_memory_entry_is_not_peeked_but_walked(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory tier's own clock never moves: only the record says it expired.
    cache = TieredCache(l1=MemoryTier(), l2=DiskTier(tmp_path), ttl=10, clock=clock)
    cache.update("p", "l", ANSWER)
    flows = _CountedFlows(cache, monkeypatch)
    clock.advance(11)
    assert cache.lookup("p", "l") is None
    assert flows.count == 1
    memory = cache.stats().tiers["memory"]
    assert (memory.hits, memory.misses) == (0, 1)  # counted once, by the walk


def test_a_dependent_memory_entry_is_peeked_only_while_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = TieredCache(l1=MemoryTier(), l2=None)
    with depends_on("menu:7"):
        assert cache.lookup("p", "l") is None
        cache.update("p", "l", ANSWER)
        flows = _CountedFlows(cache, monkeypatch)
        assert _content(cache.lookup("p", "l")) == "41 g carbs"  # checked by the walk
        assert _content(cache.lookup("p", "l")) == "41 g carbs"  # known current: peeked
        assert flows.count == 1
        cache.invalidate("menu:7")
        assert cache.lookup("p", "l") is None  # the peek sees the store moved on
        assert flows.count == 2


class _FailingMemory(MemoryTier):
    def get(self, key: str) -> bytes | None:
        raise RuntimeError("memory read failed")


def test_a_failing_memory_read_is_a_miss_counted_once() -> None:
    cache = TieredCache(l1=_FailingMemory(), l2=None)
    assert cache.lookup("p", "l") is None  # the peek gives up; the walk counts the failure
    memory = cache.stats().tiers["memory"]
    assert (memory.errors, memory.misses, memory.hits) == (1, 1, 0)


# -- the decoded-record memo of a top tier that hands back fresh bytes ----------


def test_a_repeated_disk_hit_reuses_the_record_decoded_from_the_same_bytes(
    tmp_path: Path,
) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    cache.update("p", "l", ANSWER)
    key = _disk_key()
    layers = cache._layers
    first, _ = layers.run(layers.get_flow(key))
    second, _ = layers.run(layers.get_flow(key))
    assert first is not None and second is not None
    assert first.parsed and not second.parsed
    assert second.record is first.record  # the tier was read, the decode skipped
    stats = cache.stats().tiers["disk"]
    assert (stats.hits, stats.misses) == (2, 0)  # still a disk hit, counted as one


def test_the_memo_never_answers_instead_of_the_tier(tmp_path: Path) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    other = TieredCache(l1=None, l2=DiskTier(tmp_path))  # another process, in effect
    cache.update("p", "l", ANSWER)
    assert _content(cache.lookup("p", "l")) == "41 g carbs"
    other.update("p", "l", [ChatGeneration(message=AIMessage("12 g fat"))])
    assert _content(cache.lookup("p", "l")) == "12 g fat"  # an overwrite is seen at once
    other.clear()
    assert cache.lookup("p", "l") is None  # and so is a delete


def test_mutating_a_repeated_disk_hit_never_changes_the_next(tmp_path: Path) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    cache.update("p", "l", ANSWER)
    for _ in range(3):
        hit = cache.lookup("p", "l")
        assert _content(hit) == "41 g carbs"
        assert hit is not None
        hit[0].message.content = "poisoned"  # type: ignore[attr-defined]
        hit[0].message.usage_metadata["total_tokens"] = -1  # type: ignore[attr-defined]
    assert cache.stats().tokens_saved == 90


def test_a_signed_value_copied_under_another_key_is_rejected_after_a_memo_hit(
    tmp_path: Path,
) -> None:
    secret = "s" * 32
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path), secret=secret)
    cache.update("p", "l", ANSWER)
    assert cache.lookup("p", "l") is not None  # decoded, verified and kept
    disk = DiskTier(tmp_path)
    disk.set(_disk_key("q"), disk.get(_disk_key()) or b"")  # the same bytes under another key
    assert cache.lookup("q", "l") is None  # verified for its own key, and refused
    assert cache.stats().tiers["disk"].corrupt == 1
    disk.close()


def test_the_memo_is_bounded_and_off_under_an_in_process_tier(tmp_path: Path) -> None:
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    memo = cache._layers.decoded
    assert memo is not None
    memo.max_entries = 3
    for index in range(10):
        cache.update(f"p{index}", "l", ANSWER)
        assert cache.lookup(f"p{index}", "l") is not None
    assert 1 <= len(memo._entries) <= 3
    assert _disk_key("p9") in memo._entries
    big = [ChatGeneration(message=AIMessage(os.urandom(memo.max_bytes // 8).hex()))]
    cache.update("big", "l", big)
    assert cache.lookup("big", "l") is not None
    assert _disk_key("big") not in memo._entries  # one value may not push out the rest
    assert _disk_key("p9") in memo._entries
    assert TieredCache(l2=DiskTier(tmp_path))._layers.decoded is None  # L1 keeps records


def test_peeked_memory_hits_are_timed_by_sample() -> None:
    cache = TieredCache(l2=None)
    cache.update("p", "l", ANSWER)
    for _ in range(64):
        assert cache.lookup("p", "l") is not None
    memory = cache.stats().tiers["memory"]
    assert memory.hits == 64
    assert len(cache._layers._counters[0]._latencies) == 64 // 8  # one read in eight
    assert memory.latency_p50_us > 0
