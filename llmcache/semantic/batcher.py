"""A micro-batcher: the embeddings of concurrent ``alookup``s computed in one call, in a thread.

Under ``asyncio.gather`` a hundred lookups arrive in the same turn of the
event loop. Each puts its text in the queue and awaits a future; the first
schedules a drain that yields once (so the rest of the turn can queue), then
embeds everything queued in one call in a worker thread, so the event loop is
never blocked by the CPU work and the model runs on a batch (one matrix
product per layer instead of one per text). Texts that arrive while a batch
runs form the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MicroBatcher"]


class MicroBatcher:
    def __init__(self, embed: Callable[[Sequence[str]], Any], max_batch: int = 128) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.batches = 0  # how many calls the embedder got: for tests and benchmarks
        self._queue: list[tuple[str, asyncio.Future[Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: nothing of the old one is valid here
            self._loop, self._queue, self._drain = loop, [], None
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((text, future))
        if self._drain is None or self._drain.done():
            self._drain = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the other coroutines of this turn queue their texts
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            texts = [text for text, _ in batch]
            try:
                vectors = await asyncio.to_thread(self._embed, texts)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            for (_, future), vector in zip(batch, vectors):
                if not future.done():
                    future.set_result(vector)
