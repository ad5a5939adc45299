"""benchmarks/workloads.py: its quick run writes every table and plot with sane figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import their helpers by bare name

from _workloads_data import WORKLOADS, Call  # noqa: E402
from _workloads_figures import phase_figures  # noqa: E402
from _workloads_run import CallRecord  # noqa: E402

CONTENDERS = ("no cache", "InMemoryCache", "TieredCache memory+disk", "TieredCache memory+Redis")
PHASES = ("cold", "warm", "new process", "after invalidation")


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
def test_the_edit_changes_only_what_it_names(workload):
    sizes = workload.quick
    before, after = workload.build(sizes, 7, False), workload.build(sizes, 7, True)
    edited = set(workload.edits(sizes, 7))
    changed = set(after) - set(before)
    assert edited and changed
    assert all(edited & set(call.deps) for call in changed)
    if workload.name != "reviews":  # a restaurant's unchanged batches share its name
        assert not any(edited & set(call.deps) for call in set(after) & set(before))


def test_phase_figures_count_hits_tokens_and_wrong_answers():
    a, b = Call((("q", "a"),), ()), Call((("q", "b"),), ())
    records = [
        CallRecord(a, 0.0, 0.100, hit=False, content="A", input_tokens=10, output_tokens=5),
        CallRecord(a, 0.0, 0.002, hit=True, content="A", input_tokens=10, output_tokens=5),
        CallRecord(b, 0.0, 0.001, hit=True, content="stale", input_tokens=7, output_tokens=3),
        CallRecord(b, 0.0, 0.300, failed=True, error="x.Boom"),
    ]
    figures = phase_figures(
        records, wall_s=1.0, upstream_calls=2, references={a: "A", b: "B"}, prices=(1.0, 10.0)
    )
    assert (figures["hits"], figures["failed"], figures["wrong_answers"]) == (2, 1, 1)
    assert figures["tokens_saved"] == 25
    assert figures["cost_saved_usd"] == 17 * 1.0 + 8 * 10.0
    assert figures["p50_ms"] == 2.0 and figures["p99_ms"] == 100.0
    assert figures["hits_by_end"] == "1100"  # in the order the calls finished
    assert figures["errors"] == ["x.Boom"]


@pytest.mark.slow
def test_quick_run_writes_every_table_and_plot(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, str(BENCHMARKS / "workloads.py"), "--quick", "--out", str(tmp_path),
        "--contenders", ",".join(CONTENDERS),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    for plot in ("bars", "latency-cdf", "hit-rate"):
        png = (tmp_path / f"workloads-quick-{plot}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = (tmp_path / "workloads-quick.md").read_text()
    report = json.loads((tmp_path / "workloads-quick.json").read_text())
    assert "## Summary" in text
    assert list(report["results"]) == [w.name for w in WORKLOADS]
    for workload in WORKLOADS:
        info = report["workloads"][workload.name]
        assert f"## {workload.title}" in text
        results = report["results"][workload.name]
        assert list(results) == list(CONTENDERS)
        for contender in CONTENDERS:
            assert list(results[contender]) == list(PHASES)
            for phase, figures in results[contender].items():
                assert f"| {contender} | {phase} |" in text
                assert figures["failed"] == 0 and figures["wrong_answers"] == 0
                assert len(figures["latencies_ms"]) == figures["calls"]
        # Uncached, the simulator sees every call of every phase.
        for phase, figures in results["no cache"].items():
            assert figures["upstream_calls"] == figures["calls"] > 0, phase
        for name in ("TieredCache memory+disk", "TieredCache memory+Redis"):
            tiered = results[name]
            assert tiered["cold"]["upstream_calls"] == info["distinct"]  # repeats coalesce
            assert tiered["warm"]["upstream_calls"] == 0 and tiered["warm"]["hit_rate"] == 1
            assert tiered["new process"]["upstream_calls"] == 0  # found on disk / in Redis
            after = tiered["after invalidation"]["upstream_calls"]
            assert info["changed_calls"] <= after < info["calls"]
        # A new process has an empty InMemoryCache: every distinct prompt goes up again.
        assert results["InMemoryCache"]["new process"]["upstream_calls"] >= info["distinct"]


@pytest.mark.slow
def test_openai_switch_counts_misses_and_leaves_wrong_answers_uncounted(tmp_path):
    """--openai, with the OpenAI client pointed at a simulator through its own variables."""
    from llmcache.simulator import Simulator, SimulatorConfig

    with Simulator(SimulatorConfig(latency_ms=5.0)) as sim:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OPENAI_API_KEY": "sk-simulated",
            "OPENAI_BASE_URL": sim.base_url,
        }
        command = [
            sys.executable, str(BENCHMARKS / "workloads.py"), "--quick", "--openai",
            "--out", str(tmp_path), "--workloads", "menu",
            "--contenders", "no cache,TieredCache memory+disk",
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((tmp_path / "workloads-quick.json").read_text())
        results = report["results"]["menu"]
        calls = sum(f["calls"] for by_phase in results.values() for f in by_phase.values())
        upstream = sum(
            f["upstream_calls"] for by_phase in results.values() for f in by_phase.values()
        )
        assert "OpenAI API" in report["upstream"]
        assert sim.requests == upstream < calls  # every miss, and only misses, went upstream
        for by_phase in results.values():
            assert all(f["wrong_answers"] is None for f in by_phase.values())
        assert "not counted" in (tmp_path / "workloads-quick.md").read_text()
