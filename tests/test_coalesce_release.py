"""Coalescing never stalls an unrelated call (issue 11, point 7).

When a leader ends - its answer, a failed model call, a cancellation, a lookup
with no update after it, the same frame looking something else up - its
followers proceed at once: in the same cache, in another cache of the process,
and in another process (the lease let go at once, not at the keeper's next
round, nor never). A caller never waits on a lease its own thread or task holds,
whichever cache took it. Real Redis, real processes; ``coalesce_wait`` is 8 s
everywhere, so a follower released only by its bound fails every bound here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from llmcache import RedisTier, TieredCache
from llmcache.coalesce import Coalescer
from llmcache.coalesce.leaders import LEADS
from tests._lead_worker import ANSWER, LLM, MODES, Leader

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import EXTERNAL_URL_ENV, purge_prefix  # noqa: E402

pytestmark = [pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
WAIT = 8.0  # coalesce_wait: what a stalled follower would wait
# The rule is 100 ms; two cores shared with other test runs add scheduling noise.
BOUND = 0.5


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """One server (the external one when set): the cases below are about timing, not servers."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        return external
    return str(request.getfixturevalue("valkey_server").url())


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    prefix = f"llmcache-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    purge_prefix(url, prefix)


def _cache(url: str, prefix: str) -> TieredCache:
    return TieredCache(l2=RedisTier(url, prefix=prefix), coalesce_wait=WAIT)


def _coalescer(cache: TieredCache) -> Coalescer:
    assert cache._coalescer is not None
    return cache._coalescer


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def _leases(url: str, prefix: str) -> dict[bytes, bytes | None]:
    with redis.Redis.from_url(url) as client:
        return {key: client.get(key) for key in client.scan_iter(match=f"{prefix}~lease:*")}


class Follower:
    """One lookup of the key, sync in a thread or async in a loop of its own; timed."""

    def __init__(self, cache: TieredCache, prompt: str, sync: bool) -> None:
        self.result: Any = "not yet"
        self.done_at = 0.0
        self.hold = threading.Event()  # its call goes on (a lead it took is held) until set

        async def alook() -> None:
            self.result = await cache.alookup(prompt, LLM)
            self.done_at = time.time()
            await asyncio.to_thread(self.hold.wait, 30)

        def run() -> None:
            if sync:
                self.result = cache.lookup(prompt, LLM)
                self.done_at = time.time()
                self.hold.wait(30)
            else:
                asyncio.run(alook())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        deadline = time.monotonic() + WAIT + 5
        while self.result == "not yet":
            assert time.monotonic() < deadline
            time.sleep(0.002)

    def close(self) -> None:
        self.hold.set()
        self.thread.join(30)


