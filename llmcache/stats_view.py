"""Stats as text a person reads: a small table per cache, and the phrases the CLI shares.

Pure functions of the numbers; nothing here counts or reads a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = ["count", "latency", "money", "percent", "render", "saved", "table"]


class TierRow(Protocol):
    """What a table row reads of a tier's figures (``stats.TierStats``)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def corrupt(self) -> int: ...
    @property
    def stale(self) -> int: ...
    @property
    def writes(self) -> int: ...
    @property
    def latency_p50_us(self) -> float: ...
    @property
    def latency_p99_us(self) -> float: ...


class Shown(Protocol):
    """What the table reads of a cache's figures (``stats.CacheStats``).

    A protocol, so that the view imports nothing of the counters it shows.
    """

    @property
    def namespace(self) -> str: ...
    @property
    def tiers(self) -> Mapping[str, TierRow]: ...
    @property
    def extra(self) -> Mapping[str, int]: ...
    @property
    def errors_by_source(self) -> Mapping[str, int]: ...
    @property
    def lookups(self) -> int: ...
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def coalesced(self) -> int: ...
    @property
    def tokens_saved(self) -> int: ...
    @property
    def cost_saved_nanos(self) -> int: ...
    @property
    def tokens_unpriced(self) -> int: ...


_HEADER = ("tier", "hits", "misses", "errors", "corrupt", "stale", "writes", "p50 µs", "p99 µs")


def render(stats: Shown) -> str:
    """``print(cache.stats())``: one line of totals, a row per tier, a total row, savings.

    The hits, errors, corrupt, stale and writes columns add up to the total
    row. Misses do not, by nature: a lookup that misses memory asks disk next,
    so each tier counts its own misses, and the total is the lookups that no
    tier answered (the calls that went upstream).
    """
    rows: list[Sequence[str]] = [_HEADER]
    for name, tier in stats.tiers.items():
        rows.append(
            (
                name,
                count(tier.hits),
                count(tier.misses),
                count(tier.errors),
                count(tier.corrupt),
                count(tier.stale),
                count(tier.writes),
                latency(tier.latency_p50_us),
                latency(tier.latency_p99_us),
            )
        )
    if "coalesced" in stats.extra:
        rows.append(("coalesced", count(stats.coalesced), "", "", "", "", "", "", ""))
    for source, errors in stats.errors_by_source.items():
        if errors:
            rows.append((source, "", "", count(errors), "", "", "", "", ""))
    tiers = stats.tiers.values()
    rows.append(
        (
            "total",
            count(stats.hits),
            count(stats.misses),
            count(stats.errors),
            count(sum(tier.corrupt for tier in tiers)),
            count(sum(tier.stale for tier in tiers)),
            count(sum(tier.writes for tier in tiers)),
            "",
            "",
        )
    )
    noun = "error" if stats.errors == 1 else "errors"
    head = (
        f"llmcache namespace {stats.namespace!r}: {count(stats.lookups)} lookups,"
        f" hit rate {percent(stats.hits, stats.lookups)}, {count(stats.errors)} {noun}"
    )
    lines = [head, *("  " + line for line in table(rows))]
    lines.append(
        "  saved: "
        + saved(stats.hits, stats.tokens_saved, stats.cost_saved_nanos, stats.tokens_unpriced)
    )
    lines.append("  (misses per tier: not in that tier; total: in no tier, so called upstream)")
    return "\n".join(lines)


def saved(calls: int, tokens: int, nanos: int, unpriced: int) -> str:
    """Like '12 calls, 3,400 tokens, $0.0021'; the cost is "unknown" where no price is known."""
    return f"{count(calls)} calls, {count(tokens)} tokens, {cost(nanos, unpriced)}"


def cost(nanos: int, unpriced: int) -> str:
    if not unpriced:
        return money(nanos)
    what = f"{count(unpriced)} tokens of models with no known price"
    if not nanos:
        return f"cost unknown ({what})"
    return f"{money(nanos)} + unknown ({what})"


def money(nanos: int) -> str:
    """Nano-dollars as dollars: cents from a dollar up, else six decimals (a millionth)."""
    usd = nanos / 1e9
    if usd >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.6f}".rstrip("0").rstrip(".") if nanos else "$0"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def count(value: int) -> str:
    return f"{value:,}"


def latency(microseconds: float) -> str:
    """Rounded to what a reader compares: 0.1 µs below 10 µs, whole µs above; "-": no sample."""
    if microseconds <= 0:
        return "-"
    return f"{microseconds:.1f}" if microseconds < 10 else f"{microseconds:,.0f}"


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned lines: the first column to the left, the others to the right."""
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    cells = (zip(row, widths, strict=True) for row in rows)
    return [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(r)).rstrip()
        for r in cells
    ]
