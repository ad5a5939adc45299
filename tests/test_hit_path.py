"""The memory hit path: entries keep their stored bytes, first hits keep nothing,
answers read again are served from a bounded set of templates, and every hit is
still exactly what the model returned, fresh each time."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.load import dumpd, load
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from llmcache import DiskTier, MemoryTier, TieredCache
from llmcache.generations import build_owned, compile_template, dump_generations
from llmcache.hot_templates import HotTemplates
from llmcache.keys import cache_key
from llmcache.serialization import Encoded

LLM = "llm-string"
SECRET = "s" * 32


def chat(i: int, *, n: int = 1) -> list[ChatGeneration]:
    """An answer with usage, metadata, a tool call and ``n`` generations."""
    return [
        ChatGeneration(
            message=AIMessage(
                f"answer {i}.{g}: " + "rice and vegetables " * 20,
                id=f"chatcmpl-{i}",
                tool_calls=[{"name": "menu", "args": {"item": i, "n": [1, 2]}, "id": f"c{i}"}],
                usage_metadata={"input_tokens": 11, "output_tokens": 7, "total_tokens": 18},
                response_metadata={
                    "model_name": "gpt-4o-mini",
                    "token_usage": {"prompt_tokens": 11, "completion_tokens": 7},
                    "seed": 2**70 + i,  # past 64 bits: parsed exactly, never as a float
                },
            ),
            generation_info={"finish_reason": "stop", "index": g},
        )
        for g in range(n)
    ]


def _same(got: Any, expected: list[ChatGeneration]) -> None:
    """Everything the model returned, message ids apart (each hit gets a fresh one)."""
    assert isinstance(got, list) and len(got) == len(expected)
    for hit, original in zip(got, expected, strict=True):
        assert type(hit) is type(original)
        assert hit.model_dump(exclude={"message": {"id"}}) == original.model_dump(
            exclude={"message": {"id"}}
        )
        assert hit.message.id != original.message.id


def _held(tier: MemoryTier, key: str) -> Encoded:
    value = tier._entries[key][0]
    assert type(value) is Encoded
    return value


@pytest.mark.parametrize("secret", [None, SECRET])
def test_memory_keeps_the_stored_bytes_and_every_hit_is_the_answer(secret: str | None) -> None:
    tier = MemoryTier()
    cache = TieredCache(l1=tier, l2=None, secret=secret)
    cache.update("p", LLM, chat(1, n=2))
    held = _held(tier, cache_key("default", "p", LLM))
    assert held.body > 0 and held.state.payload is None  # no parsed payload is kept
    hits = [cache.lookup("p", LLM) for _ in range(4)]  # first, admitted, templated, templated
    for hit in hits:
        _same(hit, chat(1, n=2))
    ids = {generation.message.id for hit in hits for generation in hit}  # type: ignore[union-attr]
    assert len(ids) == 8
    assert held.state.payload is None  # still nothing but the bytes


def test_mutating_any_hit_never_changes_the_next() -> None:
    cache = TieredCache(l1=MemoryTier(), l2=None)
    cache.update("p", LLM, chat(2))
    for _ in range(4):  # through every path: first read, admission, kept template
        hit = cache.lookup("p", LLM)
        _same(hit, chat(2))
        message = hit[0].message  # type: ignore[index, attr-defined]
        message.content = "changed"
        message.tool_calls[0]["args"]["n"].append(3)
        message.response_metadata["token_usage"]["prompt_tokens"] = 0
        hit[0].generation_info["finish_reason"] = "changed"  # type: ignore[index]
    _same(cache.lookup("p", LLM), chat(2))


def test_a_big_cache_keeps_few_tracked_objects_and_first_hits_keep_none() -> None:
    # Every dict, list and object a cache keeps is walked by each full collection.
    entries = 2000
    cache = TieredCache(l1=MemoryTier(max_entries=entries + 1, max_bytes=1 << 40), l2=None)
    answers = [chat(i) for i in range(entries)]
    gc.collect()
    before = len(gc.get_objects())
    for i, answer in enumerate(answers):
        cache.update(f"prompt {i}", LLM, answer)
    del answers
    gc.collect()
    after_writes = len(gc.get_objects())
    for i in range(entries):  # one first hit on each, results dropped
        assert cache.lookup(f"prompt {i}", LLM) is not None
    gc.collect()
    after_hits = len(gc.get_objects())
    # An InMemoryCache keeps about a dozen per entry (generations, messages, their dicts).
    assert (after_writes - before) / entries <= 4
    assert after_hits - after_writes <= entries / 100


def test_a_kept_template_holds_a_handful_of_tracked_objects() -> None:
    # Up to 4,096 templates of hot answers are kept, and every full collection
    # walks each one's tracked objects: its copies are dicts and tuples of
    # immutable items, which the collector does not track.
    payload = json.loads(json.dumps(dump_generations(chat(6))))
    gc.collect()
    before = len(gc.get_objects())
    kept = [compile_template(json.loads(json.dumps(payload)), owned=False) for _ in range(200)]
    gc.collect()
    per_template = (len(gc.get_objects()) - before) / len(kept)
    assert per_template <= 20  # closures: 47 for this answer
    first, second = kept[0].build(), kept[0].build()
    _same(first, chat(6))
    first[0].message.tool_calls[0]["args"]["n"].append(3)  # type: ignore[attr-defined]
    first[0].message.response_metadata["token_usage"]["prompt_tokens"] = 0  # type: ignore[attr-defined]
    _same(kept[0].build(), chat(6))  # a build shares no container with another
    _same(second, chat(6))


def test_a_template_is_kept_from_the_second_read_and_never_outlives_its_entry() -> None:
    tier = MemoryTier()
    cache = TieredCache(l1=tier, l2=None)
    cache.update("p", LLM, chat(3))
    cache.lookup("p", LLM)
    assert len(cache._hot) == 0  # read once: nothing kept
    cache.lookup("p", LLM)
    assert len(cache._hot) == 1  # read again: its template is kept
    _same(cache.lookup("p", LLM), chat(3))
    cache.update("p", LLM, chat(4))  # a new answer under the same key
    for _ in range(3):
        _same(cache.lookup("p", LLM), chat(4))


def test_kept_templates_are_bounded_least_recently_used_first() -> None:
    hot = HotTemplates(max_entries=2)
    payload = dump_generations(chat(5))
    derived: list[dict[str, Any]] = [{}, {}, {}]
    for i in range(3):
        hot.put(f"k{i}", derived[i], compile_template(payload, owned=False), payload)
    assert len(hot) == 2
    assert hot.get("k0", derived[0]) is None  # the oldest went
    assert hot.get("k2", derived[2]) is not None
    assert hot.get("k2", {}) is None  # another version of the entry: not its template
    assert not hot.admit("k9") and hot.admit("k9")  # the second read admits


def test_kept_templates_are_bounded_by_bytes_too() -> None:
    payload = dump_generations(chat(6))
    hot = HotTemplates(max_entries=100, max_bytes=16 * 8000)
    for i in range(50):
        hot.put(f"k{i}", {}, compile_template(payload, owned=False), payload)
    assert 0 < len(hot) < 50


def test_a_promoted_disk_hit_is_held_as_bytes_and_read_back_alike(tmp_path: Path) -> None:
    TieredCache(l2=DiskTier(tmp_path)).update("p", LLM, chat(7, n=2))
    tier = MemoryTier()
    fresh = TieredCache(l1=tier, l2=DiskTier(tmp_path))  # another process's view
    _same(fresh.lookup("p", LLM), chat(7, n=2))  # from disk, promoted
    assert _held(tier, cache_key("default", "p", LLM)).state.payload is None
    for _ in range(3):
        _same(fresh.lookup("p", LLM), chat(7, n=2))
    assert fresh.stats().tiers["memory"].hits == 3


def test_a_compressed_answer_keeps_its_payload_and_reads_alike() -> None:
    tier = MemoryTier()
    cache = TieredCache(l1=tier, l2=None, compress_threshold=64)
    cache.update("p", LLM, chat(8))
    assert _held(tier, cache_key("default", "p", LLM)).body == 0
    for _ in range(3):
        _same(cache.lookup("p", LLM), chat(8))


@pytest.mark.parametrize(
    "generations",
    [
        chat(9, n=3),
        [Generation(text="plain", generation_info={"logprobs": None})],
        [ChatGeneration(message=AIMessage([{"type": "text", "text": "blocks"}, "and text"]))],
    ],
    ids=["chat", "plain", "content-blocks"],
)
@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_building_from_an_own_parse_equals_langchains_own_load(generations: Any) -> None:
    # build_owned skips pydantic validation: what it builds must equal what
    # LangChain's validating loader makes of the same answer.
    built, _, _ = build_owned(json.loads(json.dumps(dump_generations(generations))))
    classes = [Generation, ChatGeneration, AIMessage]
    expected = [load(dumpd(generation), allowed_objects=classes) for generation in generations]
    for mine, theirs in zip(built, expected, strict=True):
        assert type(mine) is type(theirs)
        if isinstance(theirs, ChatGeneration):
            theirs.message.id = mine.message.id  # type: ignore[attr-defined]
        assert mine == theirs
        assert mine.model_dump() == theirs.model_dump()


def test_usage_and_cost_are_counted_on_every_path() -> None:
    cache = TieredCache(l1=MemoryTier(), l2=None)
    cache.update("p", LLM, chat(10))
    for _ in range(3):
        cache.lookup("p", LLM)
    stats = cache.stats()
    assert stats.tokens_saved == 3 * 18
    one = TieredCache(l1=MemoryTier(), l2=None)
    one.update("p", LLM, chat(10))
    one.lookup("p", LLM)
    assert stats.cost_saved_nanos == 3 * one.stats().cost_saved_nanos > 0


def test_answers_parsed_from_a_lower_tier_file_no_template(tmp_path: Path) -> None:
    # Each read of a disk top tier with no memo parses anew (another derived
    # dict): a template filed for one would never be served, only compiled.
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path))
    cache._layers.decoded = None
    cache.update("p", LLM, chat(11))
    for _ in range(4):
        _same(cache.lookup("p", LLM), chat(11))
    assert len(cache._hot) == 0
