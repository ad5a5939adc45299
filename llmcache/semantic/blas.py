"""BLAS threads for the semantic tier's numpy work: one, by default.

The matrices here are small (a question's tokens, a scope's vectors), and
OpenBLAS's worker threads spinning against each other and against other
processes on a busy host made one embedding ~50x slower and a 10k-vector
search ~20x slower in our measurements. The limit is set per call with
threadpoolctl (when installed) and restored after, so the rest of the
process keeps its own setting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

__all__ = ["blas_threads"]


@contextlib.contextmanager
def blas_threads(threads: int | None = 1) -> Iterator[None]:
    """Limit BLAS to ``threads`` for the block; None leaves it alone."""
    controller = _controller()
    if threads is None or controller is None:
        yield
        return
    with controller.limit(limits=threads, user_api="blas"):
        yield


@functools.cache
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()
