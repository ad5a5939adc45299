"""Streamed calls through ``cached(model, cache)``: served from the cache, stored when complete.

The real ChatOpenAI streams over HTTP (SSE) from the simulator, which counts
requests: every claimed hit is a count that did not move.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import reduce
from operator import add
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from llmcache import ConfigurationError, DiskTier, RedisTier, TieredCache, cached, depends_on
from llmcache.coalesce.coalescer import Coalescer
from llmcache.coalesce.leaders import HeldOwner, Owner
from llmcache.coalesce.outcome import RETRY
from llmcache.simulator import Simulator, SimulatorConfig
from llmcache.stream_chunks import served_chunks, text_pieces
from tests.conftest import ChatFactory, FakeClock

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import EXTERNAL_URL_ENV, purge_prefix  # noqa: E402

PROMPT = "nutrients of bibimbap"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=5)) as simulator:
        yield simulator


CacheFactory = Callable[..., TieredCache]


@pytest.fixture(params=["memory", "disk", pytest.param("redis", marks=pytest.mark.redis)])
def caches(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheFactory]:
    """Caches over one store: each call makes a new TieredCache (memory: the same one)."""
    if request.param == "memory":
        one = TieredCache(l2=None)
        yield lambda **_: one
        return
    if request.param == "disk":
        yield lambda **kwargs: TieredCache(l2=DiskTier(tmp_path / "disk"), **kwargs)
        return
    # The machine's Redis when CI names one, else the valkey the fixtures start.
    url = os.environ.get(EXTERNAL_URL_ENV) or request.getfixturevalue("valkey_server").url()
    prefix = request.getfixturevalue("key_prefix")
    made: list[TieredCache] = []

    def make(**kwargs: Any) -> TieredCache:
        made.append(TieredCache(l2=RedisTier(url, prefix=prefix), **kwargs))
        return made[-1]

    yield make
    for cache in made:
        cache.close()
    purge_prefix(url, prefix)


def streamer(chat: ChatFactory, cache: Any, **kwargs: Any) -> ChatOpenAI:
    return cached(chat(cache, stream_usage=True, **kwargs))


def total(chunks: Sequence[BaseMessage]) -> AIMessageChunk:
    assert chunks and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    return reduce(add, chunks)  # type: ignore[arg-type]


def assert_same_answer(streamed: AIMessageChunk, answer: BaseMessage) -> None:
    """What a stream added up to is what invoke returned, field by field (ids aside)."""
    assert isinstance(answer, AIMessage)
    assert streamed.content == answer.content
    assert streamed.tool_calls == answer.tool_calls
    assert streamed.invalid_tool_calls == answer.invalid_tool_calls
    assert streamed.usage_metadata == answer.usage_metadata
    assert streamed.response_metadata == answer.response_metadata
    assert streamed.additional_kwargs == answer.additional_kwargs


# -- served from the cache -----------------------------------------------------------------


def test_a_stream_after_invoke_is_served_from_the_cache(
    sim: Simulator, chat: ChatFactory, caches: CacheFactory
) -> None:
    first = streamer(chat, caches()).invoke(PROMPT)
    assert sim.requests == 1
    model = streamer(chat, caches())  # another cache on the same store (memory: the same)
    chunks = list(model.stream(PROMPT))
    assert sim.requests == 1
    assert len(chunks) > 3  # served in pieces, like a real stream
    assert sum(chunk.usage_metadata is not None for chunk in chunks) == 1  # usage once
    streamed = total(chunks)
    assert streamed.content == first.content
    assert_same_answer(streamed, model.invoke(PROMPT))  # a hit, as invoke returns it
    assert sim.requests == 1


async def test_an_astream_after_ainvoke_is_served_from_the_cache(
    sim: Simulator, chat: ChatFactory, caches: CacheFactory
) -> None:
    await streamer(chat, caches()).ainvoke(PROMPT)
    model = streamer(chat, caches())
    chunks = [chunk async for chunk in model.astream(PROMPT)]
    assert sim.requests == 1 and len(chunks) > 3
    assert_same_answer(total(chunks), await model.ainvoke(PROMPT))
    assert sim.requests == 1


def test_a_completed_stream_is_stored_for_invoke_and_stream(
    sim: Simulator, chat: ChatFactory, caches: CacheFactory
) -> None:
    upstream = total(list(streamer(chat, caches()).stream(PROMPT)))
    assert sim.requests == 1
    reader = streamer(chat, caches())
    answer = reader.invoke(PROMPT)
    assert sim.requests == 1
    assert answer.content == upstream.content
    assert answer.usage_metadata is not None and upstream.usage_metadata is not None
    assert answer.usage_metadata["total_tokens"] == upstream.usage_metadata["total_tokens"]
    assert answer.response_metadata["finish_reason"] == "stop"
    assert_same_answer(total(list(reader.stream(PROMPT))), reader.invoke(PROMPT))
    assert sim.requests == 1


async def test_a_completed_astream_is_stored(
    sim: Simulator, chat: ChatFactory, caches: CacheFactory
) -> None:
    upstream = total([chunk async for chunk in streamer(chat, caches()).astream(PROMPT)])
    reader = streamer(chat, caches())
    served = total([chunk async for chunk in reader.astream(PROMPT)])
    assert sim.requests == 1
    assert served.content == upstream.content
    assert_same_answer(served, await reader.ainvoke(PROMPT))


def test_the_plain_model_and_the_wrapped_one_share_entries(
    sim: Simulator, chat: ChatFactory
) -> None:
    cache = TieredCache(l2=None)
    plain = chat(cache, stream_usage=True)
    plain.invoke(PROMPT)
    chunks = list(cached(plain).stream(PROMPT))
    assert sim.requests == 1 and len(chunks) > 1
    list(plain.stream(PROMPT))  # LangChain's own stream never reads a cache
    assert sim.requests == 2
    assert cache.stats().hits == 1


def test_a_semantic_hit_streams_marked_as_invoke_marks_it(
    sim: Simulator, chat: ChatFactory, tmp_path: Path
) -> None:
    from llmcache import SemanticTier

    cache = TieredCache(l2=DiskTier(tmp_path), semantic=SemanticTier(mark=True))
    model = streamer(chat, cache)
    first = total(list(model.stream("How do I reset my password?")))
    served = total(list(model.stream("What's the way to reset my password?")))
    assert sim.requests == 1
    assert served.content == first.content
    mark = served.response_metadata["llmcache_semantic"]
    assert mark["matched"] == "How do I reset my password?"
    # Exactly what invoke returns for the paraphrase (the mark's similarity included).
    assert_same_answer(served, model.invoke("What's the way to reset my password?"))


def test_stop_words_and_call_arguments_are_part_of_the_key(
    sim: Simulator, chat: ChatFactory
) -> None:
    model = streamer(chat, TieredCache(l2=None))
    model.invoke(PROMPT, stop=["kcal"])
    list(model.stream(PROMPT, stop=["kcal"]))  # the same call: a hit
    assert sim.requests == 1
    list(model.stream(PROMPT))  # no stop words: another question
    list(model.stream(PROMPT, max_tokens=5))
    assert sim.requests == 3


def test_hits_are_counted_and_dependencies_apply(sim: Simulator, chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    model = streamer(chat, cache)
    with depends_on("doc:menu"):
        list(model.stream(PROMPT))
        list(model.stream(PROMPT))
    assert sim.requests == 1
    assert cache.stats().hits == 1 and cache.stats().misses == 1
    cache.invalidate("doc:menu")
    with depends_on("doc:menu"):
        list(model.stream(PROMPT))
    assert sim.requests == 2


# -- tools, structured output, chains, LangGraph -----------------------------------------------


class NutrientLookup(BaseModel):
    """Look up the nutrients of a dish."""

    dish: str = Field(description="the dish name")
    grams: int


class Nutrients(BaseModel):
    carbs_g: float
    protein_g: float
    note: str


def test_tool_calls_are_served_as_tool_call_chunks(sim: Simulator, chat: ChatFactory) -> None:
    model = streamer(chat, TieredCache(l2=None)).bind_tools([NutrientLookup])
    upstream = total(list(model.stream("bulgogi")))
    assert upstream.tool_calls
    chunks = list(model.stream("bulgogi"))
    assert sim.requests == 1
    assert any(chunk.tool_call_chunks for chunk in chunks)  # type: ignore[attr-defined]
    served = total(chunks)
    assert served.tool_calls == upstream.tool_calls
    answer = model.invoke("bulgogi")
    assert sim.requests == 1
    assert_same_answer(served, answer)
    # Another tool list is another question.
    list(streamer(chat, TieredCache(l2=None)).stream("bulgogi"))
    assert sim.requests == 2


# langchain-openai's own json_schema stream dumps the openai client's parsed chunk,
# and pydantic warns about its `parsed` field (plain ChatOpenAI does it too).
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_streams_from_the_cache(
    sim: Simulator, chat: ChatFactory, method: str
) -> None:
    model = streamer(chat, TieredCache(l2=None))
    structured = model.with_structured_output(Nutrients, method=method)  # type: ignore[arg-type]
    first = list(structured.stream("japchae"))
    second = list(structured.stream("japchae"))
    assert sim.requests == 1
    assert isinstance(first[-1], Nutrients)
    assert second[-1] == first[-1]
    assert structured.invoke("japchae") == first[-1]
    assert sim.requests == 1


def test_a_chain_streams_from_the_cache(sim: Simulator, chat: ChatFactory) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{dish}")])
    chain = prompt | streamer(chat, TieredCache(l2=None)) | StrOutputParser()
    first = list(chain.stream({"dish": "galbi"}))
    second = list(chain.stream({"dish": "galbi"}))
    assert sim.requests == 1
    assert len(second) > 3
    assert "".join(second) == "".join(first) == chain.invoke({"dish": "galbi"})
    assert sim.requests == 1


async def test_a_chain_astreams_from_the_cache(sim: Simulator, chat: ChatFactory) -> None:
    chain = streamer(chat, TieredCache(l2=None)) | StrOutputParser()
    first = [piece async for piece in chain.astream("galbi")]
    second = [piece async for piece in chain.astream("galbi")]
    assert sim.requests == 1 and len(second) > 3
    assert "".join(second) == "".join(first)


@pytest.mark.parametrize("node_calls", ["stream", "invoke"])
def test_langgraph_messages_mode_streams_hits_as_tokens(
    sim: Simulator, chat: ChatFactory, node_calls: str
) -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    model = streamer(chat, TieredCache(l2=None))

    def answer(state: MessagesState) -> dict[str, Any]:
        if node_calls == "stream":
            return {"messages": [total(list(model.stream(state["messages"])))]}
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState).add_node("answer", answer)
    graph = graph.add_edge(START, "answer")
    compiled = graph.compile()

    def tokens() -> list[AIMessageChunk]:
        events = compiled.stream({"messages": [("user", PROMPT)]}, stream_mode="messages")
        return [message for message, _ in events if isinstance(message, AIMessageChunk)]

    cold = tokens()
    warm = tokens()
    assert sim.requests == 1
    assert len(warm) > 3  # token by token from the cache, not the whole answer at once
    assert total(warm).content == total(cold).content


async def test_astream_events_sees_served_tokens(sim: Simulator, chat: ChatFactory) -> None:
    model = streamer(chat, TieredCache(l2=None))
    await model.ainvoke(PROMPT)
    events = [event async for event in model.astream_events(PROMPT, version="v2")]
    pieces = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert sim.requests == 1
    assert len(pieces) > 3
    assert "".join(pieces) == (await model.ainvoke(PROMPT)).content


# -- never stored half-way -------------------------------------------------------------------


def test_a_stream_abandoned_half_way_is_not_stored(sim: Simulator, chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    model = streamer(chat, cache)
    for index, _ in enumerate(model.stream(PROMPT)):
        if index == 2:
            break
    assert cache.stats().tiers["memory"].writes == 0
    list(model.stream(PROMPT))
    assert sim.requests == 2  # nothing had been stored: called again, and now stored
    list(model.stream(PROMPT))
    assert sim.requests == 2


def test_a_stream_cut_off_upstream_is_not_stored(sim: Simulator, chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    model = streamer(chat, cache)
    sim.cut_next()
    received: list[BaseMessage] = []

    def consume() -> None:
        for chunk in model.stream(PROMPT):
            received.append(chunk)

    with pytest.raises(openai.APIConnectionError):  # the connection dropped mid-answer
        consume()
    assert received  # it failed half-way, not before it began
    assert cache.stats().tiers["memory"].writes == 0
    assert model.invoke(PROMPT).content
    assert sim.requests == 2


async def test_a_cancelled_astream_is_not_stored(sim: Simulator, chat: ChatFactory) -> None:
    sim.set_latency(5, per_token_ms=20)
    cache = TieredCache(l2=None)
    model = streamer(chat, cache)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in model.astream(PROMPT):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache.stats().tiers["memory"].writes == 0
    sim.set_latency(5, per_token_ms=0)
    await model.ainvoke(PROMPT)
    assert sim.requests == 2


# -- coalescing --------------------------------------------------------------------------------


async def test_identical_concurrent_astreams_make_one_request(
    sim: Simulator, chat: ChatFactory, caches: CacheFactory
) -> None:
    sim.set_latency(20, per_token_ms=5)  # the leader streams for about 0.15 s
    model = streamer(chat, caches())

    async def collect() -> AIMessageChunk:
        chunks = []
        async for chunk in model.astream(PROMPT):
            chunks.append(chunk)
            await asyncio.sleep(0.01)  # the stream is suspended between chunks, and still leads
        return total(chunks)

    answers = await asyncio.gather(*(collect() for _ in range(5)))
    assert sim.requests == 1
    assert len({answer.content for answer in answers}) == 1
    assert model.cache.stats().extra["coalesced"] == 4  # type: ignore[union-attr]


def test_identical_streams_in_threads_make_one_request(sim: Simulator, chat: ChatFactory) -> None:
    sim.set_latency(20, per_token_ms=5)
    cache = TieredCache(l2=None)
    model = streamer(chat, cache)
    answers: list[str] = []
    barrier = threading.Barrier(4)

    def collect() -> None:
        barrier.wait()
        chunks = []
        for chunk in model.stream(PROMPT):
            chunks.append(chunk)
            time.sleep(0.01)  # off the stack between chunks, and still the leader
        answers.append(str(total(chunks).content))

    threads = [threading.Thread(target=collect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sim.requests == 1
    assert len(answers) == 4 and len(set(answers)) == 1
    assert cache.stats().extra["coalesced"] == 3


def _leader_gives_up(
    model: ChatOpenAI,
    follower_model: ChatOpenAI,
    wait_for_follower: Callable[[], bool],
    prompt: str = PROMPT,
) -> tuple[str, float]:
    """A leader that reads two chunks and stops while a follower waits; the follower's answer."""
    result: list[str] = []
    reading = threading.Event()

    def follow() -> None:
        reading.wait()
        result.append(str(total(list(follower_model.stream(prompt))).content))

    follower = threading.Thread(target=follow)
    follower.start()
    stream = model.stream(prompt)
    next(stream)
    reading.set()
    deadline = time.monotonic() + 10
    while not wait_for_follower() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # a stream suspended between chunks still leads: its follower waits
    assert not result
    started = time.monotonic()
    stream.close()  # abandoned half-way
    follower.join()
    return result[0], time.monotonic() - started


