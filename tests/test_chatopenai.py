"""End to end: the real ChatOpenAI client, real HTTP to the simulator, TieredCache in between.

The simulator counts requests, so every claimed hit is proven by a count that did not move.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from llmcache import DiskTier, TieredCache
from llmcache.simulator import Simulator, SimulatorConfig
from tests.conftest import ChatFactory


@pytest.fixture
def sim() -> Iterator[Simulator]:
    # One simulator per test: langchain-openai keeps one async HTTP client per
    # base URL across event loops, and each test has its own loop.
    with Simulator(SimulatorConfig(latency_ms=5)) as simulator:
        yield simulator


def test_invoke_hits_are_exact_and_fresh(sim: Simulator, chat: ChatFactory, tmp_path: Path) -> None:
    model = chat(TieredCache(l2=DiskTier(tmp_path)))
    first = model.invoke("nutrients of bibimbap")
    second = model.invoke("nutrients of bibimbap")
    assert sim.requests == 1
    assert second.content == first.content
    assert second.usage_metadata is not None and first.usage_metadata is not None
    assert second.usage_metadata["total_tokens"] == first.usage_metadata["total_tokens"]
    assert second.response_metadata["model_name"] == first.response_metadata["model_name"]
    assert second.id != first.id
    assert model.invoke("nutrients of bibimbap").id != second.id


def test_transport_settings_share_entries_but_temperature_does_not(
    sim: Simulator, chat: ChatFactory
) -> None:
    cache = TieredCache(l2=None)
    chat(cache).invoke("kimchi")
    chat(cache, max_retries=3, timeout=30).invoke("kimchi")
    assert sim.requests == 1
    chat(cache, temperature=0.9).invoke("kimchi")
    chat(cache, model="gpt-4o").invoke("kimchi")
    assert sim.requests == 3


async def test_ainvoke_under_gather_and_a_semaphore(
    sim: Simulator, chat: ChatFactory, tmp_path: Path
) -> None:
    model = chat(TieredCache(l2=DiskTier(tmp_path)))
    dishes = [f"dish {i}" for i in range(40)]
    limit = asyncio.Semaphore(8)

    async def ask(dish: str) -> BaseMessage:
        async with limit:
            return await model.ainvoke(dish)

    cold = await asyncio.gather(*(ask(d) for d in dishes))
    assert sim.requests == 40
    warm = await asyncio.gather(*(ask(d) for d in dishes))
    assert sim.requests == 40
    assert [m.content for m in warm] == [m.content for m in cold]


def test_batch_in_threads_then_abatch(sim: Simulator, chat: ChatFactory, tmp_path: Path) -> None:
    model = chat(TieredCache(l2=DiskTier(tmp_path)))
    prompts = [f"menu item {i}" for i in range(16)]
    cold = model.batch(prompts, config={"max_concurrency": 8})
    assert sim.requests == 16
    warm = asyncio.run(model.abatch(prompts))
    assert sim.requests == 16
    assert [m.content for m in warm] == [m.content for m in cold]


def test_n_greater_than_one_returns_every_generation(sim: Simulator, chat: ChatFactory) -> None:
    model = chat(TieredCache(l2=None), n=3, temperature=1)
    first = model.generate([[HumanMessage("three names for a cat")]])
    second = model.generate([[HumanMessage("three names for a cat")]])
    assert sim.requests == 1
    assert len(first.generations[0]) == len(second.generations[0]) == 3
    assert [g.text for g in second.generations[0]] == [g.text for g in first.generations[0]]


class NutrientLookup(BaseModel):
    """Look up the nutrients of a dish."""

    dish: str = Field(description="the dish name")
    grams: int


class Nutrients(BaseModel):
    carbs_g: float
    protein_g: float
    note: str


def test_tool_calls_and_usage_survive_the_disk_round_trip(
    sim: Simulator, chat: ChatFactory, tmp_path: Path
) -> None:
    first = chat(TieredCache(l2=DiskTier(tmp_path))).bind_tools([NutrientLookup]).invoke("bulgogi")
    assert isinstance(first, AIMessage) and first.tool_calls
    reader = chat(TieredCache(l1=None, l2=DiskTier(tmp_path))).bind_tools([NutrientLookup])
    second = reader.invoke("bulgogi")
    assert sim.requests == 1
    assert isinstance(second, AIMessage)
    assert second.tool_calls == first.tool_calls
    assert second.usage_metadata is not None and first.usage_metadata is not None
    assert second.usage_metadata["input_tokens"] == first.usage_metadata["input_tokens"]
    # Another tool list is another question.
    chat(TieredCache(l1=None, l2=DiskTier(tmp_path))).invoke("bulgogi")
    assert sim.requests == 2


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_round_trips(
    sim: Simulator, chat: ChatFactory, tmp_path: Path, method: str
) -> None:
    def structured(cache: TieredCache) -> Any:
        return chat(cache).with_structured_output(Nutrients, method=method)  # type: ignore[arg-type]

    first = structured(TieredCache(l2=DiskTier(tmp_path))).invoke("japchae")
    second = structured(TieredCache(l1=None, l2=DiskTier(tmp_path))).invoke("japchae")
    assert sim.requests == 1
    assert isinstance(first, Nutrients) and isinstance(second, Nutrients)
    assert second == first


def test_streamed_answers_are_cached_and_shared_with_plain_calls(
    sim: Simulator, chat: ChatFactory, tmp_path: Path
) -> None:
    # LangChain's .stream() never consults a cache; a streaming model's invoke
    # does, aggregating the chunks before it stores them.
    streaming = chat(TieredCache(l2=DiskTier(tmp_path)), streaming=True, stream_usage=True)
    first = streaming.invoke("tteokbokki")
    second = chat(TieredCache(l1=None, l2=DiskTier(tmp_path))).invoke("tteokbokki")
    assert sim.requests == 1
    assert second.content == first.content
    assert second.usage_metadata is not None and first.usage_metadata is not None
    assert second.usage_metadata["total_tokens"] == first.usage_metadata["total_tokens"]


def _conversation(model: ChatOpenAI, turns: list[str]) -> list[BaseMessage]:
    history: list[BaseMessage] = [SystemMessage("You are a nutritionist.")]
    for turn in turns:
        history.append(HumanMessage(turn))
        history.append(model.invoke(history))
    return history


def test_replaying_a_conversation_hits_every_turn(sim: Simulator, chat: ChatFactory) -> None:
    turns = ["what is in bibimbap?", "and its calories?", "a lighter option?"]
    cache = TieredCache(l2=None)
    first = _conversation(chat(cache), turns)
    assert sim.requests == 3
    second = _conversation(chat(cache), turns)
    assert sim.requests == 3  # every turn a hit, though each hit rewrote total_cost and ids
    assert [m.content for m in second] == [m.content for m in first]


def test_langchain_in_memory_cache_misses_on_that_replay(sim: Simulator, chat: ChatFactory) -> None:
    """The contrast the previous test is about (LangChain 1.x behaviour, kept as a record)."""
    turns = ["what is in bibimbap?", "and its calories?", "a lighter option?"]
    cache = InMemoryCache()
    _conversation(chat(cache), turns)
    _conversation(chat(cache), turns)
    assert sim.requests > 3


def test_a_second_process_hits_from_disk(sim: Simulator, chat: ChatFactory, tmp_path: Path) -> None:
    chat(TieredCache(l2=DiskTier(tmp_path))).invoke("galbi")
    assert sim.requests == 1
    script = textwrap.dedent(
        f"""
        from langchain_openai import ChatOpenAI
        from llmcache import TieredCache, DiskTier
        cache = TieredCache(l2=DiskTier({str(tmp_path)!r}))
        model = ChatOpenAI(model="gpt-4o-mini", temperature=0, max_retries=0,
                           base_url={sim.base_url!r}, api_key="sim", cache=cache)
        print(model.invoke("galbi").content)
        print(cache.stats().tiers["disk"].hits)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    content, disk_hits = result.stdout.strip().splitlines()[-2:]
    assert sim.requests == 1
    assert disk_hits == "1"
    assert content
