"""Shared fixtures: an injected clock, a private cache directory, ChatOpenAI on a simulator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from llmcache.simulator import Simulator

# Shared helpers whose asserts should read like a test's: registered before any test
# module imports them (in a test module, the order of collection decided whether it worked).
pytest.register_assert_rewrite(
    "tests.redis_servers", "tests.semantic_servers", "tests.tier_contract"
)


class FakeClock:
    """A clock tests move by hand instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test may touch ~/.cache/llmcache or see another test's secret."""
    directory = tmp_path / "llmcache-default"
    monkeypatch.setenv("LLMCACHE_DIR", str(directory))
    monkeypatch.delenv("LLMCACHE_SECRET", raising=False)
    monkeypatch.delenv("LLMCACHE_SECRET_ID", raising=False)
    return directory


ChatFactory = Callable[..., ChatOpenAI]


@pytest.fixture
def chat(sim: Simulator) -> ChatFactory:
    """ChatOpenAI models on the test module's own ``sim`` fixture (its latency), no retries."""

    def make(cache: Any, **kwargs: Any) -> ChatOpenAI:
        params: dict[str, Any] = {"model": "gpt-4o-mini", "temperature": 0, "max_retries": 0}
        params.update(kwargs)
        return ChatOpenAI(base_url=sim.base_url, api_key="sim", cache=cache, **params)

    return make
