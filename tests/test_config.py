"""Misconfiguration fails loudly: every mistyped setting is a ConfigurationError that says
what was understood, and nothing is created or connected on the way."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from llmcache import DiskTier, MemoryTier, RedisTier, TieredCache, langchain_adapter
from llmcache.errors import ConfigurationError, LLMCacheError


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in an empty working directory, so a stray ``./disk/`` would show."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMCACHE_SECRET", raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("l2", "says"),
    [
        ("redis:/oops", "without '//'"),
        ("redis:oops", "without '//'"),
        ("redis://", "names no host"),
        ("redis://:6379/0", "names no host"),
        ("rediss://", "names no host"),
        ("redis://localhost:99999/0", "not a valid URL"),
        ("redis://localhost:port/0", "not a valid URL"),
        ("redis://localhost:6379/zero", "database number"),
        ("unix://", "no socket path"),
        ("http://localhost:6379/0", "a http: URL"),
        ("REDISS:/x", "without '//'"),
        ("disk", "neither a Redis URL nor a directory path"),
        ("memory", "neither a Redis URL nor a directory path"),
        ("redis", "neither a Redis URL nor a directory path"),
        ("", "neither a Redis URL nor a directory path"),
    ],
)
def test_an_l2_string_is_a_valid_url_or_plainly_a_path(l2: str, says: str, workdir: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"l2={l2!r}") as raised:
        TieredCache(l2=l2)
    assert says in str(raised.value)
    assert list(workdir.iterdir()) == []  # no directory made from the string


@pytest.mark.parametrize("l2", ["./disk", "cache/llm", "~/.cache/x", ".llmcache", "/tmp/x/y"])
def test_a_string_that_is_plainly_a_path_is_a_disk_directory(l2: str) -> None:
    cache = TieredCache(l2=l2)
    assert isinstance(cache.tiers[-1], DiskTier)
    assert cache.tiers[-1].path == Path(l2).expanduser()


def test_a_path_object_is_a_directory_even_with_a_bare_name(workdir: Path) -> None:
    cache = TieredCache(l2=Path("disk"))
    assert isinstance(cache.tiers[-1], DiskTier)
    assert cache.tiers[-1].path == Path("disk")
    assert list(workdir.iterdir()) == []  # created on first write only


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://user:pw@host:6380/2", "unix:///tmp/r.sock"]
)
def test_a_valid_redis_url_makes_a_redis_tier_without_connecting(url: str) -> None:
    cache = TieredCache(l2=url, secret="s" * 32)
    assert isinstance(cache.tiers[-1], RedisTier)
    assert cache.tiers[-1].url == url


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"l1": "memory"}, "l1 must be a tier"),
        ({"l2": 5}, "l2 must be a tier"),
        ({"l1": MemoryTier}, "l1 takes a tier instance, not the class MemoryTier"),
        ({"l2": DiskTier}, "l2 takes a tier instance, not the class DiskTier"),
        ({"l1": object()}, "l1 must be a tier"),
        ({"ttl": True}, "ttl must be a positive number"),
        ({"ttl": float("nan")}, "ttl must be a positive number"),
        ({"ttl": float("inf")}, "ttl must be a positive number"),
        ({"ttl": 0}, "ttl must be a positive number"),
        ({"ttl": "60"}, "ttl must be a positive number"),
    ],
)
def test_wrong_argument_types_name_the_argument(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        TieredCache(**kwargs)  # type: ignore[arg-type]


def test_configuration_errors_share_the_root() -> None:
    with pytest.raises(LLMCacheError):
        TieredCache(l2="redis:/oops")


def test_redis_tier_checks_its_url_the_same_way() -> None:
    with pytest.raises(ConfigurationError, match="names no host"):
        RedisTier("redis://")


def test_a_shared_l2_without_a_secret_warns_once_per_process(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(langchain_adapter, "_warned_unsigned_shared", False)
    with caplog.at_level(logging.WARNING, logger="llmcache"):
        TieredCache(l2="redis://localhost:6379/0")
        TieredCache(l2="redis://localhost:6379/1")
    warnings = [r for r in caplog.records if "LLMCACHE_SECRET" in r.getMessage()]
    assert len(warnings) == 1
    assert "README" in warnings[0].getMessage()


def test_no_warning_with_a_secret_or_a_local_l2(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(langchain_adapter, "_warned_unsigned_shared", False)
    with caplog.at_level(logging.WARNING, logger="llmcache"):
        TieredCache(l2="redis://localhost:6379/0", secret="s" * 32)
        monkeypatch.setenv("LLMCACHE_SECRET", "e" * 32)
        TieredCache(l2="redis://localhost:6379/0")
        monkeypatch.delenv("LLMCACHE_SECRET")
        TieredCache(l2=os.path.join(".", "local"))
    assert not [r for r in caplog.records if "LLMCACHE_SECRET" in r.getMessage()]
