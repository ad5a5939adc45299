"""The BLAS limit of the semantic tier's numpy work holds in whichever thread computes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from threadpoolctl import threadpool_info

from llmcache.semantic.blas import blas_threads


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


@pytest.fixture
def default() -> int:
    found = _blas_threads()
    if not found or max(found) < 2:
        pytest.skip("BLAS runs one thread here already: a limit of one changes nothing")
    return max(found)


def test_a_limit_set_in_a_worker_thread_holds_after_the_main_thread_set_one(
    default: int,
) -> None:
    # threadpoolctl obeys only the first thread that limits OpenBLAS unless control
    # is released: the embedding worker threads' limits were silently ignored.
    with blas_threads(1):
        assert max(_blas_threads()) == 1
    assert max(_blas_threads()) == default

    def in_worker() -> list[int]:
        with blas_threads(1):
            return _blas_threads()

    with ThreadPoolExecutor(1) as pool:
        assert max(pool.submit(in_worker).result()) == 1
    assert max(_blas_threads()) == default


def test_overlapping_blocks_share_the_limit_until_the_last_leaves(default: int) -> None:
    entered, leave = threading.Event(), threading.Event()
    seen: list[int] = []

    def long_block() -> None:
        with blas_threads(1):
            entered.set()
            leave.wait(10)
            seen.append(max(_blas_threads()))

    worker = threading.Thread(target=long_block)
    worker.start()
    entered.wait(10)
    with blas_threads(1):
        pass  # a short block leaving first must not lift the limit under the long one
    leave.set()
    worker.join(10)
    assert seen == [1]
    assert max(_blas_threads()) == default
