"""Deleting every key that matches a pattern: SCAN and UNLINK on every master.

Written once as steps for both drivers: ``RedisTier.unlink_matching`` sends
each step with a blocking call and ``aunlink_matching`` awaits it. Never
FLUSHDB: the server may hold other applications' keys.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

__all__ = ["SCAN_COUNT", "Step", "clear_steps", "issue", "node_name"]

#: Keys a SCAN step asks for (a hint to the server, not a bound).
SCAN_COUNT = 1000

Step = tuple[str, Any, Any]  # ("scan", node, (cursor, match)) or ("unlink", node, keys)


def clear_steps(match: str, nodes: list[Any]) -> Generator[Step, Any, None]:
    """The steps that UNLINK every key matching ``match`` (``nodes``: the masters, or [None])."""
    for node in nodes:
        cursor = 0
        while True:
            cursor, keys = yield ("scan", node, (cursor, match))
            if keys:
                yield ("unlink", node, keys)
            if not cursor:
                break


def issue(client: Any, step: Step) -> tuple[Any, Callable[[Any], Any]]:
    """Issue one step; returns the reply (or awaitable) and what turns it into a result."""
    what, node, arg = step
    if what == "scan":
        cursor, match = arg
        if node is None:
            return client.scan(cursor, match=match, count=SCAN_COUNT), _same
        pending = client.scan(cursor, match=match, count=SCAN_COUNT, target_nodes=node)
        return pending, lambda reply: (reply[0][node.name], reply[1])
    if node is None:
        return client.unlink(*arg), _same
    pipe = client.pipeline()  # the keys of one master may sit in many slots
    for key in arg:
        pipe.execute_command("UNLINK", key)  # the async cluster pipe.unlink is a coroutine
    return pipe.execute(), _same


def node_name(node: Any) -> str:
    """The breaker name of a step's node."""
    return "server" if node is None else str(node.name)


def _same(reply: Any) -> Any:
    return reply
