"""Fail-open on a real server: SIGKILL, SIGSTOP, restart; and the circuit breaker itself.

Each fault test runs its own valkey-server (``private_server``), never the shared
ones and never ``$LLMCACHE_TEST_REDIS_URL``: it needs a PID to signal.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI

from llmcache import TieredCache, TierError
from llmcache.backends.breaker import CircuitBreaker
from llmcache.backends.redis import RedisTier
from llmcache.errors import ConfigurationError
from llmcache.simulator import Simulator, SimulatorConfig
from tests.conftest import FakeClock

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import RedisServer  # noqa: E402

SOCKET_TIMEOUT = 0.25
CONNECT_TIMEOUT = 0.5
#: What one round trip may cost while the breaker is closed (the design's promise: a
#: reconnect, then a read), plus scheduling slack on 2 loaded cores. A miss's lease
#: is not asked of a server whose read just failed: before that, a gather of 100 paid
#: the read's timeout, then 100 lease connections' timeouts after it (measured: 1.15 s
#: and 0.62 s for the first two gathers at load 16, leases up to 0.78 s; 1.14-1.38 s
#: inside CI's full run); now 0.26-0.30 s each at load 14-16, one socket timeout.
#: Still far below what an unbounded client pays (LangChain's RedisCache: 5 s per call).
BOUND = SOCKET_TIMEOUT + CONNECT_TIMEOUT + 0.25


# -- the breaker, on an injected clock ----------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5, clock=clock)
    for _ in range(5):
        breaker.failure()
        breaker.failure()
        breaker.success()  # a success in between starts the count again
    assert breaker.state == "closed"
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    with pytest.raises(TierError, match="circuit breaker open"):
        breaker.check()
    assert breaker.opened == 1


def test_breaker_lets_one_probe_through_after_the_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock)
    breaker.failure()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for its verdict
    breaker.success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(10))


def test_a_failed_probe_opens_it_for_another_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.failure()  # one failed probe is enough, whatever the threshold
    assert breaker.state == "open"
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.opened == 1  # re-opening after a probe is the same outage


def test_an_abandoned_probe_is_replaced_after_a_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock)
    breaker.failure()
    clock.advance(5)
    assert breaker.allow()  # this probe's caller is cancelled and never reports
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_breaker_is_thread_safe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=50, cooldown=5, clock=clock)
    barrier = threading.Barrier(8)

    def fail() -> None:
        barrier.wait()
        for _ in range(1000):
            breaker.failure()

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.opened == 1
    clock.advance(5)
    probes: list[bool] = []
    threads = [threading.Thread(target=lambda: probes.append(breaker.allow())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(probes) == [False] * 7 + [True]


def test_breaker_says_when_the_last_call_failed(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5, clock=clock)
    assert not breaker.failing
    breaker.failure()
    assert breaker.failing and breaker.state == "closed"  # still asked, but suspect
    breaker.success()
    assert not breaker.failing
    for _ in range(3):
        breaker.failure()
    clock.advance(5)
    assert breaker.failing  # half-open: not known good until a probe succeeds


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"cooldown": 0}])
def test_breaker_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


# -- faults on a real server ---------------------------------------------------------------


@pytest.fixture
def make_tier(private_server: RedisServer) -> Iterator[Callable[..., RedisTier]]:
    tiers: list[RedisTier] = []

    def make(**kwargs: Any) -> RedisTier:
        kwargs = {"socket_timeout": SOCKET_TIMEOUT, "connect_timeout": CONNECT_TIMEOUT, **kwargs}
        tier = RedisTier(private_server.url(), **kwargs)
        tiers.append(tier)
        return tier

    yield make
    for tier in tiers:
        tier.close()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(latency_ms=30)) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[openai.DefaultAsyncHttpxClient]:
    async with openai.DefaultAsyncHttpxClient() as client:
        yield client


def _chat(sim: Simulator, cache: TieredCache, http: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini", base_url=sim.base_url, api_key="sim", max_retries=0, cache=cache,
        http_async_client=http,
    )  # fmt: skip


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    try:
        result = call()
    except TierError as exc:
        result = exc
    return time.perf_counter() - start, result


@pytest.mark.redis
@pytest.mark.slow
def test_sigstop_each_call_is_bounded_then_the_breaker_answers_at_once(
    make_tier: Callable[..., RedisTier], private_server: RedisServer, clock: FakeClock
) -> None:
    tier = make_tier(clock=clock, failure_threshold=3, cooldown=10)
    tier.set("ns:k", b"v")
    private_server.pause()
    timings = [_timed(lambda: tier.get("ns:k")) for _ in range(6)]
    assert all(isinstance(result, TierError) for _, result in timings)
    assert all(elapsed < BOUND for elapsed, _ in timings), timings
    assert all(elapsed >= SOCKET_TIMEOUT * 0.9 for elapsed, _ in timings[:3])  # really waited
    assert all(elapsed < 0.05 for elapsed, _ in timings[3:])  # open: not asking at all
    assert tier.breakers["server"].state == "open"

    private_server.resume()
    assert isinstance(_timed(lambda: tier.get("ns:k"))[1], TierError)  # still cooling down
    clock.advance(10)
    assert tier.get("ns:k") == b"v"  # the probe reconnects, and closes the breaker
    assert tier.breakers["server"].state == "closed"


@pytest.mark.redis
@pytest.mark.slow
def test_sigstop_under_threads_each_call_is_bounded(
    make_tier: Callable[..., RedisTier], private_server: RedisServer, clock: FakeClock
) -> None:
    # Threads share round trips (redis_threads): those queued behind one that times
    # out fail with it, so no caller waits out a second timeout in a row.
    tier = make_tier(clock=clock, failure_threshold=3, cooldown=10)
    tier.set("ns:k", b"v")
    private_server.pause()
    barrier = threading.Barrier(12)
    timings: list[tuple[float, Any]] = []

    def calls() -> None:
        barrier.wait()
        for _ in range(5):
            timings.append(_timed(lambda: tier.get("ns:k")))

    threads = [threading.Thread(target=calls) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(timings) == 60
    assert all(isinstance(result, TierError) for _, result in timings)  # fail-open's part
    assert max(elapsed for elapsed, _ in timings) < BOUND, sorted(timings)[-3:]
    assert tier.breakers["server"].state == "open"
    start = time.perf_counter()
    with pytest.raises(TierError, match="circuit breaker open"):
        tier.get("ns:k")
    assert time.perf_counter() - start < SOCKET_TIMEOUT / 2  # refused without waiting
    private_server.resume()
    clock.advance(10)
    assert tier.get("ns:k") == b"v"


@pytest.mark.redis
@pytest.mark.slow
async def test_sigstop_under_a_gather_of_lookups(
    make_tier: Callable[..., RedisTier], private_server: RedisServer, clock: FakeClock
) -> None:
    tier = make_tier(clock=clock, failure_threshold=3, cooldown=10)
    cache = TieredCache(l1=None, l2=tier, namespace="stop")
    await tier.aget("ns:warm")  # this loop's client is connected
    private_server.pause()
    for _ in range(3):  # one round trip per gather: three failures open the breaker
        start = time.perf_counter()
        results = await asyncio.gather(*(cache.alookup(f"p{i}", "llm") for i in range(100)))
        assert results == [None] * 100
        assert time.perf_counter() - start < BOUND
    assert tier.breakers["server"].state == "open"
    results = await asyncio.gather(*(cache.alookup(f"p{i}", "llm") for i in range(100)))
    assert results == [None] * 100
    start = time.perf_counter()
    assert await cache.alookup("p0", "llm") is None
    assert time.perf_counter() - start < SOCKET_TIMEOUT / 2  # refused without waiting
    assert cache.stats().tiers["redis"].errors >= 401  # every failed lookup counted

    private_server.resume()
    clock.advance(10)
    assert await tier.aget("ns:warm") is None  # the probe: answered, so closed again
    assert tier.breakers["server"].state == "closed"


@pytest.mark.redis
@pytest.mark.slow
async def test_sigstop_under_concurrent_ainvokes(
    make_tier: Callable[..., RedisTier],
    private_server: RedisServer,
    clock: FakeClock,
    sim: Simulator,
    http: Any,
) -> None:
    tier = make_tier(clock=clock, failure_threshold=3, cooldown=10)
    llm = _chat(sim, TieredCache(l1=None, l2=tier, namespace="stop"), http)
    prompts = [f"question {index} {uuid.uuid4().hex[:6]}" for index in range(50)]
    warm = [m.content for m in await asyncio.gather(*map(llm.ainvoke, prompts))]

    async def timed(prompt: str) -> tuple[float, Any]:
        start = time.perf_counter()
        answer = await llm.ainvoke(prompt)
        return time.perf_counter() - start, answer.content

    private_server.pause()
    rounds = [await asyncio.gather(*map(timed, prompts)) for _ in range(2)]
    for timings in rounds:  # every call answers, with the model's own (deterministic) answer
        assert [content for _, content in timings] == warm
        # Closed breaker: a lookup and a write, each at most one timeout (2 round trips).
        assert max(elapsed for elapsed, _ in timings) < 2 * BOUND + 0.2
    assert tier.breakers["server"].state == "open"  # lookups, writes, lookups: 3 failures
    # Open breaker: later calls do not wait for Redis at all (one at a time, so that
    # the figure is the call's own, not 50 calls' CPU on a busy machine).
    for prompt, answer in zip(prompts[:5], warm, strict=False):
        elapsed, content = await timed(prompt)
        assert content == answer
        assert elapsed < SOCKET_TIMEOUT


@pytest.mark.redis
@pytest.mark.slow
async def test_sigkill_in_the_middle_of_200_concurrent_ainvokes(
    make_tier: Callable[..., RedisTier], private_server: RedisServer, sim: Simulator, http: Any
) -> None:
    tier = make_tier()
    cache = TieredCache(l1=None, l2=tier, namespace="kill")
    llm = _chat(sim, cache, http)
    prompts = [f"question {index} {uuid.uuid4().hex[:6]}" for index in range(200)]
    cached = prompts[::2]  # half of them
    first = await asyncio.gather(*map(llm.ainvoke, cached))
    warm = {prompt: message.content for prompt, message in zip(cached, first, strict=True)}
    sim.reset_counters()

    async def call(index: int) -> Any:
        await asyncio.sleep(index * 0.001)  # lookups spread out: some before the kill, some after
        return await llm.ainvoke(prompts[index])

    async def killer() -> None:
        # The simulator counts on its own thread: poll. At 25 requests misses are
        # in flight to the model and lookups are still arriving: the kill lands mid-way.
        while sim.requests < 25:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        private_server.kill()

    start = time.perf_counter()
    kill = asyncio.ensure_future(killer())
    answers = await asyncio.gather(*(call(index) for index in range(200)))
    await kill
    assert time.perf_counter() - start < 5
    for prompt, answer in zip(prompts, answers, strict=True):
        assert prompt.split()[1] in str(answer.content)  # its own answer
        if prompt in warm:
            assert answer.content == warm[prompt]
    stats = cache.stats().tiers["redis"]
    assert stats.hits > 0  # some were served before the kill
    assert stats.errors > 0  # and some lookups or writes met a dead server
    assert sim.requests >= 100  # every miss and every refused lookup reached the model


@pytest.mark.redis
@pytest.mark.slow
def test_sigkill_under_langchain_batch_in_threads(
    make_tier: Callable[..., RedisTier], private_server: RedisServer
) -> None:
    tier = make_tier()
    cache = TieredCache(l1=None, l2=tier, namespace="kill")
    prompts = [f"threaded question {index} {uuid.uuid4().hex[:6]}" for index in range(60)]
    with Simulator(SimulatorConfig(latency_ms=30, keep_alive=False)) as sim:
        llm = ChatOpenAI(
            model="gpt-4o-mini", base_url=sim.base_url, api_key="sim", max_retries=0, cache=cache
        )
        warm = [message.content for message in llm.batch(prompts[::2])]  # half cached
        requests = sim.requests
        private_server.kill()
        start = time.perf_counter()
        answers = llm.batch(prompts, {"max_concurrency": 16})
        elapsed = time.perf_counter() - start
        assert sim.requests == requests + len(prompts)  # every lookup failed open
    for prompt, answer in zip(prompts, answers, strict=True):
        assert prompt in str(answer.content)  # its own answer (the simulator quotes it)
    assert [answer.content for answer in answers[::2]] == warm
    # A refused connection fails at once; then the breaker refuses without asking.
    assert elapsed < BOUND + 2.0, elapsed  # 60 model calls at 30 ms, 16 at a time: ~0.2 s
    assert tier.breakers["server"].state == "open"
    assert cache.stats().tiers["redis"].errors >= 3


@pytest.mark.redis
@pytest.mark.slow
async def test_hits_resume_soon_after_a_restart(
    make_tier: Callable[..., RedisTier], private_server: RedisServer, sim: Simulator, http: Any
) -> None:
    tier = make_tier(cooldown=1.0)  # the real clock: this is about real recovery time
    cache = TieredCache(l1=None, l2=tier, namespace="restart")
    llm = _chat(sim, cache, http)
    sim.set_latency(0)
    prompt = f"What is a roux? {uuid.uuid4().hex[:6]}"
    answer = (await asyncio.to_thread(llm.invoke, prompt)).content  # the sync pool connects
    assert (await llm.ainvoke(prompt)).content == answer
    assert sim.requests_for(prompt) == 1
    private_server.kill()
    for _ in range(5):  # the breaker opens; every call still answers
        assert (await llm.ainvoke(prompt)).content == answer
    assert tier.breakers["server"].state != "closed"

    private_server.start()  # same port, empty
    restarted = time.perf_counter()
    while True:
        before = sim.requests_for(prompt)
        assert (await llm.ainvoke(prompt)).content == answer
        if sim.requests_for(prompt) == before:  # served from Redis
            break
        assert time.perf_counter() - restarted < 2.5, "no hit within 2.5 s of the restart"
        await asyncio.sleep(0.05)
    # The sync pool's connection died with the old server; it reconnects on first use.
    before = sim.requests_for(prompt)
    assert (await asyncio.to_thread(llm.invoke, prompt)).content == answer
    assert sim.requests_for(prompt) == before
