"""A leader that ends its lead one chosen way: in a thread of this process, or as a process.

``Leader(cache, mode, prompt)``: ``start`` returns once it leads the key (it missed
and holds the lead, and with a Redis L2 the lease); ``end`` lets it end the lead
its way and returns the wall-clock time it began to; ``close`` lets its thread go.
Modes: ``sync-`` (a thread) or ``async-`` (a task in an event loop), then

* ``answer``: the call updates the key;
* ``fail``: the model call raises (the frame that looked up ends with it);
* ``abandon``: the function that looked up returns without an update, while its
  thread or task lives on (a pool thread going idle, a long-lived task);
* ``looks-on``: code that only looks: the same frame looks another key up next;
* ``cancel`` (async): the task of the call is cancelled.

As a process: ``python -m tests._lead_worker URL PREFIX MODE PROMPT`` prints
``led``, ends the lead on a line of stdin, prints ``ended <time>``, and exits at
the end of stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import RedisTier, TieredCache

LLM = "llm"
ANSWER = [ChatGeneration(message=AIMessage("the leader's answer"))]
MODES = (
    "sync-answer",
    "sync-fail",
    "sync-abandon",
    "sync-looks-on",
    "async-answer",
    "async-fail",
    "async-abandon",
    "async-looks-on",
    "async-cancel",
)


class ModelError(Exception):
    """What the model call raises in the ``fail`` modes."""


class Leader:
    def __init__(self, cache: TieredCache, mode: str, prompt: str) -> None:
        assert mode in MODES, mode
        self.cache = cache
        self.sync, self.kind = mode.split("-", 1)
        self.sync = self.sync == "sync"  # type: ignore[assignment]
        self.prompt = prompt
        self.led, self.go, self.ended, self.stop = (threading.Event() for _ in range(4))
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.led.wait(30), "the leader did not lead"

    def end(self) -> float:
        self.go.set()
        assert self.ended.wait(30)
        return self.ended_at

    def close(self) -> None:
        self.go.set()
        self.stop.set()
        self.thread.join(30)

    def _went(self) -> None:
        self.ended_at = time.time()
        self.ended.set()

    def _run(self) -> None:
        if self.sync:
            self._sync()
        else:
            asyncio.run(self._async())

    def _sync(self) -> None:
        cache, prompt, kind = self.cache, self.prompt, self.kind
        if kind == "looks-on":
            assert cache.lookup(prompt, LLM) is None
            self.led.set()
            self.go.wait()
            self._went()
            cache.lookup(prompt + ", and another", LLM)  # this frame has moved on
            self.stop.wait()
            return

        def call() -> None:
            assert cache.lookup(prompt, LLM) is None
            self.led.set()
            self.go.wait()
            self._went()
            if kind == "answer":
                cache.update(prompt, LLM, ANSWER)
            elif kind == "fail":
                raise ModelError("the model call failed")

        with contextlib.suppress(ModelError):  # the call failed; its caller carries on
            call()
        self.stop.wait()  # the thread lives on

    async def _async(self) -> None:
        cache, prompt, kind = self.cache, self.prompt, self.kind
        if kind == "looks-on":
            assert await cache.alookup(prompt, LLM) is None
            self.led.set()
            await asyncio.to_thread(self.go.wait)
            self._went()
            await cache.alookup(prompt + ", and another", LLM)
            await asyncio.to_thread(self.stop.wait)
            return

        async def call() -> None:
            assert await cache.alookup(prompt, LLM) is None
            self.led.set()
            if kind == "cancel":
                await asyncio.sleep(3600)
            await asyncio.to_thread(self.go.wait)
            self._went()
            if kind == "answer":
                await cache.aupdate(prompt, LLM, ANSWER)
            elif kind == "fail":
                raise ModelError("the model call failed")

        if kind == "abandon":
            await call()  # returns without an update; this task lives on
        else:
            task = asyncio.create_task(call())  # a task per call, as LangChain's agenerate
            if kind == "cancel":
                await asyncio.to_thread(self.go.wait)
                self._went()
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(self.stop.wait)


def main(url: str, prefix: str, mode: str, prompt: str) -> None:
    cache = TieredCache(l2=RedisTier(url, prefix=prefix), coalesce_wait=8)
    leader = Leader(cache, mode, prompt)
    leader.start()
    print("led", flush=True)
    sys.stdin.readline()
    print("ended", leader.end(), flush=True)
    sys.stdin.read()
    leader.close()
    cache.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
