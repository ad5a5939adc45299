"""In-flight coalescing in one process: N identical concurrent misses, one upstream call.

End to end through the real ChatOpenAI over HTTP to the simulator (which counts
requests), plus the cache API driven directly where a test needs to hold a
leader still at a chosen point.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from langchain_core.caches import BaseCache
from langchain_core.language_models import LLM
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration
from langchain_openai import ChatOpenAI
from pydantic import Field

from llmcache import MemoryTier, TieredCache, depends_on
from llmcache.coalesce.coalescer import Coalescer
from llmcache.coalesce.leaders import Owner
from llmcache.coalesce.outcome import RETRY
from llmcache.simulator import Simulator, SimulatorConfig
from tests.conftest import ChatFactory, FakeClock

LATENCY = 0.3  # seconds the simulator takes per request in the timed tests
# What LangChain and the machine add to a burst of calls (2 busy cores): generous
# enough to hold under load, far below any timeout or a second model call.
MARGIN = 0.6


@pytest.fixture
def sim() -> Iterator[Simulator]:
    # One simulator per test: langchain-openai keeps one async HTTP client per
    # base URL across event loops, and each test has its own loop.
    with Simulator(SimulatorConfig(latency_ms=LATENCY * 1000)) as simulator:
        yield simulator


def _answer(text: str) -> list[ChatGeneration]:
    return [ChatGeneration(message=AIMessage(text))]


def _text(value: Any) -> str | None:
    return None if value is None else str(value[0].message.content)


def _coalescer(cache: TieredCache) -> Coalescer:
    coalescer = cache._coalescer
    assert coalescer is not None
    return coalescer


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


# -- asyncio, end to end -------------------------------------------------------------


async def test_fifty_identical_ainvokes_make_one_request(sim: Simulator, chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    model = chat(cache)
    start = time.perf_counter()
    answers = await asyncio.gather(*(model.ainvoke("a stampede of bibimbap") for _ in range(50)))
    elapsed = time.perf_counter() - start
    print(f"50 identical ainvokes: {sim.requests} request(s) in {elapsed * 1000:.0f} ms")
    assert sim.requests == 1
    assert elapsed < LATENCY + MARGIN
    assert len({m.content for m in answers}) == 1
    assert len({m.id for m in answers}) == 50  # every hit a fresh message
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.extra["coalesced"]) == (49, 1, 49)
    assert _coalescer(cache).in_flight() == 0


async def test_a_failing_leader_releases_its_followers_at_once(
    sim: Simulator, chat: ChatFactory
) -> None:
    prompt = "the first call for this fails"
    sim.fail_next(1, status=500, match=prompt)
    cache = TieredCache(l2=None, coalesce_wait=30)
    model = chat(cache)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(model.ainvoke(prompt) for _ in range(50)), return_exceptions=True
    )
    elapsed = time.perf_counter() - start
    print(f"failed leader, 49 followers: done in {elapsed * 1000:.0f} ms")
    failures = [r for r in results if isinstance(r, BaseException)]
    answers = [r for r in results if isinstance(r, BaseMessage)]
    assert len(failures) == 1 and isinstance(failures[0], openai.InternalServerError)
    assert len(answers) == 49 and len({m.content for m in answers}) == 1
    assert sim.requests_for(prompt) == 2  # the failed one, and the new leader's
    assert elapsed < 2 * LATENCY + MARGIN  # released at once, not after the 30 s bound
    extra = cache.stats().extra
    assert extra["coalesced"] == 48 and extra["coalesce_released"] == 1
    assert extra["coalesce_timeouts"] == 0


async def test_a_cancelled_leader_releases_its_followers_at_once(
    sim: Simulator, chat: ChatFactory
) -> None:
    prompt = "a call that gets cancelled"
    cache = TieredCache(l2=None, coalesce_wait=30)
    model = chat(cache)
    leader = asyncio.create_task(model.ainvoke(prompt))
    await _until(lambda: sim.requests_for(prompt) == 1)
    followers = [asyncio.create_task(model.ainvoke(prompt)) for _ in range(9)]
    await _until(lambda: _coalescer(cache).followers() == 9)
    start = time.perf_counter()
    leader.cancel()
    answers = await asyncio.gather(*followers)
    elapsed = time.perf_counter() - start
    print(f"cancelled leader: followers done {elapsed * 1000:.0f} ms after the cancel")
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len({m.content for m in answers}) == 1
    assert sim.requests_for(prompt) == 2
    assert elapsed < LATENCY + MARGIN  # one new leader's call, no waiting for a bound


async def test_mixed_batch_costs_one_request_per_distinct_prompt(
    sim: Simulator, chat: ChatFactory
) -> None:
    model = chat(TieredCache(l2=None))
    distinct = [f"dish {i}" for i in range(12)]
    prompts = [distinct[i % 3] for i in range(30)] + distinct  # three repeated 10+ times
    answers = await model.abatch(prompts, config={"max_concurrency": 50})
    assert sim.requests == len(distinct)
    by_prompt: dict[str, set[Any]] = {}
    for prompt, answer in zip(prompts, answers):
        by_prompt.setdefault(prompt, set()).add(answer.content)
    assert all(len(contents) == 1 for contents in by_prompt.values())


async def test_coalesce_false_calls_the_model_for_every_miss(
    sim: Simulator, chat: ChatFactory
) -> None:
    cache = TieredCache(l2=None, coalesce=False)
    await asyncio.gather(*(chat(cache).ainvoke("no coalescing") for _ in range(10)))
    assert sim.requests == 10
    assert cache.stats().extra == {}


# -- threads (LangChain's batch), end to end ----------------------------------------------


def test_batch_of_twenty_identical_prompts_in_threads(sim: Simulator, chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    start = time.perf_counter()
    answers = chat(cache).batch(["a threaded stampede"] * 20, config={"max_concurrency": 20})
    elapsed = time.perf_counter() - start
    print(f"batch of 20 identical: {sim.requests} request(s) in {elapsed * 1000:.0f} ms")
    assert sim.requests == 1
    assert len({m.content for m in answers}) == 1
    assert cache.stats().extra["coalesced"] == 19
    assert elapsed < LATENCY + MARGIN


def test_a_failing_thread_leader_releases_its_followers(sim: Simulator, chat: ChatFactory) -> None:
    prompt = "a threaded call that fails first"
    sim.fail_next(1, status=500, match=prompt)
    cache = TieredCache(l2=None, coalesce_wait=30)
    start = time.perf_counter()
    results = chat(cache).batch(
        [prompt] * 20, config={"max_concurrency": 20}, return_exceptions=True
    )
    elapsed = time.perf_counter() - start
    print(f"failed thread leader, 19 followers: done in {elapsed * 1000:.0f} ms")
    assert sum(isinstance(r, openai.InternalServerError) for r in results) == 1
    assert len({r.content for r in results if isinstance(r, BaseMessage)}) == 1
    assert sim.requests_for(prompt) == 2
    # Released within one poll (20 ms) of the failure, not after the 30 s bound.
    assert elapsed < 2 * LATENCY + MARGIN


def test_mixed_batch_in_threads(sim: Simulator, chat: ChatFactory) -> None:
    distinct = [f"soup {i}" for i in range(6)]
    prompts = [distinct[i % 2] for i in range(14)] + distinct
    answers = chat(TieredCache(l2=None)).batch(prompts, config={"max_concurrency": 20})
    assert sim.requests == len(distinct)
    assert len(answers) == len(prompts)


# -- dependencies ---------------------------------------------------------------------------


async def test_followers_of_a_leader_invalidated_in_flight_get_its_answer_stored_stale(
    sim: Simulator, chat: ChatFactory
) -> None:
    prompt = "menu of restaurant 17"
    cache = TieredCache(l2=None)
    model = chat(cache)
    with depends_on("restaurant:17"):
        calls = [asyncio.create_task(model.ainvoke(prompt)) for _ in range(5)]
        await _until(lambda: _coalescer(cache).followers() == 4)
        await cache.ainvalidate("restaurant:17")  # while the leader is in flight
        answers = await asyncio.gather(*calls)
        assert sim.requests_for(prompt) == 1
        assert len({m.content for m in answers}) == 1  # the followers got the leader's answer
        assert cache.stats().extra["coalesced"] == 4
        await model.ainvoke(prompt)  # but it was stored stale: never served afterwards
        assert sim.requests_for(prompt) == 2
        assert cache.stats().tiers["memory"].stale == 1
        await model.ainvoke(prompt)  # the refill is fresh
        assert sim.requests_for(prompt) == 2


async def test_a_miss_after_an_invalidation_does_not_follow_the_older_leader(
    sim: Simulator, chat: ChatFactory
) -> None:
    prompt = "menu of restaurant 18"
    cache = TieredCache(l2=None)
    model = chat(cache)
    with depends_on("restaurant:18"):
        early = [asyncio.create_task(model.ainvoke(prompt)) for _ in range(3)]
        await _until(lambda: _coalescer(cache).followers() == 2)
        await cache.ainvalidate("restaurant:18")
        late = asyncio.create_task(model.ainvoke(prompt))  # asks after the invalidation
        await asyncio.gather(*early, late)
    assert sim.requests_for(prompt) == 2  # the leader's call and the late caller's own
    assert cache.stats().extra["coalesced"] == 2


# -- the cache API driven directly: leaders held at chosen points ---------------------------


def test_a_follower_waits_no_longer_than_its_bound() -> None:
    cache = TieredCache(l2=None, coalesce_wait=0.2)
    led, hold = threading.Event(), threading.Event()

    def lead() -> None:
        assert cache.lookup("q", "llm") is None
        led.set()
        hold.wait(10)  # the model call that takes too long

    leader = threading.Thread(target=lead)
    leader.start()
    led.wait(5)
    start = time.perf_counter()
    assert cache.lookup("q", "llm") is None
    elapsed = time.perf_counter() - start
    hold.set()
    leader.join()
    assert 0.2 <= elapsed < 0.2 + MARGIN
    assert cache.stats().extra["coalesce_timeouts"] == 1


def test_the_bound_can_be_set_per_key() -> None:
    def bound(prompt: str, llm_string: str) -> float:
        return 0.0 if prompt.startswith("urgent") else 30.0

    cache = TieredCache(l2=None, coalesce_wait=bound)
    led, hold = threading.Event(), threading.Event()

    def lead() -> None:
        assert cache.lookup("urgent q", "llm") is None
        led.set()
        hold.wait(10)

    leader = threading.Thread(target=lead)
    leader.start()
    led.wait(5)
    start = time.perf_counter()
    assert cache.lookup("urgent q", "llm") is None  # 0: never waits, a plain miss
    assert time.perf_counter() - start < 0.1
    assert _coalescer(cache).followers() == 0
    hold.set()
    leader.join()


def test_a_thread_leader_that_returns_without_an_update_releases_its_followers() -> None:
    cache = TieredCache(l2=None, coalesce_wait=30)
    led, fail, done = threading.Event(), threading.Event(), threading.Event()

    def call_that_fails() -> None:
        assert cache.lookup("q", "llm") is None
        led.set()
        fail.wait(10)  # then "the model raised": this frame ends, no update

    def worker() -> None:
        call_that_fails()
        done.wait(10)  # the thread itself lives on (a pool thread going idle)

    leader = threading.Thread(target=worker)
    leader.start()
    led.wait(5)
    results: list[Any] = []
    follower = threading.Thread(target=lambda: results.append(cache.lookup("q", "llm")))
    follower.start()
    _wait_until(lambda: _coalescer(cache).followers() == 1)
    start = time.perf_counter()
    fail.set()
    follower.join(10)
    elapsed = time.perf_counter() - start
    done.set()
    leader.join()
    print(f"thread leader's frame ended: follower released after {elapsed * 1000:.1f} ms")
    assert results == [None]  # released, it leads now (and would call the model)
    assert elapsed < 0.02 + 0.2  # one poll, plus scheduling slack
    # The leader's flight, and perhaps already the lead the released follower
    # took and left when its own frame ended (the watcher ends it within 20 ms).
    assert cache.stats().extra["coalesce_released"] in (1, 2)


async def test_an_async_follower_is_woken_by_a_leader_in_a_thread() -> None:
    cache = TieredCache(l2=None)
    led, go = threading.Event(), threading.Event()

    def lead() -> None:
        assert cache.lookup("q", "llm") is None
        led.set()
        go.wait(10)
        cache.update("q", "llm", _answer("from a thread"))

    leader = threading.Thread(target=lead)
    leader.start()
    await asyncio.to_thread(led.wait, 5)
    follower = asyncio.create_task(cache.alookup("q", "llm"))
    await _until(lambda: _coalescer(cache).followers() == 1)
    go.set()
    assert _text(await asyncio.wait_for(follower, 5)) == "from a thread"
    await asyncio.to_thread(leader.join)
    assert cache.stats().extra["coalesced"] == 1


def test_threads_follow_an_async_leader_in_another_thread() -> None:
    cache = TieredCache(l2=None)
    led, go = threading.Event(), threading.Event()

    async def lead() -> None:
        assert await cache.alookup("q", "llm") is None
        led.set()
        await asyncio.to_thread(go.wait, 10)
        await cache.aupdate("q", "llm", _answer("from a loop"))

    leader = threading.Thread(target=lambda: asyncio.run(lead()))
    leader.start()
    led.wait(5)
    results: list[Any] = []
    followers = [
        threading.Thread(target=lambda: results.append(_text(cache.lookup("q", "llm"))))
        for _ in range(5)
    ]
    for follower in followers:
        follower.start()
    _wait_until(lambda: _coalescer(cache).followers() == 5)
    go.set()
    for follower in followers:
        follower.join(5)
    leader.join()
    assert results == ["from a loop"] * 5


def test_asking_again_for_a_key_it_leads_never_waits_on_itself() -> None:
    cache = TieredCache(l2=None, coalesce_wait=30)
    start = time.perf_counter()
    assert cache.lookup("q", "llm") is None
    assert cache.lookup("q", "llm") is None  # a retry on the same thread: leads again
    assert time.perf_counter() - start < 5  # a wait on itself would last 30 s

    async def retry_in_one_task() -> None:
        assert await cache.alookup("r", "llm") is None
        assert await cache.alookup("r", "llm") is None

    asyncio.run(asyncio.wait_for(retry_in_one_task(), 1))


async def test_a_task_leading_two_keys_releases_each_at_its_update_or_its_end() -> None:
    cache = TieredCache(l2=None, coalesce_wait=30)
    step = asyncio.Event()

    async def leader() -> None:
        assert await cache.alookup("k1", "llm") is None

        async def nested() -> None:  # a call made inside k1's (a tool its model runs)
            assert await cache.alookup("k2", "llm") is None
            await step.wait()
            await cache.aupdate("k1", "llm", _answer("one"))
            # and it ends without an update for k2: that call failed

        await nested()

    lead = asyncio.create_task(leader())
    await _until(lambda: _coalescer(cache).in_flight() == 2)
    first = asyncio.create_task(cache.alookup("k1", "llm"))
    second = asyncio.create_task(cache.alookup("k2", "llm"))
    await _until(lambda: _coalescer(cache).followers() == 2)
    step.set()
    assert _text(await asyncio.wait_for(first, 1)) == "one"
    assert await asyncio.wait_for(second, 1) is None  # released at the task's end: leads k2
    await lead
    await _until(lambda: _coalescer(cache).in_flight() == 0)  # second's task ended too


def test_a_value_that_cannot_be_stored_lets_each_follower_go_alone() -> None:
    cache = TieredCache(l2=None, coalesce_wait=30)
    led, go = threading.Event(), threading.Event()
    unstorable = [ChatGeneration(message=AIMessage("x", additional_kwargs={"o": object()}))]

    def lead() -> None:
        assert cache.lookup("q", "llm") is None
        led.set()
        go.wait(10)
        cache.update("q", "llm", unstorable)

    leader = threading.Thread(target=lead)
    leader.start()
    led.wait(5)
    results: list[Any] = []
    followers = [
        threading.Thread(target=lambda: results.append(cache.lookup("q", "llm"))) for _ in range(3)
    ]
    for follower in followers:
        follower.start()
    _wait_until(lambda: _coalescer(cache).followers() == 3)
    go.set()
    for follower in followers:
        follower.join(5)
    leader.join()
    # Each proceeds as a plain miss at once (not one after another as new leaders).
    assert results == [None] * 3
    assert _coalescer(cache).in_flight() == 0


class _SlowReads(MemoryTier):
    """An L1 whose reads in the thread named "slow" return only when the gate opens.

    No peek (``Layers.peek``): the one read a lookup makes is then the flow's,
    the read that decides the miss the coalescer must cover.
    """

    returns_stored_object = False

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def get(self, key: str) -> bytes | None:
        value = super().get(key)
        if threading.current_thread().name == "slow":
            self.gate.wait(10)
        return value


def test_a_miss_read_just_before_the_update_still_gets_the_value() -> None:
    tier = _SlowReads()
    cache = TieredCache(l1=tier, l2=None)
    assert cache.lookup("q", "llm") is None  # this thread leads
    results: list[Any] = []
    slow = threading.Thread(
        target=lambda: results.append(_text(cache.lookup("q", "llm"))), name="slow"
    )
    slow.start()  # reads the L1 (empty), then is held
    time.sleep(0.05)
    cache.update("q", "llm", _answer("just in time"))
    tier.gate.set()  # its read returns the miss it saw; it joins after the flight is over
    slow.join(5)
    assert results == ["just in time"]
    assert cache.stats().extra["coalesced"] == 1


def test_a_leader_with_no_signal_expires_after_its_lease(clock: FakeClock) -> None:
    coalescer = Coalescer(lease=5.0, clock=clock)
    ended, joined = coalescer.join("k", {}, 0, Owner())
    assert ended == [] and isinstance(joined, tuple) and joined[1] is True
    flight = joined[0]
    assert coalescer.join("k", {}, 0, Owner()) == ([], (flight, False))
    clock.advance(4.9)
    coalescer.check(flight)
    assert coalescer.in_flight() == 1
    clock.advance(0.1)
    coalescer.check(flight)
    assert coalescer.in_flight() == 0
    assert flight.outcome.value is RETRY


def test_a_sync_lookup_inside_the_leaders_event_loop_does_not_wait() -> None:
    # Blocking the loop thread would freeze the very task it waits for.
    cache = TieredCache(l2=None, coalesce_wait=30)

    async def main() -> None:
        async def lead() -> None:
            assert await cache.alookup("q", "llm") is None
            await asyncio.sleep(0.5)

        leader = asyncio.create_task(lead())
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        assert cache.lookup("q", "llm") is None  # a plain miss, at once
        assert time.perf_counter() - start < 5  # a wait would last 30 s
        leader.cancel()

    asyncio.run(main())


def test_bad_settings_are_refused() -> None:
    from llmcache import ConfigurationError

    with pytest.raises(ConfigurationError):
        TieredCache(l2=None, coalesce_wait=-1)
    with pytest.raises(ConfigurationError):
        TieredCache(l2=None, coalesce_lease=0)


# -- LangChain's BaseLLM: generate looks its batch up, then calls, then updates ----------


class _SlowLLM(LLM):
    """A completion model that takes 0.3 s a prompt and counts its calls by prompt."""

    calls: dict[str, int] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "slow-test-llm"

    def _call(self, prompt: str, stop: Any = None, run_manager: Any = None, **kw: Any) -> str:
        time.sleep(0.3)
        self.calls[prompt] = self.calls.get(prompt, 0) + 1
        return f"the answer to {prompt}"

    async def _acall(self, prompt: str, stop: Any = None, run_manager: Any = None, **_: Any) -> str:
        await asyncio.sleep(0.3)
        self.calls[prompt] = self.calls.get(prompt, 0) + 1
        return f"the answer to {prompt}"


def test_a_base_llm_batch_leads_every_prompt_it_looked_up() -> None:
    cache = TieredCache(l2=None, coalesce_wait=30)
    llm = _SlowLLM(cache=cache)
    batch = threading.Thread(target=lambda: llm.generate(["p1", "p2", "p3"]))
    batch.start()
    _wait_until(lambda: _coalescer(cache).in_flight() == 3)  # one frame leads all three
    follower = llm.invoke("p1")  # follows the batch's lead of p1
    batch.join()
    assert follower == "the answer to p1"
    assert llm.calls == {"p1": 1, "p2": 1, "p3": 1}
    assert cache.stats().extra["coalesced"] == 1


async def test_a_base_llm_batch_leads_every_prompt_it_looked_up_async() -> None:
    cache = TieredCache(l2=None, coalesce_wait=30)
    llm = _SlowLLM(cache=cache)
    batch = asyncio.create_task(llm.agenerate(["p1", "p2", "p3"]))
    await _until(lambda: _coalescer(cache).in_flight() == 3)
    follower = await llm.ainvoke("p1")
    await batch
    assert follower == "the answer to p1"
    assert llm.calls == {"p1": 1, "p2": 1, "p3": 1}
    assert cache.stats().extra["coalesced"] == 1


class _Wrapper(BaseCache):
    """A cache that observes ours, as benchmark and logging wrappers do."""

    def __init__(self, inner: TieredCache) -> None:
        self.inner = inner

    def lookup(self, prompt: str, llm_string: str) -> Any:
        return self.inner.lookup(prompt, llm_string)

    async def alookup(self, prompt: str, llm_string: str) -> Any:
        return await self.inner.alookup(prompt, llm_string)

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        self.inner.update(prompt, llm_string, return_val)

    async def aupdate(self, prompt: str, llm_string: str, return_val: Any) -> None:
        await self.inner.aupdate(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        self.inner.clear()


def test_identical_calls_coalesce_through_a_cache_that_wraps_ours(sim: Simulator) -> None:
    # The wrapper's lookup returns before the model is called: the lead must
    # belong to LangChain's call around it, not end with the wrapper's frame.
    model = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=sim.base_url,
        api_key="sim",
        cache=_Wrapper(TieredCache(l2=None)),
    )

    async def gathered() -> None:
        await asyncio.gather(*(model.ainvoke(f"wrapped dish {i % 3}") for i in range(12)))

    asyncio.run(gathered())
    assert sim.requests == 3
    model.batch([f"threaded dish {i % 2}" for i in range(8)], config={"max_concurrency": 8})
    assert sim.requests == 5


# -- a lead's end is read from its frame alone ----------------------------------------------


def test_running_reads_a_frame_without_walking_any_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    # Walking another thread's stack can crash CPython 3.11; nothing may call it.
    from llmcache.coalesce.leaders import _running

    def forbidden() -> None:
        raise AssertionError("sys._current_frames walked")

    monkeypatch.setattr(sys, "_current_frames", forbidden)
    inside = threading.Event()
    leave = threading.Event()
    frames: list[Any] = []

    def call() -> None:
        frames.append(sys._getframe())
        inside.set()
        leave.wait(10)

    thread = threading.Thread(target=call)
    thread.start()
    assert inside.wait(10)
    assert _running(frames[0])  # another thread's frame, still running
    assert _running(sys._getframe())  # this very frame
    leave.set()
    thread.join(10)
    assert not _running(frames[0])  # returned

    def numbers() -> Iterator[int]:
        frames.append(sys._getframe())
        yield 1
        yield 2

    generator = numbers()
    assert next(generator) == 1
    assert _running(frames[-1])  # a suspended generator's frame: unknown, so running...
    assert next(generator) == 2  # ...and never closed by asking


def test_a_thread_leader_that_raises_releases_its_follower_without_stack_walks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "_current_frames", lambda: pytest.fail("stack walked"))
    cache = TieredCache(l2=None, coalesce_wait=8.0)
    prompt, llm = "a leader that fails", "model"
    led = threading.Event()
    fail = threading.Event()

    def leader() -> None:
        def call() -> None:
            assert cache.lookup(prompt, llm) is None  # leads
            led.set()
            fail.wait(10)
            raise RuntimeError("the model call failed")

        with contextlib.suppress(RuntimeError):
            call()

    thread = threading.Thread(target=leader)
    thread.start()
    assert led.wait(10)
    found: list[Any] = []
    follower = threading.Thread(target=lambda: found.append(cache.lookup(prompt, llm)))
    follower.start()
    _wait_until(lambda: _coalescer(cache).followers() == 1)  # it follows the leader
    assert not found
    failed_at = time.monotonic()
    fail.set()
    follower.join(10)
    assert found == [None]  # released to lead itself, not handed an answer
    assert time.monotonic() - failed_at < 2.0  # the watcher's poll, not the 8 s bound
    thread.join(10)
