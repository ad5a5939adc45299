"""The ``llmcache`` command: demo end to end, simulate as a server, stats/clear, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.outputs import Generation
from langchain_openai import ChatOpenAI

from llmcache import DiskTier, RedisTier, Tier, TieredCache
from llmcache.cli import main
from llmcache.simulator import remote_stats

# The Redis fixtures (redis_url, key_prefix) start real servers from pip-installed binaries.
pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LLM_STRING = "fake-llm---[('temperature', 0)]"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "llmcache.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


def fill(where: Path | Tier, namespace: str, count: int) -> TieredCache:
    tier = DiskTier(where) if isinstance(where, Path) else where
    cache = TieredCache(l1=None, l2=tier, namespace=namespace)
    for i in range(count):
        cache.update(f"prompt {i}", LLM_STRING, [Generation(text=f"{namespace} answer {i}")])
    return cache


# -- demo -------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_figures_add_up(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = ["--items", "60", "--distinct", "20", "--latency-ms", "50", "--seed", "3"]
    done = run_cli("demo", *args, "--no-progress", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "warm from disk" in done.stdout
    assert "Traceback" not in done.stderr
    report = json.loads(out.read_text())
    assert (report["items"], report["distinct"], report["upstream"]) == (60, 20, "simulator")
    phases: dict[str, dict[str, Any]] = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["uncached", "cold", "warm (same cache)", "warm from disk"]
    assert all(p["failed"] == 0 for p in phases.values())

    uncached = phases["uncached"]
    assert uncached["upstream_calls"] == 60
    assert uncached["memory"] is None
    assert uncached["disk"] is None
    assert uncached["speedup"] == 1.0

    # Cold: every dish's first occurrence goes upstream; a repeat either hits L1 (its first
    # call had finished) or waits for the identical call in flight (coalesced). So exactly
    # one upstream call per distinct dish. The simulator's count is the truth, and the
    # cache's own counters must agree with it.
    cold = phases["cold"]
    assert cold["upstream_calls"] == 20
    assert cold["cache_misses"] == 20
    assert cold["memory"]["lookups"] == 60
    assert cold["memory"]["hits"] + cold["coalesced"] + cold["upstream_calls"] == 60
    # Every L1 miss asked the disk too (followers before they waited): none found anything.
    l1_misses = 60 - cold["memory"]["hits"]
    assert cold["disk"] == {"hits": 0, "lookups": l1_misses, "hit_rate": 0.0}

    warm = phases["warm (same cache)"]
    assert warm["upstream_calls"] == 0
    assert warm["memory"] == {"hits": 60, "lookups": 60, "hit_rate": 1.0}
    assert warm["disk"] is None  # every lookup answered by L1
    assert warm["tokens_saved"] > cold["tokens_saved"] > 0

    # A new TieredCache over the same directory: each dish is read from disk once, then
    # promoted, so its repeats hit L1.
    from_disk = phases["warm from disk"]
    assert from_disk["upstream_calls"] == 0
    assert from_disk["disk"] == {"hits": 20, "lookups": 20, "hit_rate": 1.0}
    assert from_disk["memory"]["hits"] == 40
    assert from_disk["tokens_saved"] == warm["tokens_saved"]
    assert from_disk["speedup"] > 1


def test_demo_openai_without_key_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["demo", "--openai", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "llmcache demo: error: --openai needs OPENAI_API_KEY in the environment\n"


def test_demo_distinct_above_items_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--items", "10", "--distinct", "20"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- simulate ---------------------------------------------------------------------------


@pytest.mark.slow
def test_simulate_serves_chat_openai_until_terminated() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "llmcache.cli", "simulate", "--port", "0"]
    with subprocess.Popen(
        [*command, "--latency-ms", "5", "--per-token-ms", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("listening on http://127.0.0.1:"), line
            base_url = line.removeprefix("listening on ")
            llm = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key="sim", max_retries=0)
            answer = llm.invoke("How much protein is in one serving of Gyudon?")
            assert isinstance(answer.content, str)
            assert answer.content
            assert remote_stats(base_url)["requests"] == 1
        finally:
            proc.terminate()  # SIGTERM to this PID: the server shuts down cleanly
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0


# -- stats and clear --------------------------------------------------------------------


def test_stats_lists_entries_per_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(tmp_path, "alpha", 3).close()
    fill(tmp_path, "beta", 2).close()
    assert main(["stats", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"disk {tmp_path}"
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert rows["alpha"][1] == "3"
    assert rows["beta"][1] == "2"
    assert rows["(total)"][1] == "5"

    assert main(["stats", "--dir", str(tmp_path), "--namespace", "beta"]) == 0
    out = capsys.readouterr().out
    assert "beta" in out
    assert "alpha" not in out


def test_stats_defaults_to_llmcache_dir_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = Path(os.environ["LLMCACHE_DIR"])  # private to this test (conftest)
    assert main(["stats"]) == 0
    assert capsys.readouterr().out == f"disk {directory}: no entries\n"
    assert not directory.exists()


def test_clear_removes_one_namespace_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(tmp_path, "alpha", 3).close()
    beta = fill(tmp_path, "beta", 2)
    assert main(["clear", "--dir", str(tmp_path), "--namespace", "alpha"]) == 0
    assert capsys.readouterr().out == (
        f"disk {tmp_path}: cleared namespace 'alpha': 3 entries removed;"
        " 2 entries in other namespaces left alone\n"
    )
    alpha = TieredCache(l1=None, l2=DiskTier(tmp_path), namespace="alpha")
    assert alpha.lookup("prompt 0", LLM_STRING) is None
    hit = beta.lookup("prompt 1", LLM_STRING)
    assert hit is not None
    assert hit[0].text == "beta answer 1"
    alpha.close()
    beta.close()


def test_clear_defaults_to_the_default_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(tmp_path, "default", 1).close()
    assert main(["clear", "--dir", str(tmp_path)]) == 0
    assert "cleared namespace 'default': 1 entries removed" in capsys.readouterr().out


@pytest.mark.redis
def test_stats_and_clear_on_redis(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--url", redis_url, "--prefix", key_prefix]
    tier = RedisTier(redis_url, prefix=key_prefix)
    try:
        fill(tier, "alpha", 3)
        beta = fill(tier, "beta", 2)
        assert main(["stats", *where]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"redis {redis_url} prefix {key_prefix!r}"
        rows = {line.split()[0]: line.split() for line in out[2:]}
        assert (rows["alpha"][1], rows["beta"][1], rows["(total)"][1]) == ("3", "2", "5")

        assert main(["clear", *where, "--namespace", "alpha"]) == 0
        assert "'alpha': 3 entries removed; 2 entries in other namespaces left alone" in (
            capsys.readouterr().out
        )
        hit = beta.lookup("prompt 0", LLM_STRING)
        assert hit is not None
        assert hit[0].text == "beta answer 0"
        assert main(["stats", *where, "--namespace", "alpha"]) == 0
        assert capsys.readouterr().out.endswith("no entries in namespace 'alpha'\n")
    finally:
        tier.close()
        purge_prefix(redis_url, key_prefix)


# -- errors: one line on stderr, exit 2, never a traceback -------------------------------


def test_bad_argument_exits_2_with_one_line() -> None:
    done = run_cli("demo", "--items", "many", timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "--items" in done.stderr
    assert "invalid int value" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["clear", "--namespace", "not a namespace!"],
        ["stats", "--namespace", ""],
        ["clear", "--namespace", ""],
        ["stats", "--dir", "/tmp", "--url", "redis://127.0.0.1:1/0"],
        ["stats", "--url", "redis://:s3cret@127.0.0.1:1/0"],  # refused: nothing listens
        ["clear", "--url", "redis://:s3cret@127.0.0.1:1/0"],
        ["nonsense"],
        [],
    ],
)
def test_usage_and_library_errors_are_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    assert status == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("llmcache")
    assert "Traceback" not in captured.err
    assert "s3cret" not in captured.err


def test_a_corrupt_cache_database_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cache.db").write_bytes(b"this is not sqlite" * 100)
    assert main(["stats", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmcache stats: error: cannot read {tmp_path / 'cache.db'}")
    assert err.count("\n") == 1
