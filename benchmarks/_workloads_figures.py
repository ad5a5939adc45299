"""From recorded calls to the figures and tables of benchmarks/workloads.py (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from _workloads_data import Call
from _workloads_run import CallRecord

__all__ = [
    "PHASES",
    "accepted_answers",
    "markdown",
    "phase_figures",
    "price_per_token",
    "summary_table",
]

PHASES = ("cold", "warm", "new process", "after invalidation")


def price_per_token(model: str) -> tuple[float, float] | None:
    """USD per input and per output token from langchain-community's OpenAI callback table.

    None when the model is not in it (then cost saved is shown as "-").
    """
    from langchain_community.callbacks.openai_info import (
        TokenType,
        get_openai_token_cost_for_model,
    )

    try:
        return (
            get_openai_token_cost_for_model(model, 1_000_000) / 1e6,
            get_openai_token_cost_for_model(model, 1_000_000, token_type=TokenType.COMPLETION)
            / 1e6,
        )
    except ValueError:
        return None


def accepted_answers(fresh: dict[Call, str]) -> dict[Call, frozenset[str]]:
    """Per call, every answer that is right for it: the fresh answers of its meaning.

    A call with no ``meaning`` is right only with its own prompt's fresh answer (what an
    exact cache serves); paraphrases of one question accept one another's answers, so a
    semantic hit on a paraphrase is right and one on a trap (its own meaning) is wrong.
    """
    by_meaning: dict[object, set[str]] = {}
    for call, answer in fresh.items():
        by_meaning.setdefault(call.answered_by, set()).add(answer)
    return {call: frozenset(by_meaning[call.answered_by]) for call in fresh}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value below which q% of the calls fell)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def phase_figures(
    records: Sequence[CallRecord],
    *,
    wall_s: float,
    upstream_calls: int,
    references: dict[Call, frozenset[str]] | None,
    prices: tuple[float, float] | None,
) -> dict[str, Any]:
    """One contender's figures for one phase of one workload.

    ``references``: the answers right for each call (:func:`accepted_answers`); None when
    there is no judge (the real API), and wrong answers are then not counted.
    """
    done = [r for r in records if not r.failed]
    hits = [r for r in done if r.hit]
    latencies = sorted((r.ended - r.started) * 1000 for r in done)
    saved_in = sum(r.input_tokens for r in hits)
    saved_out = sum(r.output_tokens for r in hits)
    wrong = None
    if references is not None:  # every answer served, hit or not, against the right ones
        wrong = sum(1 for r in done if r.content not in references[r.call])
    by_end = sorted(records, key=lambda r: r.ended)
    return {
        "calls": len(records),
        "failed": len(records) - len(done),
        "errors": sorted({r.error for r in records if r.error}),
        "wall_s": round(wall_s, 4),
        "upstream_calls": upstream_calls,
        "hits": len(hits),
        "hit_rate": round(len(hits) / len(records), 4) if records else 0.0,
        "tokens_saved": saved_in + saved_out,
        "cost_saved_usd": None if prices is None else saved_in * prices[0] + saved_out * prices[1],
        "p50_ms": round(_percentile(latencies, 50), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "wrong_answers": wrong,
        # For the plots: per-call latency, and hits in the order the calls finished.
        "latencies_ms": [round(value, 2) for value in latencies],
        "hits_by_end": "".join("1" if r.hit else "0" for r in by_end),
    }


def _cost(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _wrong(value: int | None) -> str:
    return "not counted" if value is None else str(value)


def workload_table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Rows: contender and phase; the figures of one workload."""
    lines = [
        "| contender | phase | wall s | upstream calls | hit rate | tokens saved | USD saved"
        " | p50 ms | p99 ms | wrong answers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for contender, phases in results.items():
        for phase in PHASES:
            f = phases.get(phase)
            if f is None:
                continue
            failed = f" ({f['failed']} raised)" if f["failed"] else ""
            lines.append(
                f"| {contender} | {phase} | {f['wall_s']:.2f} | {f['upstream_calls']}{failed}"
                f" | {f['hit_rate']:.0%} | {f['tokens_saved']:,} | {_cost(f['cost_saved_usd'])}"
                f" | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {_wrong(f['wrong_answers'])} |"
            )
    raised = [
        f"{contender} ({phase}): {f['failed']} calls raised {', '.join(f['errors'])}"
        for contender, phases in results.items()
        for phase, f in phases.items()
        if f["failed"]
    ]
    if raised:
        lines += ["", "Calls that raised in the user's code: " + "; ".join(raised) + "."]
    return lines


def summary_table(report: dict[str, Any]) -> list[str]:
    """One row per workload and contender: wall seconds / upstream calls of each phase."""
    lines = [
        "| workload | contender | cold | warm | new process | after invalidation"
        " | warm p50/p99 ms | USD saved | wrong |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, by_contender in report["results"].items():
        for contender, phases in by_contender.items():
            cells = []
            for phase in PHASES:
                f = phases.get(phase)
                if f is None:
                    cells.append("-")
                    continue
                raised = f" ({f['failed']} raised)" if f["failed"] else ""
                cells.append(f"{f['wall_s']:.2f} s / {f['upstream_calls']}{raised}")
            warm = phases["warm"]
            costs = [f["cost_saved_usd"] for f in phases.values()]
            cost = None if any(c is None for c in costs) else sum(costs)
            wrongs = [f["wrong_answers"] for f in phases.values()]
            wrong = None if any(w is None for w in wrongs) else sum(wrongs)
            lines.append(
                f"| {workload} | {contender} | {' | '.join(cells)}"
                f" | {warm['p50_ms']:.1f} / {warm['p99_ms']:.1f} | {_cost(cost)}"
                f" | {_wrong(wrong)} |"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# Workloads ({report['mode']} run, {report['date']})",
        "",
        f"Python {report['python']}, {report['machine']}, {report['cpus']} CPUs shared with"
        " other jobs (figures are one run, not medians: compare within a phase, not to the"
        " millisecond).",
        f"Upstream: {report['upstream']}. Model {s['model']}, Semaphore({s['concurrency']}),"
        f" seed {s['seed']}. Prices: {report['prices']}.",
        "",
        "Each cell of the summary is `wall seconds / upstream calls`. Phases: **cold** (empty"
        " store), **warm** (the same cache object again), **new process** (a subprocess opening"
        " the same store; its wall time excludes interpreter start), **after invalidation**"
        " (a few inputs edited; TieredCache is told `invalidate(...)` of what changed, the"
        " others have no such call). Upstream calls are the simulator's request count;"
        " *wrong* counts answers served that are not right for the call: right is a fresh"
        " answer to the same prompt or, in the paraphrase workload, to another wording of"
        " the same question under the same policy (a trap is right only with its own).",
        "",
        "## Summary",
        "",
        *summary_table(report),
    ]
    for workload, by_contender in report["results"].items():
        info = report["workloads"][workload]
        lines += [
            "",
            f"## {info['title']}",
            "",
            f"{info['calls']} calls ({info['distinct']} distinct prompts); after the edit"
            f" {info['changed_calls']} prompts changed, invalidated: {info['invalidated']}.",
            "",
            *workload_table(by_contender),
        ]
    return "\n".join(lines) + "\n"
