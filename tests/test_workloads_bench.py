"""benchmarks/workloads.py: its quick run writes every table and plot with sane figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import their helpers by bare name

from _workloads_data import WORKLOADS, Call, paraphrase_questions  # noqa: E402
from _workloads_figures import accepted_answers, phase_figures  # noqa: E402
from _workloads_run import CallRecord  # noqa: E402

CONTENDERS = ("no cache", "InMemoryCache", "TieredCache memory+disk", "TieredCache memory+Redis")
SEMANTIC = (
    "langchain-redis RedisSemanticCache",
    "TieredCache memory+disk+semantic",
    "TieredCache memory+Redis+semantic",
)
PHASES = ("cold", "warm", "new process", "after invalidation")
SEMANTIC_DEV = ROOT.parent / "shared" / "semantic_dev"  # the semantic tier's tuning pairs


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


def _run(args: list[str], out: Path, env: dict[str, str] | None = None) -> dict:
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, str(BENCHMARKS / "workloads.py"), "--quick", "--out", str(out)]
    done = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "workloads-quick.json").read_text())


def test_paraphrases_share_a_meaning_and_traps_have_their_own():
    workload = next(w for w in WORKLOADS if w.name == "paraphrase")
    sizes = {"topics": 8, "requests": 400}
    before, after = workload.build(sizes, 7, False), workload.build(sizes, 7, True)
    by_meaning: dict[str, set[str]] = {}
    for call in before:
        by_meaning.setdefault(call.meaning, set()).add(call.inputs["question"])
    topics = {m: q for m, q in by_meaning.items() if " trap " not in m.split(" | ")[0]}
    traps = {m: q for m, q in by_meaning.items() if m not in topics}
    assert traps and any(len(questions) > 1 for questions in topics.values())
    for meaning, questions in traps.items():
        assert len(questions) == 1  # a trap is one wording, never another's paraphrase
        topic = meaning.split(" trap ")[0]
        policy = meaning.split(" | ", 1)[1]
        assert questions.isdisjoint(by_meaning.get(f"{topic} | {policy}", set()))
    # The edit changes a policy: its calls get a meaning of their own (the old answers are
    # not right any more), the others keep theirs.
    edited = set(workload.edits(sizes, 7))
    for call in after:
        changed = bool(edited & set(call.deps))
        assert (call.meaning in by_meaning) is not changed


@pytest.mark.skipif(not SEMANTIC_DEV.is_dir(), reason="no semantic_dev folder beside the repo")
def test_paraphrase_wordings_are_not_the_semantic_tiers_tuning_pairs():
    """The workload must not score the semantic tier on the pairs it was tuned on."""

    def words(text: str) -> str:
        return " ".join(re.sub(r"[^a-z ]+", " ", text.lower()).split())

    dev = set()
    for name in ("questions.jsonl", "conversations.jsonl"):
        for line in (SEMANTIC_DEV / name).read_text().splitlines():
            pair = json.loads(line)
            for side in (pair["a"], pair["b"]):
                texts = [side] if isinstance(side, str) else [m["content"] for m in side]
                dev.update(words(text) for text in texts)
    workload = next(w for w in WORKLOADS if w.name == "paraphrase")
    asked = {words(call.inputs["question"]) for call in workload.build(workload.full, 7, False)}
    assert asked and not asked & dev
    for wording in paraphrase_questions():
        # Nor any wording's fixed words, whatever fills its slots.
        fixed = words(re.sub(r"\{\w+\}", " ", wording))
        assert fixed not in dev, wording


def test_a_paraphrase_may_serve_its_questions_answer_and_a_trap_may_not():
    ask = Call((("question", "When do you open?"),), (), meaning="faq:0 | policy")
    again = Call((("question", "What time do you open?"),), (), meaning="faq:0 | policy")
    trap = Call((("question", "When do you close?"),), (), meaning="faq:0 trap 0 | policy")
    other = Call((("dish", "Udon"),), ())  # no meaning: only its own answer is right
    right = accepted_answers({ask: "9am", again: "9 am", trap: "10pm", other: "300 kcal"})
    assert right[again] == right[ask] == {"9am", "9 am"}
    assert right[trap] == {"10pm"} and right[other] == {"300 kcal"}
    records = [
        CallRecord(again, 0.0, 0.1, hit=True, content="9am"),  # a paraphrase hit: right
        CallRecord(trap, 0.0, 0.1, hit=True, content="9am"),  # a trap served: wrong
        CallRecord(trap, 0.0, 0.1, content="10pm"),
        CallRecord(other, 0.0, 0.1, hit=True, content="9am"),  # another prompt's: wrong
    ]
    figures = phase_figures(records, wall_s=1.0, upstream_calls=1, references=right, prices=None)
    assert (figures["hits"], figures["wrong_answers"]) == (3, 2)


def test_phase_figures_count_hits_tokens_and_wrong_answers():
    a, b = Call((("q", "a"),), ()), Call((("q", "b"),), ())
    records = [
        CallRecord(a, 0.0, 0.100, hit=False, content="A", input_tokens=10, output_tokens=5),
        CallRecord(a, 0.0, 0.002, hit=True, content="A", input_tokens=10, output_tokens=5),
        CallRecord(b, 0.0, 0.001, hit=True, content="stale", input_tokens=7, output_tokens=3),
        CallRecord(b, 0.0, 0.300, failed=True, error="x.Boom"),
    ]
    figures = phase_figures(
        records, wall_s=1.0, upstream_calls=2, references=accepted_answers({a: "A", b: "B"}),
        prices=(1.0, 10.0),
    )  # fmt: skip
    assert (figures["hits"], figures["failed"], figures["wrong_answers"]) == (2, 1, 1)
    assert figures["tokens_saved"] == 25
    assert figures["cost_saved_usd"] == 17 * 1.0 + 8 * 10.0
    assert figures["p50_ms"] == 2.0 and figures["p99_ms"] == 100.0
    assert figures["hits_by_end"] == "1100"  # in the order the calls finished
    assert figures["errors"] == ["x.Boom"]


@pytest.mark.slow
def test_quick_run_writes_every_table_and_plot(tmp_path):
    _run(["--contenders", ",".join(CONTENDERS)], tmp_path)
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
def test_semantic_contenders_serve_paraphrases_and_are_judged(tmp_path):
    """The semantic caches run every phase; their wrong answers are counted, not assumed 0."""
    exact = "TieredCache memory+disk"
    report = _run(
        ["--workloads", "paraphrase", "--contenders", ",".join((exact, *SEMANTIC))],
        tmp_path,
    )
    for workload, results in report["results"].items():
        assert list(results) == [exact, *SEMANTIC], workload
        for contender, phases in results.items():
            assert list(phases) == list(PHASES)
            for figures in phases.values():
                assert figures["failed"] == 0 and figures["wrong_answers"] is not None
            if contender.startswith("TieredCache"):
                # The semantic tier only adds hits after the exact tiers (coalescing included).
                assert phases["cold"]["upstream_calls"] <= results[exact]["cold"]["upstream_calls"]
        assert sum(f["wrong_answers"] for f in results[exact].values()) == 0
    paraphrase = report["results"]["paraphrase"]
    # Later users' other wordings are served from earlier users' answers...
    semantic = paraphrase["TieredCache memory+disk+semantic"]["cold"]
    assert semantic["upstream_calls"] < paraphrase[exact]["cold"]["upstream_calls"]
    # ...and a cache that serves traps is seen doing it: the judge compares every answer.
    served_wrong = paraphrase["langchain-redis RedisSemanticCache"]
    assert sum(f["wrong_answers"] for f in served_wrong.values()) > 0


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
