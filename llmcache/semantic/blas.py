"""BLAS threads for the semantic tier's numpy work: one, by default.

The matrices here are small (a question's tokens, a scope's vectors), and
OpenBLAS's worker threads spinning against each other and against other
processes on a busy host made one embedding ~50x slower and a 10k-vector
search ~20x slower in our measurements. The limit is set with threadpoolctl
(when installed) while at least one block needs it, and restored when the
last one leaves, so the rest of the process keeps its own setting.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["blas_threads"]

# OpenBLAS's thread count (pthreads build) is one setting for the whole process,
# so blocks in several threads share one limit: the first to enter sets it, the
# last to leave restores it. (Per-block save and restore would let one thread's
# exit lift the limit under another thread still computing.) threadpoolctl lets
# only one "controlling thread" change OpenBLAS and silently ignores the others,
# and only its context manager's exit releases control; since the limit here is
# set and restored outside that context manager, possibly by two threads, control
# is released around each change. Without that, a limit set from an embedding
# worker thread did nothing, and OpenBLAS's two threads spun against each other
# (one embedding took 140-750 ms instead of 20-45 ms on the loaded host).
_lock = threading.Lock()
_depth = 0
_limiter: Any = None


@contextlib.contextmanager
def blas_threads(threads: int | None = 1) -> Iterator[None]:
    """Limit BLAS to ``threads`` for the block; None leaves it alone.

    Blocks that overlap in time share the limit the first of them set.
    """
    global _depth, _limiter
    controller = _controller()
    if threads is None or controller is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _release_control()
            _limiter = controller.limit(limits=threads, user_api="blas")
            _release_control()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _release_control()
                _limiter.restore_original_limits()
                _release_control()
                _limiter = None


def _release_control() -> None:
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:  # threadpoolctl < 3.6 has no controlling thread
        clear(force=True)


@functools.cache
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()