def test_a_leader_that_gives_up_releases_its_followers_at_once(
    sim: Simulator, chat: ChatFactory
) -> None:
    sim.set_latency(5, per_token_ms=20)
    cache = TieredCache(l2=None, coalesce_wait=30)
    model = streamer(chat, cache)
    coalescer = cache.engine.coalescer
    assert coalescer is not None
    content, elapsed = _leader_gives_up(model, model, lambda: coalescer.followers() == 1)
    assert sim.requests == 2  # the follower called the model itself
    assert content
    assert elapsed < 10  # at once, not after its 30 s bound
    assert cache.stats().tiers["memory"].writes == 1  # the follower's answer, not the leader's half


@pytest.mark.redis
def test_a_stream_leader_holds_a_redis_lease_for_other_caches(
    sim: Simulator, chat: ChatFactory, redis_url: str, key_prefix: str
) -> None:
    """Two caches on one Redis coordinate as two processes would: by the lease."""
    sim.set_latency(5, per_token_ms=20)
    url = redis_url
    one = TieredCache(l2=RedisTier(url, prefix=key_prefix), coalesce_wait=30)
    two = TieredCache(l2=RedisTier(url, prefix=key_prefix), coalesce_wait=30)
    try:
        leader, follower = streamer(chat, one), streamer(chat, two)
        result: list[str] = []

        def follow() -> None:
            result.append(str(total(list(follower.stream(PROMPT))).content))

        stream = leader.stream(PROMPT)
        first = next(stream)  # leads: the lease is taken before the first chunk
        thread = threading.Thread(target=follow)
        thread.start()
        rest = list(stream)
        thread.join()
        assert sim.requests == 1
        assert result == [total([first, *rest]).content]
        # The leader gives up half-way: the other cache's follower goes upstream at once.
        content, elapsed = _leader_gives_up(
            streamer(chat, one), follower, lambda: time.sleep(0.2) is None, prompt="japchae"
        )
        assert content and elapsed < 10
        assert sim.requests == 3  # the follower called the model itself
    finally:
        one.close()
        two.close()
        purge_prefix(url, key_prefix)


