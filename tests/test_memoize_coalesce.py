"""memoize coalesces: N identical concurrent calls run the function once (threads, tasks).

The function holds its call until every other caller waits for it (the
coalescer's follower count), so the calls truly overlap; no sleeps, no timing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmcache import Cache, DiskTier, MemoryTier, RedisTier

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402

N = 8
_BOUND = 20.0  # seconds: only a broken coalescer comes near it


@pytest.fixture(params=["memory", "disk", pytest.param("redis", marks=pytest.mark.redis)])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cache]:
    url = prefix = ""
    if request.param == "memory":
        made = Cache(l1=MemoryTier(), l2=None)
    elif request.param == "disk":
        made = Cache(l2=DiskTier(tmp_path))
    else:
        url = os.environ.get("LLMCACHE_TEST_REDIS_URL") or str(
            request.getfixturevalue("valkey_server").url()
        )
        prefix = request.getfixturevalue("key_prefix")
        made = Cache(l2=RedisTier(url, prefix=prefix), secret="s" * 32)
    yield made
    made.close()
    if url:
        purge_prefix(url, prefix)


def _followers(cache: Cache) -> int:
    coalescer = cache.engine.coalescer
    assert coalescer is not None
    return coalescer.followers()


def _wait_for_followers(cache: Cache, count: int) -> None:
    deadline = time.monotonic() + _BOUND
    while _followers(cache) < count:
        assert time.monotonic() < deadline, f"only {_followers(cache)} of {count} followed"
        time.sleep(0.001)


async def _await_followers(cache: Cache, count: int) -> None:
    deadline = time.monotonic() + _BOUND
    while _followers(cache) < count:
        assert time.monotonic() < deadline, f"only {_followers(cache)} of {count} followed"
        await asyncio.sleep(0.001)


def test_identical_calls_from_threads_run_the_function_once(cache: Cache) -> None:
    runs: list[str] = []

    @cache.memoize()
    def answer(question: str) -> dict[str, Any]:
        runs.append(question)
        _wait_for_followers(cache, N - 1)  # every other thread waits on this call
        return {"answer": question.upper(), "sources": [1, 2]}

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(answer, ["why?"] * N))
    assert runs == ["why?"]
    assert results == [{"answer": "WHY?", "sources": [1, 2]}] * N
    results[0]["sources"].append(3)  # each caller got its own object
    assert results[1]["sources"] == [1, 2]
    assert cache.stats().extra["coalesced"] == N - 1


async def test_identical_calls_from_tasks_run_the_function_once(cache: Cache) -> None:
    runs: list[int] = []

    @cache.memoize()
    async def embed(n: int) -> list[float]:
        runs.append(n)
        if n == 3:
            # Only the call with N callers waits for its followers: embed(4) has none,
            # and may start after embed(3)'s followers have their answer (its Redis
            # lease can take longer), when waiting for them would wait forever.
            await _await_followers(cache, N - 1)
        return [n / 2, n / 4]

    results = await asyncio.gather(*(embed(3) for _ in range(N)), embed(4))
    assert sorted(runs) == [3, 4]  # one run per distinct call
    assert results == [[1.5, 0.75]] * N + [[2.0, 1.0]]
    assert await embed(3) == [1.5, 0.75] and sorted(runs) == [3, 4]


def test_a_failed_call_is_not_handed_over_the_waiting_calls_run_it_again(cache: Cache) -> None:
    runs: list[int] = []
    lock = threading.Lock()

    @cache.memoize()
    def flaky(n: int) -> int:
        with lock:
            runs.append(n)
            first = len(runs) == 1
        if first:
            _wait_for_followers(cache, N - 1)
            raise RuntimeError("upstream failed")
        return n * 10

    def call(n: int) -> int | str:
        try:
            return flaky(n)
        except RuntimeError as exc:
            return str(exc)

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(call, [7] * N))
    # The leader's caller alone sees its error; the others followed the next leader.
    assert sorted(results, key=str) == [70] * (N - 1) + ["upstream failed"]
    assert runs == [7, 7]


async def test_a_cancelled_leader_lets_the_waiting_tasks_go_on(cache: Cache) -> None:
    started = asyncio.Event()
    runs: list[int] = []

    @cache.memoize()
    async def slow(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            started.set()
            await asyncio.sleep(_BOUND)  # cancelled long before
        return n + 1

    leader = asyncio.create_task(slow(1))
    await started.wait()
    followers = [asyncio.create_task(slow(1)) for _ in range(N - 1)]
    await _await_followers(cache, N - 1)
    leader.cancel()
    assert await asyncio.gather(*followers) == [2] * (N - 1)
    assert runs == [1, 1]
    with pytest.raises(asyncio.CancelledError):
        await leader


def test_coalesce_false_runs_every_call(tmp_path: Path) -> None:
    cache = Cache(l2=DiskTier(tmp_path), coalesce=False)
    barrier = threading.Barrier(4, timeout=_BOUND)
    runs: list[int] = []

    @cache.memoize()
    def each(n: int) -> int:
        runs.append(n)
        barrier.wait()  # all four run at once: nobody waited for another
        return n

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(each, [1] * 4)) == [1] * 4
    assert runs == [1] * 4
    cache.close()
