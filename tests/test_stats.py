"""Counters: exact under threads, kept when threads end, and never a leak."""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from llmcache.stats import Counters


def test_counts_from_many_threads_are_exact() -> None:
    counters = Counters("t")
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            counters.add("misses")
            counters.add_hit(3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    seen = [counters.get("hits")]
    while any(thread.is_alive() for thread in threads):  # read while they count
        seen.append(counters.get("hits"))
    for thread in threads:
        thread.join()
    assert seen == sorted(seen)  # a total never goes back: no count lost or undone
    assert counters.get("misses") == counters.get("hits") == 8 * 20_000
    assert counters.get("tokens_saved") == 3 * 8 * 20_000


def test_counts_of_ended_threads_are_kept_and_their_shards_dropped() -> None:
    counters = Counters("t")
    for _ in range(50):  # a thread per request
        thread = threading.Thread(target=counters.add, args=("hits",))
        thread.start()
        thread.join()
    gc.collect()
    assert counters.get("hits") == 50
    assert counters._shards == []  # the ended threads' dicts were folded in
    with ThreadPoolExecutor(4) as pool:  # a pool's threads live on, and so do their counts
        list(pool.map(lambda _: counters.add("hits", 2), range(100)))
    assert counters.get("hits") == 250


def test_reset_zeroes_live_and_retired_counts() -> None:
    counters = Counters("t")
    counters.add("hits", 5)
    thread = threading.Thread(target=counters.add, args=("hits", 7))
    thread.start()
    thread.join()
    assert counters.get("hits") == 12
    counters.reset()
    assert counters.get("hits") == 0
    counters.add("hits")
    assert counters.get("hits") == 1


def test_counters_that_are_dropped_are_freed() -> None:
    counters = Counters("t")
    counters.add("hits")  # this (long-lived) thread now holds a shard of it
    ref = weakref.ref(counters)
    del counters
    gc.collect()
    assert ref() is None
