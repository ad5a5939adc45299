"""Driving several flows side by side, one step at a time, batching what a tier batches.

``Layers.run_many`` uses it: the operations the flows ask for at the same
step go out together, the gets (or puts) addressed to a tier that has
``get_many`` (``set_many``) as one call, so a batch of N keys costs one Redis
round trip, not N. Everything else runs one by one, as ``Layers.run`` would.
The async path needs no twin: ``asyncio.gather`` of ``Layers.arun`` lets the
Redis tier's auto-batcher merge the same operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from llmcache.stats import Counters
from llmcache.tiers import Flow, Get, Op, Put

__all__ = ["run_in_lockstep"]

T = TypeVar("T")

#: The operations batched, and the tier method that takes a batch.
_BATCHED: dict[type, str] = {Get: "get_many", Put: "set_many"}


def run_in_lockstep(
    flows: Sequence[Flow[T]],
    targets: Sequence[Any],
    counters: Sequence[Counters],
    perform: Callable[[Op], Any],
) -> list[T]:
    """Drive ``flows`` with blocking calls, in lockstep; their results in order.

    ``targets`` and ``counters`` are indexed by an operation's ``index``;
    ``perform`` runs one operation alone, failing open as the layers do.
    """
    results: list[Any] = [None] * len(flows)
    waiting: dict[int, Op] = {}

    def advance(position: int, reply: Any, first: bool = False) -> None:
        try:
            op = next(flows[position]) if first else flows[position].send(reply)
        except StopIteration as stop:
            results[position] = stop.value
        else:
            waiting[position] = op

    for position in range(len(flows)):
        advance(position, None, first=True)
    while waiting:
        step, waiting = waiting, {}
        for position, reply in _perform_step(step, targets, counters, perform).items():
            advance(position, reply)
    return results


def _perform_step(
    ops: Mapping[int, Op],
    targets: Sequence[Any],
    counters: Sequence[Counters],
    perform: Callable[[Op], Any],
) -> dict[int, Any]:
    """One step: batches where a tier takes them, the rest one by one."""
    replies: dict[int, Any] = {}
    batches: dict[tuple[str, int], list[int]] = {}
    for position, op in ops.items():
        method = _BATCHED.get(type(op))
        if method is not None and hasattr(targets[op.index], method):
            batches.setdefault((method, op.index), []).append(position)
        else:
            replies[position] = perform(op)
    for (method, index), members in batches.items():
        if len(members) == 1:
            replies[members[0]] = perform(ops[members[0]])
            continue
        start = time.perf_counter()
        try:
            if method == "get_many":
                keys = [ops[position].key for position in members]  # type: ignore[union-attr]
                values = list(targets[index].get_many(keys))
            else:
                items = [(op.key, op.value, op.ttl) for op in (ops[m] for m in members)]  # type: ignore[union-attr]
                targets[index].set_many(items)
                values = [True] * len(members)
        except Exception as exc:  # fail-open, once for the batch: every key of it misses
            counters[index].failure("errors", method, exc)
            values = [None] * len(members)
        else:
            if method == "get_many":  # one round trip, one latency sample
                counters[index].observe(time.perf_counter() - start)
        replies.update(zip(members, values))
    return replies
