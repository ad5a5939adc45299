"""A semantic hit through the real ChatOpenAI client makes no upstream call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmcache import DiskTier, SemanticTier, TieredCache
from llmcache.simulator import Simulator, SimulatorConfig
from tests.conftest import ChatFactory


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=5)) as simulator:
        yield simulator


def test_a_paraphrase_costs_no_request(sim: Simulator, chat: ChatFactory, tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), semantic=SemanticTier(mark=True))
    model = chat(cache)
    first = model.invoke("How do I reset my password?")
    assert sim.requests == 1
    second = model.invoke("What's the way to reset my password?")
    assert sim.requests == 1
    assert second.content == first.content
    assert second.response_metadata["llmcache_semantic"]["matched"] == "How do I reset my password?"
    model.invoke("How do I reset my password on Windows?")  # a guard vetoes it: a real call
    assert sim.requests == 2
    chat(cache, model="gpt-4o").invoke("What's the way to reset my password?")  # another model
    assert sim.requests == 3


async def test_ainvoke_paraphrases_under_gather(sim: Simulator, chat: ChatFactory) -> None:
    import asyncio

    cache = TieredCache(l2=None, semantic=SemanticTier())
    model = chat(cache)
    await model.ainvoke("How do I cancel my subscription?")
    replies = await asyncio.gather(
        model.ainvoke("How can I cancel my subscription?"),
        model.ainvoke("how do i cancel my subscription"),
        model.ainvoke("Hi, how do I cancel my subscription? Thanks"),
    )
    assert sim.requests == 1
    assert len({reply.content for reply in replies}) == 1
