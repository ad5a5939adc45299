"""The plots of benchmarks/workloads.py, drawn from its JSON report (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _workloads_figures import PHASES

__all__ = ["PLOTS", "draw_all"]

PLOTS = ("bars", "latency-cdf", "hit-rate")
_LINES = ("-", "--", ":", "-.")  # colour and dash tell overlapping lines apart
# Twelve contenders: matplotlib's ten cycle colours, then two more not in it.
_COLOURS = (*(f"C{i}" for i in range(10)), "black", "magenta")


def _style(n: int) -> dict[str, Any]:
    """The n-th contender's line: a colour and a dash of its own."""
    return {"color": _COLOURS[n % len(_COLOURS)], "linestyle": _LINES[n % len(_LINES)]}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def _legend(fig: Any, axes: Any) -> None:
    """One legend for the whole figure, above the panels."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=6, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.93, bottom=0.05, hspace=0.5, wspace=0.15)


def _bars(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    results = report["results"]
    panels = (
        ("wall_s", "wall s", "wall time"),
        ("upstream_calls", "calls", "upstream calls"),
        ("wrong_answers", "answers", "wrong answers served"),
    )
    fig, axes = plt.subplots(
        len(results), len(panels), figsize=(20, 3.6 * len(results)), squeeze=False
    )
    for row, (workload, by_contender) in enumerate(results.items()):
        names = list(by_contender)
        width = 0.8 / len(PHASES)
        for col, (key, label, title) in enumerate(panels):
            ax = axes[row][col]
            for p, phase in enumerate(PHASES):
                # None (wrong answers not counted against the real API) draws as 0.
                values = [by_contender[n].get(phase, {}).get(key) or 0 for n in names]
                xs = [i + (p - (len(PHASES) - 1) / 2) * width for i in range(len(names))]
                ax.bar(xs, values, width, label=phase)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
            ax.set_ylabel(label)
            ax.set_title(f"{workload}: {title}")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    # Fixed margins, not tight_layout: measuring every label took most of a quick run's plotting.
    fig.subplots_adjust(left=0.04, right=0.99, top=0.97, bottom=0.07, hspace=0.8, wspace=0.12)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _cdf(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    from matplotlib import ticker

    results = report["results"]
    fig, axes = plt.subplots(
        len(results), len(PHASES), figsize=(18, 3.2 * len(results)), squeeze=False
    )
    for row, (workload, by_contender) in enumerate(results.items()):
        for col, phase in enumerate(PHASES):
            ax = axes[row][col]
            for n, (name, phases) in enumerate(by_contender.items()):
                values = phases.get(phase, {}).get("latencies_ms", [])
                if values:
                    fractions = [(i + 1) / len(values) for i in range(len(values))]
                    ax.step(values, fractions, where="post", label=name, linewidth=1.2,
                            **_style(n))  # fmt: skip
            ax.set_xscale("log")
            # Plain numbers at 1-2-5 steps: log axes' default mathtext labels are slow to draw.
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_title(f"{workload}: {phase}", fontsize=9)
            ax.set_xlabel("per-call latency, ms (log)", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of calls")
    _legend(fig, axes)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _hit_rate(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    results = report["results"]
    shown = ("cold", "new process", "after invalidation")
    fig, axes = plt.subplots(
        len(results), len(shown), figsize=(15, 3.2 * len(results)), squeeze=False
    )
    for row, (workload, by_contender) in enumerate(results.items()):
        for col, phase in enumerate(shown):
            ax = axes[row][col]
            for n, (name, phases) in enumerate(by_contender.items()):
                flags = phases.get(phase, {}).get("hits_by_end", "")
                if not flags:
                    continue
                hits, curve = 0, []
                for i, flag in enumerate(flags, 1):
                    hits += flag == "1"
                    curve.append(hits / i)
                ax.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1.2,
                        **_style(n))  # fmt: skip
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{workload}: {phase}", fontsize=9)
            ax.set_xlabel("calls finished", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("hit rate so far")
    _legend(fig, axes)
    fig.savefig(path, dpi=80)
    plt.close(fig)


_DRAW = {"bars": _bars, "latency-cdf": _cdf, "hit-rate": _hit_rate}


def draw_all(report: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Every plot as ``<out>/<stem>-<plot>.png``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for plot in PLOTS:
        path = out / f"{stem}-{plot}.png"
        _DRAW[plot](report, path)
        paths.append(path)
    return paths
