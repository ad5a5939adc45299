"""The store commands refuse to guess: a directory with no cache, or a store with several
namespaces and no ``--namespace``, is an error that changes and creates nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from langchain_core.outputs import Generation

from llmcache import DiskTier, RedisTier, TieredCache, depends_on
from llmcache.cli import main

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402

LLM_STRING = "fake-llm---[('temperature', 0)]"


def fill(cache: TieredCache, count: int, *, dependency: str | None = None) -> None:
    for i in range(count):
        answer = [Generation(text=f"{cache.namespace} answer {i}")]
        if dependency is None:
            cache.update(f"prompt {i}", LLM_STRING, answer)
        else:
            with depends_on(dependency):
                cache.update(f"prompt {i}", LLM_STRING, answer)


def disk_cache(directory: Path, namespace: str) -> TieredCache:
    return TieredCache(l1=None, l2=DiskTier(directory), namespace=namespace)


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["namespaces"],
        ["clear"],
        ["clear", "--namespace", "default"],
        ["gc"],
        ["invalidate", "doc:1"],
        ["invalidate", "doc:1", "--namespace", "default"],
    ],
)
def test_a_dir_that_holds_no_cache_is_an_error_and_nothing_is_created(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo"
    assert main([*command, "--dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--dir {missing} holds no llmcache store" in err
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*command, "--dir", str(empty)]) == 2
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("command", [["clear"], ["gc"], ["invalidate", "doc:1"]])
def test_writing_commands_refuse_the_default_directory_when_it_holds_no_cache(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    directory = Path(os.environ["LLMCACHE_DIR"])  # private to this test (conftest)
    assert main(command) == 2
    assert "holds no llmcache store" in capsys.readouterr().err
    assert not directory.exists()


def test_namespaces_lists_what_a_directory_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for namespace, count in (("alpha", 3), ("beta", 1)):
        cache = disk_cache(tmp_path, namespace)
        fill(cache, count)
        cache.close()
    assert main(["namespaces", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"disk {tmp_path}"
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows == {"alpha": "3", "beta": "1"}


@pytest.mark.parametrize("verb", ["clear", "invalidate", "gc"])
def test_several_namespaces_and_no_namespace_is_refused_with_the_list(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    caches = {name: disk_cache(tmp_path, name) for name in ("default", "tenant-a")}
    for cache in caches.values():
        fill(cache, 2, dependency="doc:1")
    command = [verb, "doc:1"] if verb == "invalidate" else [verb]
    assert main([*command, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "several namespaces: default (2 entries), tenant-a (2 entries)" in err
    assert "--namespace" in err
    for cache in caches.values():  # nothing was cleared, invalidated or collected
        hit = cache.lookup("prompt 1", LLM_STRING)
        assert hit is not None
        assert hit[0].text == f"{cache.namespace} answer 1"
    # Named, it acts on that namespace only.
    assert main([*command, "--dir", str(tmp_path), "--namespace", "tenant-a"]) == 0
    capsys.readouterr()
    assert caches["default"].lookup("prompt 1", LLM_STRING) is not None
    if verb != "gc":  # gc keeps what is fresh
        assert caches["tenant-a"].lookup("prompt 1", LLM_STRING) is None
    for cache in caches.values():
        cache.close()


def test_a_store_with_only_the_default_namespace_needs_no_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = disk_cache(tmp_path, "default")
    fill(cache, 2, dependency="doc:1")
    assert main(["invalidate", "doc:1", "--dir", str(tmp_path)]) == 0
    assert "in namespace 'default'" in capsys.readouterr().out
    assert cache.lookup("prompt 0", LLM_STRING) is None
    cache.close()


@pytest.mark.redis
def test_redis_store_lists_namespaces_and_refuses_to_guess(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--url", redis_url, "--prefix", key_prefix]
    tiers = []
    try:
        for namespace, count in (("alpha", 2), ("beta", 3)):
            tier = RedisTier(redis_url, prefix=key_prefix)
            tiers.append(tier)
            fill(TieredCache(l1=None, l2=tier, namespace=namespace, secret="k" * 32), count)
        assert main(["namespaces", *where]) == 0
        rows = {
            line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]
        }
        assert rows == {"alpha": "2", "beta": "3"}
        assert main(["clear", *where]) == 2
        assert "several namespaces: alpha (2 entries), beta (3 entries)" in capsys.readouterr().err
        assert main(["namespaces", *where]) == 0
        assert "beta" in capsys.readouterr().out  # nothing was cleared
    finally:
        for tier in tiers:
            tier.close()
        purge_prefix(redis_url, key_prefix)
