"""The memory bound is the memory used: behind TieredCache, what a MemoryTier holds stays
within 1.25x of ``max_bytes`` (and not far under it) after writes and after hits, as
``tracemalloc`` counts it, for chat answers, tool calls and plain completions."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Callable

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from llmcache import MemoryTier, TieredCache
from llmcache.backends.memory import entry_size

MAX_BYTES = 12 << 20
LLM = "llm-string"
_VOCABULARY = [
    "".join(random.Random(n).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2 + n % 8))
    for n in range(3000)
]
Answer = Callable[[int], list[ChatGeneration] | list[Generation]]


def words(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_VOCABULARY) for _ in range(count))


def chat_answer(i: int) -> list[ChatGeneration]:
    """About 2 KB of text that compresses as prose does, with usage and metadata."""
    message = AIMessage(
        content=words(i, 400)[:2000],
        usage_metadata={"input_tokens": 20, "output_tokens": 500, "total_tokens": 520},
        response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop"},
    )
    return [ChatGeneration(message=message)]


def tool_answer(i: int) -> list[ChatGeneration]:
    calls = [
        {"name": f"tool_{k}", "args": {"q": words(i + k, 5), "n": k}, "id": f"c{i}_{k}"}
        for k in range(3)
    ]
    message = AIMessage(content="", tool_calls=calls)  # type: ignore[arg-type]
    return [ChatGeneration(message=message)]


def plain_answer(i: int) -> list[Generation]:
    return [Generation(text=words(i, 400)[:2000])]


@pytest.mark.parametrize("answer", [chat_answer, tool_answer, plain_answer])
def test_what_the_tier_holds_is_what_it_charges(answer: Answer) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tier = MemoryTier(max_entries=10**7, max_bytes=MAX_BYTES)
        cache = TieredCache(l1=tier, l2=None)
        written = 0
        while written < 3 * max(len(tier), 1) or written < 500:  # fill it, then twice over
            cache.update(f"prompt number {written}", LLM, answer(written))
            written += 1
        gc.collect()
        after_writes = tracemalloc.get_traced_memory()[0] - base
        held = len(tier)
        hits = 0
        for i in range(written):  # one lookup of every answer: the held ones hit
            hits += cache.lookup(f"prompt number {i}", LLM) is not None
        gc.collect()
        after_hits = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert hits == held == len(tier)
    assert tier.size_bytes <= MAX_BYTES
    write_ratio, hit_ratio = after_writes / MAX_BYTES, after_hits / MAX_BYTES
    print(f"{answer.__name__}: {held} entries; traced {write_ratio:.2f}x max_bytes after")
    print(f"  writes, {hit_ratio:.2f}x after hits ({after_hits / held:.0f} B an entry)")
    assert write_ratio <= 1.25
    assert hit_ratio <= 1.25
    # Honest both ways: a tier that charged far more than it holds would waste its budget.
    assert hit_ratio >= 0.6


def test_raw_bytes_are_charged_their_own_size() -> None:
    small, large = entry_size("ns:k", b"x"), entry_size("ns:k", b"x" * 10_000)
    assert large - small == 9_999
