"""Shared fixtures: an injected clock, a private cache directory, the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest


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
