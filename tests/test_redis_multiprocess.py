"""Two real processes share one Redis L2: what one paid the model for, the other reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmcache.simulator import Simulator, SimulatorConfig

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: nothing shared with this process but Redis and the simulator.
CHILD = """
import asyncio, json, sys
from langchain_openai import ChatOpenAI
from llmcache import RedisTier, TieredCache

url, prefix, base_url, prompt, mode = sys.argv[1:]
cache = TieredCache(l1=None, l2=RedisTier(url, prefix=prefix), namespace="shared")
llm = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key="sim", max_retries=0, cache=cache)
if mode == "sync":
    answer = llm.invoke(prompt)
else:
    async def main():
        try:
            return await llm.ainvoke(prompt)
        finally:
            await cache.aclose()
    answer = asyncio.run(main())
stats = cache.stats()
print(json.dumps({"content": answer.content, "hits": stats.hits, "misses": stats.misses}))
cache.close()
"""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=5)) as simulator:
        yield simulator


def _child(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD, *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("first", "second"), [("sync", "async"), ("async", "sync")])
def test_process_b_reads_what_process_a_paid_for(
    first: str, second: str, redis_url: str, key_prefix: str, sim: Simulator
) -> None:
    prompt = f"How long to boil an egg? {uuid.uuid4().hex[:8]}"
    try:
        a = _child(redis_url, key_prefix, sim.base_url, prompt, first)
        assert (a["hits"], a["misses"]) == (0, 1)
        assert sim.requests_for(prompt) == 1  # process A reached the model

        b = _child(redis_url, key_prefix, sim.base_url, prompt, second)
        assert (b["hits"], b["misses"]) == (1, 0)
        assert sim.requests_for(prompt) == 1  # process B did not
        assert b["content"] == a["content"]
    finally:
        purge_prefix(redis_url, key_prefix)