# A process that streams PROMPT through cached() on the Redis L2, saying when it looks.
CHILD = """
import sys
from langchain_openai import ChatOpenAI
from llmcache import RedisTier, TieredCache, cached

url, prefix, base_url, prompt = sys.argv[1:]
cache = TieredCache(l2=RedisTier(url, prefix=prefix), coalesce_wait=60)
model = cached(ChatOpenAI(model="gpt-4o-mini", temperature=0, max_retries=0, timeout=60,
                          base_url=base_url, api_key="sim", stream_usage=True), cache)
print("looking", flush=True)
print("".join(str(chunk.content) for chunk in model.stream(prompt)), flush=True)
cache.close()
"""


@pytest.mark.redis
@pytest.mark.slow
def test_a_stream_in_another_process_follows_the_leader_by_the_lease(
    sim: Simulator, chat: ChatFactory, redis_url: str, key_prefix: str
) -> None:
    sim.set_latency(5, per_token_ms=10)
    cache = TieredCache(l2=RedisTier(redis_url, prefix=key_prefix), coalesce_wait=60)
    root = Path(__file__).resolve().parent.parent
    try:
        stream = streamer(chat, cache).stream(PROMPT)
        chunks = [next(stream)]  # the lead and its lease are taken
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_url, key_prefix, sim.base_url, PROMPT],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "looking"
        time.sleep(0.5)  # the child misses and waits on the lease while this stream is suspended
        chunks += list(stream)
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert sim.requests == 1
        assert out.strip() == total(chunks).content
    finally:
        cache.close()
        purge_prefix(redis_url, key_prefix)