class ChildLeader:
    """``tests._lead_worker`` in a process of its own."""

    def __init__(self, url: str, prefix: str, mode: str, prompt: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-W", "error", "-m", "tests._lead_worker", url, prefix, mode, prompt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stdin is not None
        self.stdout, self.stdin = self.process.stdout, self.process.stdin
        line = self.stdout.readline().strip()
        assert line == "led", self.process.stderr.read() if self.process.stderr else line

    def end(self) -> float:
        self.stdin.write("go\n")
        self.stdin.flush()
        word, at = self.stdout.readline().split()
        assert word == "ended"
        return float(at)

    def close(self) -> None:
        try:
            _, err = self.process.communicate(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err


@pytest.mark.parametrize("place", ["same cache", "other cache", "other process"])
@pytest.mark.parametrize("mode", MODES)
def test_when_a_leader_ends_its_follower_proceeds_at_once(
    mode: str, place: str, url: str, prefix: str
) -> None:
    prompt = f"{mode} {place} {uuid.uuid4().hex[:8]}"
    sync = mode.startswith("sync")
    leader_cache = None if place == "other process" else _cache(url, prefix)
    leader: Leader | ChildLeader
    if leader_cache is None:
        leader = ChildLeader(url, prefix, mode, prompt)
    else:
        leader = Leader(leader_cache, mode, prompt)
        leader.start()
    cache = leader_cache if place == "same cache" and leader_cache else _cache(url, prefix)
    follower = None
    try:
        held = _leases(url, prefix)
        assert len(held) == 1  # the leader holds the key's lease
        follower = Follower(cache, prompt, sync)
        if cache is leader_cache:
            _wait_until(lambda: _coalescer(cache).followers() == 1)
        else:
            # Its own process-local lead, then the lease found held: it waits for it.
            _wait_until(lambda: _coalescer(cache).in_flight() == 1)
            time.sleep(0.1)
        assert follower.result == "not yet"
        ended_at = leader.end()
        follower.join()
        waited = follower.done_at - ended_at
        print(f"{mode}, {place}: the follower proceeded {waited * 1000:.1f} ms after the end")
        if mode.endswith("answer"):
            assert follower.result is not None
            assert [g.message.content for g in follower.result] == ["the leader's answer"]
        else:
            assert follower.result is None  # released: it leads now, and holds the lease
            now = _leases(url, prefix)
            assert len(now) >= 1 and all(token not in held.values() for token in now.values())
        assert waited < BOUND
    finally:
        if follower is not None:
            follower.close()
        leader.close()
        cache.close()
        if leader_cache is not None and leader_cache is not cache:
            leader_cache.close()


# -- a caller never waits on its own lease ----------------------------------------------


def test_a_thread_never_waits_on_a_lease_it_took_through_another_cache(
    url: str, prefix: str
) -> None:
    first, second = _cache(url, prefix), _cache(url, prefix)
    assert first.lookup("q", LLM) is None  # leads, with the lease, and never updates
    start = time.perf_counter()
    assert second.lookup("q", LLM) is None  # the same thread asks again: no wait
    elapsed = time.perf_counter() - start
    print(f"the same thread through another cache: {elapsed * 1000:.1f} ms")
    assert elapsed < BOUND
    assert _coalescer(first).in_flight() == 0  # its earlier lead is over
    # The lease is the second cache's now: its update lets other processes go.
    second.update("q", LLM, ANSWER)
    assert _leases(url, prefix) == {}
    first.close()
    second.close()


def test_a_nested_call_never_waits_on_the_lease_of_the_call_around_it(
    url: str, prefix: str
) -> None:
    first, second = _cache(url, prefix), _cache(url, prefix)

    def inner() -> float:
        start = time.perf_counter()
        assert second.lookup("q", LLM) is None
        return time.perf_counter() - start

    assert first.lookup("q", LLM) is None
    elapsed = inner()
    print(f"a nested call through another cache: {elapsed * 1000:.1f} ms")
    assert elapsed < BOUND
    first.close()
    second.close()


async def test_a_task_never_waits_on_a_lease_it_took_through_another_cache(
    url: str, prefix: str
) -> None:
    first, second = _cache(url, prefix), _cache(url, prefix)
    assert await first.alookup("q", LLM) is None
    start = time.perf_counter()
    assert await second.alookup("q", LLM) is None
    elapsed = time.perf_counter() - start
    print(f"the same task through another cache: {elapsed * 1000:.1f} ms")
    assert elapsed < BOUND
    await second.aupdate("q", LLM, ANSWER)
    assert _leases(url, prefix) == {}
    await first.aclose()
    await second.aclose()


# -- code that only looks holds one lead at a time ---------------------------------------


def test_code_that_only_looks_holds_one_lead_per_thread() -> None:
    cache = TieredCache(l2=None)
    before = len(LEADS)
    for i in range(300):
        assert cache.lookup(f"only looking {i}", LLM) is None
    assert _coalescer(cache).in_flight() == 1
    assert len(LEADS) == before + 1
    cache.close()
    assert len(LEADS) == before


async def test_code_that_only_looks_holds_one_lead_per_task() -> None:
    cache = TieredCache(l2=None)
    for i in range(300):
        assert await cache.alookup(f"only looking {i}", LLM) is None
    assert _coalescer(cache).in_flight() == 1
