"""A memoized function on a disk cache, shared by test_plain_cache and the processes it starts.

Both sides build it here, so it has one module and qualified name (its key)
in every process: ``python -c "from tests._memo_worker import main; main()" DIR ACTION``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from llmcache import Cache, DiskTier, RedisTier

LATENCY = 2.0  # seconds per run: long enough for every process to be in flight


def build(directory: str | Path) -> tuple[Cache, Callable[[str], dict[str, Any]], list[str]]:
    """A cache on ``directory``, a memoized function that depends on doc:1, and its runs."""
    cache = Cache(l2=DiskTier(directory))
    runs: list[str] = []

    @cache.memoize(depends_on=["doc:1"])
    def answer(question: str) -> dict[str, Any]:
        runs.append(question)
        return {"question": question, "answer": len(question)}

    return cache, answer, runs


def stampede(url: str, prefix: str, calls: int) -> dict[str, Any]:
    """Say "ready", wait for "go", then make ``calls`` identical calls at once (tasks).

    The function counts its runs in Redis, where every process's are seen.
    """
    cache = Cache(l2=RedisTier(url, prefix=prefix), secret="s" * 32, namespace="stampede")
    counter = redis.Redis.from_url(url)

    @cache.memoize()
    async def slow(question: str) -> str:
        counter.incr(f"{prefix}runs")
        await asyncio.sleep(LATENCY)
        return question.upper()

    async def gathered() -> list[str]:
        return await asyncio.gather(*(slow("same") for _ in range(calls)))

    print("ready", flush=True)
    sys.stdin.readline()
    results = asyncio.run(gathered())
    coalesced = cache.stats().extra["coalesced"]
    cache.close()
    counter.close()
    return {"results": results, "coalesced": coalesced}


def main() -> None:
    if sys.argv[1] == "stampede":
        print(json.dumps(stampede(sys.argv[2], sys.argv[3], int(sys.argv[4]))), flush=True)
        return
    directory, action = sys.argv[1], sys.argv[2]
    cache, answer, runs = build(directory)
    if action == "invalidate":
        cache.invalidate("doc:1")
        print(json.dumps({"invalidated": True}))
    else:
        print(json.dumps({"value": answer("q"), "runs": len(runs)}))
    cache.close()