# -- which cache, and bad input ---------------------------------------------------------------


def test_the_global_cache_serves_a_model_without_its_own(sim: Simulator, chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    set_llm_cache(cache)
    try:
        model = streamer(chat, None)
        list(model.stream(PROMPT))
        list(model.stream(PROMPT))
        assert sim.requests == 1
        list(streamer(chat, False).stream(PROMPT))  # cache=False: never cached
        assert sim.requests == 2
    finally:
        set_llm_cache(None)


def test_any_langchain_cache_works(sim: Simulator, chat: ChatFactory) -> None:
    model = streamer(chat, InMemoryCache())
    first = total(list(model.stream(PROMPT)))
    second = total(list(model.stream(PROMPT)))
    assert sim.requests == 1
    assert second.content == first.content


def test_the_wrapped_model_is_a_copy(sim: Simulator, chat: ChatFactory) -> None:
    plain = chat(None, stream_usage=True)
    cache = TieredCache(l2=None)
    model = cached(plain, cache)
    assert isinstance(model, ChatOpenAI) and model is not plain
    assert plain.cache is None and model.cache is cache
    assert type(cached(model)) is type(model)  # wrapping twice changes nothing more
    assert model._get_llm_string() == plain._get_llm_string()


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ((), {"cache": "redis://localhost"}, "BaseCache"),
        ((), {"chunk_chars": 0}, "chunk_chars"),
        ((), {"chunk_chars": True}, "chunk_chars"),
    ],
)
def test_bad_arguments_are_refused(
    chat: ChatFactory, args: tuple[Any, ...], kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        cached(chat(None), *args, **kwargs)


def test_a_bound_model_is_refused_with_a_hint(chat: ChatFactory) -> None:
    bound = chat(None).bind_tools([NutrientLookup])
    with pytest.raises(ConfigurationError, match="then bind"):
        cached(bound)  # type: ignore[type-var]


# -- the chunks themselves (pure) ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "one", "  two  words ", "a\nb\tc  d", "x" * 50])
@pytest.mark.parametrize("size", [1, 5, 16, 1000])
def test_text_pieces_are_whole_words_that_add_up(text: str, size: int) -> None:
    pieces = text_pieces(text, size)
    assert "".join(pieces) == text
    assert all(len(piece) >= size for piece in pieces[:-1])
    assert all(not piece[:1].isspace() or index == 0 for index, piece in enumerate(pieces))


def test_served_chunks_add_up_to_the_message_whatever_it_holds() -> None:
    message = AIMessage(
        content="Bulgogi: about 500 kcal.",
        additional_kwargs={"refusal": None},
        response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "tool_calls"},
        tool_calls=[
            {"name": "lookup", "args": {"dish": "불고기", "grams": 200}, "id": "c1"},
            {"name": "lookup", "args": {}, "id": "c2"},
        ],
        invalid_tool_calls=[{"name": "broken", "args": "oops", "id": "c3", "error": None}],
        usage_metadata={"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
        id="run-1",
    )
    chunks = list(served_chunks(ChatGeneration(message=message), chunk_chars=1))
    assert [chunk.message.id for chunk in chunks] == ["run-1"] * len(chunks)
    assert sum(chunk.message.usage_metadata is not None for chunk in chunks) == 1  # type: ignore[attr-defined]
    assert chunks[-1].message.chunk_position == "last"  # type: ignore[attr-defined]
    assert_same_answer(total([chunk.message for chunk in chunks]), message)


def test_list_content_is_served_as_is() -> None:
    blocks: list[str | dict[str, Any]] = [{"type": "text", "text": "kimchi", "index": 0}]
    message = AIMessage(content=blocks)
    served = total([chunk.message for chunk in served_chunks(ChatGeneration(message=message))])
    assert served.content == blocks


# -- the held lead (llmcache.coalesce.leaders.HeldOwner), on a coalescer alone ------------------


def _lead(coalescer: Coalescer, owner: Owner) -> Any:
    _, joined = coalescer.join("k", {}, 0, owner)
    assert isinstance(joined, tuple)
    return joined


def test_a_held_lead_outlives_its_frame_and_ends_when_told(clock: FakeClock) -> None:
    coalescer = Coalescer(lease=5.0, clock=clock)
    leader = HeldOwner.here(in_task=False)
    flight, leading = _lead(coalescer, leader)
    assert leading
    follower: list[Any] = []
    thread = threading.Thread(target=lambda: follower.append(_lead(coalescer, Owner())))
    thread.start()
    thread.join()
    assert follower == [(flight, False)]  # another thread follows it
    clock.advance(60)  # no frame, no lease expiry: only its end ends it
    coalescer.check(flight)
    assert coalescer.in_flight() == 1
    leader.end()
    assert coalescer.in_flight() == 0 and flight.outcome.value is RETRY


def test_the_same_thread_asking_again_takes_a_held_lead_over() -> None:
    coalescer = Coalescer()
    first, second = HeldOwner.here(in_task=False), HeldOwner.here(in_task=False)
    flight, _ = _lead(coalescer, first)
    assert _lead(coalescer, second) == (flight, True)  # never waits on its own thread
    first.end()  # the earlier stream ends: the lead is no longer its to end
    assert coalescer.in_flight() == 1
    coalescer.resolve("k", None)
    second.end()  # ended already: nothing to do
    assert coalescer.in_flight() == 0
