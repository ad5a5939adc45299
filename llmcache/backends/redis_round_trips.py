"""Round trips to Redis for a batch of operations, written once for both drivers.

Both collectors - :class:`~llmcache.backends.redis_batch.AutoBatcher` (the
operations of one event-loop tick) and
:class:`~llmcache.backends.redis_threads.ThreadBatcher` (the operations of
threads that arrive while a round trip is in flight) - hand a batch to the
functions here. A round trip is a generator of *steps*: it yields one call on
the client and is sent its reply. A redis-py client's call returns the reply
itself, a redis.asyncio client's returns an awaitable of it; :func:`drive`
and :func:`adrive` feed the generator either way (errors are thrown back into
it), so what a batch becomes on the wire is decided once:

* one operation alone: its own command (GET is cheaper than MGET for the
  server and for redis-py, SET than a pipeline of one);
* gets only, on one server: MGET;
* anything else, or a cluster node: a non-transactional pipeline.

Keys in different slots cannot share an MGET even on one cluster node: there
each batch is a cluster pipeline of per-key commands, grouped per master
(:func:`by_node`) so that a dead master fails its own keys only.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Literal, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmcache.errors import TierError

__all__ = [
    "Command",
    "Op",
    "Result",
    "Steps",
    "adrive",
    "alone",
    "by_node",
    "drive",
    "node_pipeline",
    "own_error",
    "single_server",
]

Op = Literal["get", "set", "delete"]
Result = Any  # bytes | None for a get, None for a write; or an exception instance
#: A round trip: yields client calls, is sent their replies, returns one result per operation.
Steps = Generator[Any, Any, list[Result]]


class Command(Protocol):
    """One queued operation, as both collectors keep it."""

    op: Op
    key: str  # the full Redis key, prefix included
    value: bytes | None
    px: int | None  # TTL in milliseconds, for a set


def single_server(client: Any, batch: Sequence[Command]) -> Steps:
    """One round trip to one server: the bare command when alone, MGET when all gets."""
    if len(batch) == 1:
        return (yield from alone(client, batch[0]))
    if all(command.op == "get" for command in batch):
        return list((yield client.mget([command.key for command in batch])))
    pipe = client.pipeline(transaction=False)
    _queue_commands(pipe, batch)
    return _results(batch, (yield pipe.execute(raise_on_error=False)))


def node_pipeline(client: Any, batch: Sequence[Command]) -> Steps:
    """One round trip to one cluster master: a cluster pipeline of per-key commands."""
    if len(batch) == 1:
        return (yield from alone(client, batch[0]))
    pipe = client.pipeline()
    _queue_commands(pipe, batch)
    return _results(batch, (yield pipe.execute(raise_on_error=False)))


def drive(steps: Steps) -> list[Result]:
    """Run a round trip on a redis-py client: each step is already its reply."""
    try:
        reply = next(steps)
        while True:
            reply = steps.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def adrive(steps: Steps) -> list[Result]:
    """Run a round trip on a redis.asyncio client: await each step, throw its error back in."""
    try:
        pending = next(steps)
        while True:
            try:
                reply = await pending
            except Exception as exc:
                pending = steps.throw(exc)
            else:
                pending = steps.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def by_node(nodes: Sequence[str]) -> dict[str, list[int]]:
    """The positions of a batch grouped by the node (master) each one goes to."""
    groups: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        groups.setdefault(node, []).append(index)
    return groups


def own_error(exc: BaseException) -> TierError:
    """Each caller's own TierError: one exception raised in many tasks or threads
    would pile all their tracebacks onto itself."""
    error = TierError(*exc.args) if isinstance(exc, TierError) else TierError(f"redis: {exc}")
    error.__cause__ = exc.__cause__ if isinstance(exc, TierError) else exc
    return error


def alone(client: Any, command: Command) -> Steps:
    """An operation alone in its round trip: its own command, cheaper than any batch form."""
    try:
        if command.op == "get":
            return [(yield client.get(command.key))]
        if command.op == "set":
            yield client.set(command.key, command.value, px=command.px)
        else:
            yield client.unlink(command.key)
    except ResponseError as exc:
        if command.op != "get" or "WRONGTYPE" not in str(exc):
            raise
        return [None]  # another type under our key: absent, as MGET says
    return [None]


def _queue_commands(pipe: Any, batch: Sequence[Command]) -> None:
    for command in batch:
        if command.op == "get":
            pipe.get(command.key)
        elif command.op == "set":
            pipe.set(command.key, command.value, px=command.px)
        else:
            pipe.execute_command("UNLINK", command.key)  # pipe.unlink: a coroutine on a cluster


def _results(batch: Sequence[Command], replies: Sequence[Any]) -> list[Result]:
    """Per-operation replies; a per-operation error becomes a TierError for its caller only.

    A lost connection is no per-operation error (a cluster pipeline reports it
    per command): it is raised, so that the round trip counts as failed.
    """
    results: list[Result] = []
    for command, reply in zip(batch, replies, strict=False):
        if isinstance(reply, (RedisConnectionError, RedisTimeoutError, OSError)):
            raise reply
        if isinstance(reply, Exception):
            if command.op == "get" and "WRONGTYPE" in str(reply):
                reply = None  # another type under our key: absent for us, as MGET says
            else:
                error = TierError(f"redis {command.op} failed: {reply}")
                error.__cause__ = reply
                reply = error
        elif command.op != "get":
            reply = None
        results.append(reply)
    return results
