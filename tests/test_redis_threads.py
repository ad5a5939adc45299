"""The threaded Redis path: concurrent threads' operations grouped into round trips.

The batcher alone (``ThreadBatcher`` with a round trip of the test's own, so
that who waits for whom is decided, not raced), then the tier on real servers:
threads get their own answers, share connections, and LangChain's ``batch``
(``invoke`` in worker threads) hits through it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from langchain_openai import ChatOpenAI

from llmcache import TieredCache, TierError
from llmcache.backends.redis import RedisTier
from llmcache.backends.redis_threads import ThreadBatcher, Waiter
from llmcache.simulator import Simulator, SimulatorConfig

pytest_plugins = ["tests.redis_servers"]
pytest.register_assert_rewrite("tests.redis_servers")
from tests.redis_servers import (  # noqa: E402
    RedisClusterServers,
    connections_named,
    purge_prefix,
)

WAIT = 10.0  # seconds a test waits for a thread before calling it stuck


# -- the batcher, with a round trip the test holds -------------------------------------


class HeldRoundTrip:
    """A round trip that answers ``value:<key>``, and holds the first one until released."""

    def __init__(self, fail_first: BaseException | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: list[int] = []
        self.release = threading.Event()
        self.fail_first = fail_first

    def __call__(self, batch: Sequence[Waiter]) -> list[Any]:
        self.batches.append([waiter.key for waiter in batch])
        self.threads.append(threading.get_ident())
        if len(self.batches) == 1:
            assert self.release.wait(WAIT)
            if self.fail_first is not None:
                raise self.fail_first
        return [b"value:" + waiter.key.encode() for waiter in batch]


def _call_in_threads(
    batcher: ThreadBatcher, keys: list[str]
) -> tuple[list[threading.Thread], dict[str, Any]]:
    results: dict[str, Any] = {}

    def call(key: str) -> None:
        try:
            results[key] = batcher.submit("get", key)
        except TierError as exc:
            results[key] = exc

    threads = [threading.Thread(target=call, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    return threads, results


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a thread is stuck"


def test_a_lone_call_is_sent_at_once_by_its_own_thread() -> None:
    round_trip = HeldRoundTrip()
    round_trip.release.set()
    batcher = ThreadBatcher(round_trip)
    assert batcher.submit("get", "k") == b"value:k"
    assert round_trip.batches == [["k"]]
    assert round_trip.threads == [threading.get_ident()]  # no hand-over to another thread
    assert batcher.submit("get", "j") == b"value:j"  # and nothing left behind
    assert round_trip.batches == [["k"], ["j"]]


def test_threads_arriving_during_a_round_trip_share_the_next() -> None:
    round_trip = HeldRoundTrip()
    batcher = ThreadBatcher(round_trip)
    first, first_result = _call_in_threads(batcher, ["first"])
    _until(lambda: len(round_trip.batches) == 1)
    keys = [f"k{index}" for index in range(8)]
    threads, results = _call_in_threads(batcher, keys)
    _until(lambda: batcher.queued == len(keys))
    round_trip.release.set()
    _join(first + threads)
    assert first_result == {"first": b"value:first"}
    assert results == {key: b"value:" + key.encode() for key in keys}  # each its own
    assert round_trip.batches[0] == ["first"]
    assert sorted(round_trip.batches[1]) == keys  # one round trip for all eight
    assert len(round_trip.batches) == 2
    assert (batcher.round_trips, batcher.operations) == (2, 9)


def test_a_queue_longer_than_max_batch_goes_in_several_round_trips() -> None:
    round_trip = HeldRoundTrip()
    batcher = ThreadBatcher(round_trip, max_batch=3)
    first, _ = _call_in_threads(batcher, ["first"])
    _until(lambda: len(round_trip.batches) == 1)
    keys = [f"k{index}" for index in range(7)]
    threads, results = _call_in_threads(batcher, keys)
    _until(lambda: batcher.queued == len(keys))
    round_trip.release.set()
    _join(first + threads)
    assert results == {key: b"value:" + key.encode() for key in keys}
    assert [len(batch) for batch in round_trip.batches] == [1, 3, 3, 1]


def test_a_failed_round_trip_fails_the_threads_queued_behind_it_at_once() -> None:
    round_trip = HeldRoundTrip(fail_first=ConnectionError("no answer"))
    batcher = ThreadBatcher(round_trip)
    first, first_result = _call_in_threads(batcher, ["first"])
    _until(lambda: len(round_trip.batches) == 1)
    threads, results = _call_in_threads(batcher, ["a", "b", "c"])
    _until(lambda: batcher.queued == 3)
    round_trip.release.set()
    _join(first + threads)
    errors = [first_result["first"], *results.values()]
    assert all(isinstance(error, TierError) for error in errors)
    assert all(isinstance(error.__cause__, ConnectionError) for error in errors)
    assert len({id(error) for error in errors}) == 4  # each caller its own exception
    assert len(round_trip.batches) == 1  # not sent again into the same wall
    assert batcher.submit("get", "later") == b"value:later"  # and the batcher goes on


def test_an_operation_error_reaches_its_own_caller_only() -> None:
    def round_trip(batch: Sequence[Waiter]) -> list[Any]:
        return [TierError("refused") if w.key == "bad" else w.key.encode() for w in batch]

    batcher = ThreadBatcher(round_trip)
    with pytest.raises(TierError, match="refused"):
        batcher.submit("set", "bad", b"v", None)
    assert batcher.submit("get", "good") == b"good"


def test_an_interrupted_leader_does_not_strand_its_companions() -> None:
    class Interrupt(BaseException):
        pass

    round_trip = HeldRoundTrip(fail_first=Interrupt())
    batcher = ThreadBatcher(round_trip)
    interrupted: list[BaseException] = []

    def lead() -> None:
        try:
            batcher.submit("get", "first")
        except Interrupt as exc:
            interrupted.append(exc)

    first = threading.Thread(target=lead)
    first.start()
    _until(lambda: len(round_trip.batches) == 1)
    threads, results = _call_in_threads(batcher, ["a", "b"])
    _until(lambda: batcher.queued == 2)
    round_trip.release.set()
    _join([first, *threads])
    assert len(interrupted) == 1  # the leader's own interrupt reaches the leader
    assert all(isinstance(result, TierError) for result in results.values())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_process_starts_with_an_idle_batcher() -> None:
    round_trip = HeldRoundTrip()
    batcher = ThreadBatcher(round_trip)
    first, _ = _call_in_threads(batcher, ["first"])
    _until(lambda: len(round_trip.batches) == 1)  # a round trip in flight at the fork
    pid = os.fork()
    if pid == 0:  # the child: its lone call must go at once, not queue behind a ghost
        round_trip.release.set()  # (the child's copy: the parent's stays held)
        signal.alarm(int(WAIT))  # a child stuck behind the ghost dies of SIGALRM
        code = 0 if batcher.submit("get", "child") == b"value:child" else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    round_trip.release.set()
    _join(first)
    assert os.waitstatus_to_exitcode(status) == 0


# -- on real servers ---------------------------------------------------------------------


def _hammer(calls: list[Callable[[], Any]], threads: int) -> list[Any]:
    """Run ``calls`` from ``threads`` threads started together; results in call order."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(threads)

    def work(offset: int) -> None:
        barrier.wait()
        for index in range(offset, len(calls), threads):
            try:
                results[index] = calls[index]()
            except TierError as exc:
                results[index] = exc

    pool = [threading.Thread(target=work, args=(offset,)) for offset in range(threads)]
    for thread in pool:
        thread.start()
    _join(pool)
    return results


