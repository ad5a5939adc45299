"""``llmcache demo``: the seed's nutrient-extraction job, run four ways and measured.

A few hundred menu items across restaurants, where the same dish appears on many menus
(Zipf-like), go through ``prompt | ChatOpenAI`` under ``asyncio.gather`` and a Semaphore:
(1) uncached, (2) cold ``TieredCache`` in a fresh directory, (3) the same cache again
(L1 hits), (4) a new ``TieredCache`` over the same directory (a new process: L2 hits
promoted to L1). Upstream calls are counted by the simulator, which sees every request.

LangChain, openai, tqdm and the simulator's aiohttp are imported inside the functions that
use them, so building the command line (every ``llmcache`` call does) stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcache.errors import ConfigurationError

if TYPE_CHECKING:
    from llmcache.langchain_adapter import TieredCache

__all__ = ["PhaseResult", "TierFigures", "add_arguments", "build_menu", "run"]

_DISHES = (
    "Tonkatsu", "Katsudon", "Gyudon", "Oyakodon", "Shoyu Ramen", "Tonkotsu Ramen", "Miso Ramen",
    "Udon", "Zaru Soba", "Tempura Udon", "Sushi Set", "Salmon Sashimi", "Chirashi Don", "Unadon",
    "Karaage", "Gyoza", "Takoyaki", "Okonomiyaki", "Omurice", "Curry Rice", "Hayashi Rice",
    "Cheese Katsu", "Ebi Fry", "Yakitori", "Yakisoba", "Kimchi Jjigae", "Doenjang Jjigae",
    "Bibimbap", "Bulgogi", "Japchae", "Tteokbokki", "Kimbap", "Naengmyeon", "Samgyeopsal",
    "Sundubu Jjigae", "Galbitang", "Jajangmyeon", "Jjamppong", "Tangsuyuk", "Dakgalbi",
    "Haemul Pajeon", "Mandu", "Ramyeon", "Kalguksu", "Bossam", "Jokbal", "Seolleongtang",
    "Dolsot Bibimbap", "Yukgaejang", "Sundae", "Fried Chicken", "Yangnyeom Chicken",
    "Nabeyaki Udon", "Kitsune Udon", "Hiyashi Chuka", "Tamagoyaki", "Chawanmushi",
    "Menchi Katsu", "Mentaiko Pasta", "Donkatsu Curry",
)  # fmt: skip
_STYLES = ("", "Spicy ", "Cheese ", "Set: ")
_NAMESPACE = "llmcache-demo"

_SYSTEM = (
    "You are a nutritionist. The menu items come from restaurants in Korea; many are Japanese "
    "dishes written as they sound. Estimate the ingredients of one serving and its nutrients, "
    "and explain your reasoning briefly."
)
# The seed's prompt also carried the product ID: an ID makes every prompt unique, so no two
# items could ever share an answer. The answer depends on the dish alone, so only it is sent.
_NUTRIENTS = (
    "carbohydrates (g)", "sugar (g)", "protein (g)", "fat (g)", "saturated fat (g)",
    "unsaturated fat (g)", "cholesterol (mg)", "fiber (g)", "sodium (mg)", "potassium (mg)",
    "calories (kcal)",
)  # fmt: skip
_USER = "Menu item: {dish}\nEstimate, for one serving:\n" + "\n".join(f"- {n}" for n in _NUTRIENTS)


@dataclass(frozen=True)
class MenuItem:
    restaurant: str
    dish: str


@dataclass(frozen=True)
class TierFigures:
    hits: int
    lookups: int
    hit_rate: float


@dataclass
class PhaseResult:
    phase: str
    wall_s: float
    upstream_calls: int
    failed: int
    memory: TierFigures | None  # None: no lookups were made in this tier
    disk: TierFigures | None
    tokens_saved: int
    cache_misses: int | None  # lookups no tier could answer; None without a cache
    coalesced: int | None  # lookups answered by waiting for the identical call in flight
    speedup: float = 1.0


def _dish_names(count: int) -> list[str]:
    names = [f"{style}{dish}" for style in _STYLES for dish in _DISHES]
    extra = count - len(names)
    names += [f"{_DISHES[i % len(_DISHES)]} No.{i // len(_DISHES) + 2}" for i in range(extra)]
    return names[:count]


def build_menu(items: int, distinct: int, seed: int) -> list[MenuItem]:
    """``items`` menu entries over ``distinct`` dishes, each dish at least once.

    The rest are drawn with Zipf-like weights (rank r has weight 1/r): a few dishes are on
    most menus, most dishes on one or two. Shuffled, then dealt out to restaurants.
    """
    if not 1 <= distinct <= items:
        raise ConfigurationError(f"need 1 <= --distinct <= --items, got {distinct} and {items}")
    rng = random.Random(seed)
    dishes = _dish_names(distinct)
    weights = [1 / rank for rank in range(1, distinct + 1)]
    menu = dishes + rng.choices(dishes, weights, k=items - distinct)
    rng.shuffle(menu)
    out: list[MenuItem] = []
    while len(out) < len(menu):  # restaurants of 8-24 items each
        name = f"restaurant {len({item.restaurant for item in out}) + 1}"
        out += [MenuItem(name, dish) for dish in menu[len(out) : len(out) + rng.randint(8, 24)]]
    return out


def _figures(cache: TieredCache, tier: str) -> TierFigures | None:
    stats = cache.stats().tiers[tier]
    lookups = stats.hits + stats.misses
    return TierFigures(stats.hits, lookups, stats.hit_rate) if lookups else None


@dataclass(frozen=True)
class _Upstream:
    base_url: str | None  # None: the real OpenAI API
    requests: Callable[[], int] | None  # the simulator's counter; None: count cache misses


async def _extract_all(
    menu: list[MenuItem],
    upstream: _Upstream,
    cache: TieredCache | None,
    args: argparse.Namespace,
    label: str,
) -> int:
    """Run the whole batch once in this event loop; returns how many items failed."""
    import openai
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr
    from tqdm import tqdm

    # langchain-openai keeps one async httpx client per base_url across event loops; a
    # client of our own, closed with this loop, keeps each phase's connections its own.
    http_client = openai.DefaultAsyncHttpxClient()
    where: dict[str, Any] = {}
    if upstream.base_url is not None:
        where = {"base_url": upstream.base_url, "api_key": SecretStr("simulator")}
    llm = ChatOpenAI(
        model=args.model,
        temperature=0,
        max_retries=2,
        cache=False if cache is None else cache,
        http_async_client=http_client,
        **where,
    )
    chain = ChatPromptTemplate.from_messages([("system", _SYSTEM), ("user", _USER)]) | llm
    semaphore = asyncio.Semaphore(args.concurrency)
    bar = tqdm(total=len(menu), desc=label, unit="item", disable=args.no_progress, leave=False)

    async def extract(item: MenuItem) -> bool:
        async with semaphore:
            try:
                await chain.ainvoke({"dish": item.dish})
                return True
            except openai.APIError:  # after max_retries: this item failed, the batch goes on
                return False
            finally:
                bar.update(1)

    try:
        done = await asyncio.gather(*(extract(item) for item in menu))
    finally:
        bar.close()
        await http_client.aclose()
    return done.count(False)


def _phase(
    label: str,
    menu: list[MenuItem],
    upstream: _Upstream,
    cache: TieredCache | None,
    args: argparse.Namespace,
) -> PhaseResult:
    if cache is not None:
        cache.reset_stats()
    before = upstream.requests() if upstream.requests else 0
    started = time.perf_counter()
    failed = asyncio.run(_extract_all(menu, upstream, cache, args, label))
    wall = time.perf_counter() - started
    if upstream.requests is not None:
        calls = upstream.requests() - before
    else:  # the real API: every call goes up uncached, every cache miss goes up cached
        calls = len(menu) if cache is None else cache.stats().misses
    if cache is None:
        return PhaseResult(label, wall, calls, failed, None, None, 0, None, None)
    stats = cache.stats()
    memory, disk = _figures(cache, "memory"), _figures(cache, "disk")
    coalesced = stats.extra.get("coalesced", 0)
    return PhaseResult(
        label, wall, calls, failed, memory, disk, stats.tokens_saved, stats.misses, coalesced
    )


def _run_phases(
    menu: list[MenuItem], upstream: _Upstream, directory: Path, args: argparse.Namespace
) -> list[PhaseResult]:
    from llmcache.backends.disk import DiskTier
    from llmcache.langchain_adapter import TieredCache

    results = [_phase("uncached", menu, upstream, None, args)]
    cache = TieredCache(l2=DiskTier(directory), namespace=_NAMESPACE)
    cache.clear()  # a --cache-dir may hold an earlier run: start cold, touch no other namespace
    try:
        results.append(_phase("cold", menu, upstream, cache, args))
        results.append(_phase("warm (same cache)", menu, upstream, cache, args))
    finally:
        cache.close()
    # A new process's view: an empty L1 over the same directory.
    fresh = TieredCache(l2=DiskTier(directory), namespace=_NAMESPACE)
    try:
        results.append(_phase("warm from disk", menu, upstream, fresh, args))
    finally:
        fresh.close()
    for result in results:
        result.speedup = results[0].wall_s / result.wall_s if result.wall_s else 0.0
    return results


def run(args: argparse.Namespace) -> int:
    """The ``llmcache demo`` command."""
    try:
        import langchain_openai  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(f"the demo needs: pip install 'llmcache[demo]' ({exc})") from exc
    if args.openai and not os.environ.get("OPENAI_API_KEY"):
        raise ConfigurationError("--openai needs OPENAI_API_KEY in the environment")
    menu = build_menu(args.items, args.distinct, args.seed)
    with tempfile.TemporaryDirectory(prefix="llmcache-demo-") as scratch:
        directory = Path(args.cache_dir).expanduser() if args.cache_dir else Path(scratch)
        if args.openai:
            source = f"the OpenAI API ({args.model}); upstream calls counted by cache misses"
            results = _run_phases(menu, _Upstream(None, None), directory, args)
        else:
            from llmcache.simulator import Simulator, SimulatorConfig

            config = SimulatorConfig(
                latency_ms=args.latency_ms,
                latency_sigma=0.3,
                per_token_ms=args.latency_ms / 800,  # 0.5 ms a token at the default 400 ms
                seed=args.seed,
                completion_tokens=120,
            )
            with Simulator(config) as sim:
                source = (
                    f"local simulator {sim.base_url} (median {args.latency_ms:g} ms, sigma 0.3,"
                    f" {config.per_token_ms:g} ms/token); upstream calls counted by the simulator"
                )
                results = _run_phases(
                    menu, _Upstream(sim.base_url, lambda: sim.requests), directory, args
                )
    restaurants = len({item.restaurant for item in menu})
    print(
        f"{len(menu)} menu items, {args.distinct} distinct dishes, {restaurants} restaurants;"
        f" concurrency {args.concurrency}\nupstream: {source}\ncache: {directory}"
        f" (namespace {_NAMESPACE!r})\n\n{format_table(results)}\n"
    )
    cold, repeats = results[1], len(menu) - args.distinct
    coalesced = cold.coalesced or 0
    l1_hits = cold.memory.hits if cold.memory else 0
    print(
        f"cold: of the {repeats} items that repeat a dish, {l1_hits} hit L1 (their dish's"
        f" first call had finished) and {coalesced} waited for the identical call still in"
        f" flight instead of making their own; {cold.upstream_calls} upstream calls for"
        f" {args.distinct} distinct dishes."
    )
    if args.json:
        settings = {key: vars(args)[key] for key in ("distinct", "concurrency", "seed", "model")}
        report = {
            "items": len(menu),
            **settings,
            "restaurants": restaurants,
            "upstream": "openai" if args.openai else "simulator",
            "latency_ms": None if args.openai else args.latency_ms,
            "phases": [asdict(result) for result in results],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(result.failed for result in results) else 0


def _rate(figures: TierFigures | None) -> str:
    return "-" if figures is None else f"{figures.hit_rate:.0%} ({figures.hits}/{figures.lookups})"


def format_table(results: list[PhaseResult]) -> str:
    """The phases as an aligned text table, one row each."""
    rows = [
        ("phase", "wall s", "upstream", "memory hits", "disk hits", "coalesced", "tokens saved",
         "speedup")
    ]  # fmt: skip
    rows += [
        (
            r.phase,
            f"{r.wall_s:.2f}",
            f"{r.upstream_calls}" + (f" ({r.failed} failed)" if r.failed else ""),
            _rate(r.memory),
            _rate(r.disk),
            "-" if r.coalesced is None else f"{r.coalesced}",
            f"{r.tokens_saved:,}",
            f"{r.speedup:.1f}x",
        )
        for r in results
    ]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    cells = (zip(row, widths, strict=True) for row in rows)
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(r)) for r in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _at_least(minimum: float, kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        value = kind(text)
        if not value >= minimum:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    numbers: list[tuple[str, Callable[[str], Any], float, str]] = [
        ("--items", _at_least(1, int), 300, "menu items"),
        ("--distinct", _at_least(1, int), 120, "distinct dishes among them"),
        ("--concurrency", _at_least(1, int), 32, "asyncio.Semaphore size"),
        (
            "--latency-ms",
            _at_least(0, float),
            400.0,
            "simulator median latency, lognormal sigma 0.3, plus latency/800 ms a token",
        ),
        ("--seed", int, 0, "seed of the menu and the latencies"),
    ]
    for flag, kind, default, text in numbers:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")
    parser.add_argument("--cache-dir", help="disk tier directory (default: a fresh temporary one)")
    parser.add_argument(
        "--openai", action="store_true", help="call the OpenAI API (needs OPENAI_API_KEY)"
    )
    parser.add_argument("--model", default="gpt-4o-mini", help="default gpt-4o-mini")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