@pytest.mark.redis
def test_concurrent_threads_get_their_own_values(
    make_tier: Callable[..., RedisTier], redis_url: str, key_prefix: str
) -> None:
    name = f"llmcache-test-{uuid.uuid4().hex[:8]}"
    tier = make_tier(client_options={"client_name": name})
    keys = [f"ns:{index}" for index in range(600)]
    assert _hammer([lambda k=k: tier.set(k, k.encode()) for k in keys], 16) == [None] * 600
    with contextlib.closing(redis.Redis.from_url(redis_url)) as raw:
        raw.rpush(f"{key_prefix}ns:list", b"x")  # another type under one of our keys
        got = _hammer([lambda k=k: tier.get(k) for k in [*keys, "ns:list", "ns:absent"]], 16)
        assert got == [key.encode() for key in keys] + [None, None]
        _hammer([lambda k=k: tier.delete(k) for k in keys[::2]], 16)
        assert _hammer([lambda k=k: tier.get(k) for k in keys], 16) == [
            None if index % 2 == 0 else key.encode() for index, key in enumerate(keys)
        ]
        # One round trip in flight at a time: 16 threads shared one connection
        # (unbatched, each would have taken one of its own from the pool).
        assert connections_named(raw, name) == 1
    batcher = tier._threads["server"]
    assert batcher.operations > batcher.round_trips  # some round trips carried several


@pytest.mark.redis
def test_langchain_batch_hits_through_threads(
    make_tier: Callable[..., RedisTier],
) -> None:
    tier = make_tier()
    cache = TieredCache(l1=None, l2=tier, namespace=f"t{uuid.uuid4().hex[:6]}")
    with Simulator(SimulatorConfig(keep_alive=False)) as sim:
        llm = ChatOpenAI(
            model="gpt-4o-mini", base_url=sim.base_url, api_key="sim", max_retries=0, cache=cache
        )
        prompts = [f"batch question {index} {uuid.uuid4().hex[:6]}" for index in range(60)]
        first = [message.content for message in llm.batch(prompts)]
        assert sim.requests == 60
        again = [message.content for message in llm.batch(prompts, {"max_concurrency": 16})]
        assert again == first  # every hit its own prompt's answer
        assert sim.requests == 60
    assert len(set(first)) == 60
    assert cache.stats().tiers["redis"].hits == 60


@pytest.mark.redis
@pytest.mark.cluster
def test_threads_on_a_cluster_share_one_round_trip_per_master(
    redis_cluster: RedisClusterServers, key_prefix: str
) -> None:
    name = f"llmcache-test-{uuid.uuid4().hex[:8]}"
    tier = RedisTier(
        redis_cluster.url, cluster=True, prefix=key_prefix, client_options={"client_name": name}
    )
    try:
        keys = [f"ns:{index}" for index in range(300)]
        _hammer([lambda k=k: tier.set(k, k.encode()) for k in keys], 16)
        got = _hammer([lambda k=k: tier.get(k) for k in [*keys, "ns:absent"]], 16)
        assert got == [key.encode() for key in keys] + [None]
        masters = {f"127.0.0.1:{node.port}" for node in redis_cluster.nodes}
        assert set(tier._threads) <= masters | {tier._seed}
        assert masters <= set(tier._threads)  # one batcher per master
        for node in redis_cluster.nodes:
            with contextlib.closing(node.client()) as client:
                # One round trip in flight per master (the seed's client also keeps
                # the CLUSTER SLOTS connection redis-py made when it mapped the cluster).
                assert connections_named(client, name) <= 2
    finally:
        tier.close()
        purge_prefix(redis_cluster.url, key_prefix, cluster=True)
