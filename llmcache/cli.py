"""The ``llmcache`` command: demo, simulate, stats, namespaces, clear, invalidate, gc.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets
``handler``; ``_<name>(args) -> int`` does the work, importing anything heavy inside.
To add one (``invalidate``, ``gc``), write the pair and list the ``_add_`` function in
``_SUBCOMMANDS``. A handler raises :class:`~llmcache.errors.LLMCacheError` (wrapping a
driver's error with ``raise ... from exc``) for anything the user can fix: ``main`` prints
it as one line on stderr and exits 2, never a traceback. What the store commands read of a
store (which one the arguments name, its entries per namespace, its reported usage) is
``llmcache.cli_store``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from llmcache import cli_store as store
from llmcache.config import redact
from llmcache.errors import ConfigurationError, LLMCacheError, TierError
from llmcache.keys import validate_namespace

__all__ = ["build_parser", "main"]

_Subparsers = Any  # argparse's _SubParsersAction is private; its type adds nothing here


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit 2, as argparse does)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Run the ``llmcache`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except LLMCacheError as exc:
        print(f"llmcache {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmcache", description="A tiered cache for LLM calls.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


# -- demo --------------------------------------------------------------------------------


def _add_demo(subparsers: _Subparsers) -> None:
    from llmcache import demo  # light at import: its heavy imports are inside demo.run

    parser = subparsers.add_parser(
        "demo",
        help="nutrient extraction for a few hundred menu items: uncached, cold, warm",
        description="The parallel ainvoke job of the seed, uncached and through TieredCache, "
        "against a local simulator (no network, no key) or --openai.",
    )
    demo.add_arguments(parser)
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from llmcache import demo

    return demo.run(args)


# -- simulate ----------------------------------------------------------------------------


def _add_simulate(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="serve an OpenAI-compatible chat-completions simulator until Ctrl-C",
        description="Serve an OpenAI-compatible simulator; point ChatOpenAI(base_url=...) at "
        "the printed URL with any api_key. Prints 'listening on URL' first.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="median time to first byte")
    parser.add_argument("--latency-sigma", type=float, default=0.0, help="lognormal spread")
    parser.add_argument("--per-token-ms", type=float, default=0.0, help="time per output token")
    parser.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    if min(args.latency_ms, args.latency_sigma, args.per_token_ms) < 0:
        raise ConfigurationError("latencies must be 0 or more")
    try:
        from llmcache.simulator import SimulatorConfig, run_forever
    except ImportError as exc:
        raise ConfigurationError(f"simulate needs: pip install 'llmcache[demo]' ({exc})") from exc
    config = SimulatorConfig(
        latency_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        per_token_ms=args.per_token_ms,
    )
    try:
        run_forever(config, args.host, args.port)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return 0


# -- stats and clear ---------------------------------------------------------------------


def _add_store_arguments(parser: argparse.ArgumentParser, namespace_help: str) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dir", type=Path, help="a disk cache directory (default: $LLMCACHE_DIR "
                       "or ~/.cache/llmcache)")  # fmt: skip
    where.add_argument("--url", help="a Redis URL: redis://host:6379/0")
    parser.add_argument("--namespace", help=namespace_help)
    parser.add_argument(
        "--prefix", default="llmcache:", help="RedisTier key prefix (default 'llmcache:')"
    )


_ONE_NAMESPACE_HELP = (
    "the namespace (needed when the store holds any namespace but 'default';"
    " `llmcache namespaces` lists them)"
)


def _add_stats(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="entries and bytes per namespace in a cache directory or Redis, and the hit rate,"
        " calls, tokens and cost saved that every process using it reported",
    )
    _add_store_arguments(parser, "only this namespace (default: all)")
    parser.set_defaults(handler=_stats)


def _add_clear(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "clear", help="remove one namespace's entries, leaving other namespaces alone"
    )
    _add_store_arguments(parser, _ONE_NAMESPACE_HELP)
    parser.set_defaults(handler=_clear)


def _stats(args: argparse.Namespace) -> int:
    namespace = None if args.namespace is None else validate_namespace(args.namespace)
    where, counts = store.inventory(args, namespace)
    usage = store.fleet_usage(args, namespace)
    if not counts and not usage:
        suffix = "" if namespace is None else f" in namespace {namespace!r}"
        print(f"{where}: no entries{suffix}")
        return 0
    print(where)
    if counts:
        rows = [("namespace", "entries", "size", "expired")]
        rows += [(name, *_cells(counts[name])) for name in sorted(counts)]
        if len(counts) > 1:
            sizes = [count.size for count in counts.values()]
            total = store.Count(
                sum(count.entries for count in counts.values()),
                None if None in sizes else sum(size or 0 for size in sizes),
                sum(count.expired for count in counts.values()),
            )
            rows.append(("(total)", *_cells(total)))
        for line in _table(rows):
            print(f"  {line}")
    else:
        print("  no entries")
    _print_usage(usage)
    return 0


def _print_usage(usage: dict[str, dict[str, int]]) -> None:
    from llmcache import stats_view as view

    if not usage:
        print("usage: none reported yet (a cache reports every stats_interval, 10 s by default,"
              " at close and at exit)")  # fmt: skip
        return
    print("usage reported by every process that used it (each every stats_interval and at exit):")
    rows = [("namespace", "processes", "lookups", "hit rate", "calls made", "calls saved",
             "tokens saved", "cost saved", "errors", "last report (UTC)")]  # fmt: skip
    for name in sorted(usage):
        got = usage[name]
        hits, misses = got.get("hits", 0), got.get("misses", 0)
        updated = got.get("updated_at")
        rows.append(
            (
                name,
                view.count(got.get("processes", 0)),
                view.count(hits + misses),
                view.percent(hits, hits + misses),
                view.count(misses),
                view.count(hits),
                view.count(got.get("tokens_saved", 0)),
                view.cost(got.get("cost_saved_nanos", 0), got.get("tokens_unpriced", 0)),
                view.count(got.get("errors", 0)),
                "-"
                if updated is None
                else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(updated)),
            )
        )
    for line in _table(rows):
        print(f"  {line}")
    print("  (processes: caches that reported; cost: llmcache.pricing, from LangChain's OpenAI"
          " price table; unknown where a model has no price)")  # fmt: skip


def _cells(count: store.Count) -> tuple[str, str, str]:
    return str(count.entries), _size(count.size), str(count.expired)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned lines: the first column to the left, the others to the right."""
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    cells = (zip(row, widths, strict=True) for row in rows)
    return ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(r)) for r in cells]


def _add_namespaces(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "namespaces", help="the namespaces a cache directory or Redis holds, with entry counts"
    )
    _add_store_arguments(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=_namespaces)


def _namespaces(args: argparse.Namespace) -> int:
    where, counts = store.inventory(args, None)
    if not counts:
        print(f"{where}: no namespaces")
        return 0
    print(where)
    rows = [("namespace", "entries")] + [
        (name, str(counts[name].entries)) for name in sorted(counts)
    ]
    for line in _table(rows):
        print(f"  {line}")
    return 0


def _chosen_namespace(args: argparse.Namespace, counts: dict[str, store.Count], verb: str) -> str:
    """``--namespace``, or 'default' when the store holds no other; else refuse, listing them.

    A command that changes a store must not guess: acting on 'default' in a
    store that holds other namespaces would report success and do nothing the
    user meant.
    """
    if args.namespace is not None:
        return validate_namespace(args.namespace)
    others = sorted(name for name in counts if name != "default")
    if others:
        held = ", ".join(f"{name} ({counts[name].entries} entries)" for name in sorted(counts))
        raise ConfigurationError(
            f"this store holds several namespaces: {held}; say which to {verb} with --namespace"
        )
    return "default"


def _clear(args: argparse.Namespace) -> int:
    where, before = store.inventory(args, None, must_exist=True)
    namespace = _chosen_namespace(args, before, "clear")
    from llmcache.engine import default_versions

    tier = store.open_tier(args)
    versions = default_versions([tier])
    try:
        tier.clear(namespace)
        versions.clear(namespace)  # after the entries, as TieredCache.clear does
    except LLMCacheError:
        raise
    except Exception as exc:  # a tier may raise its driver's errors: report them, one line
        raise TierError(f"clear failed: {type(exc).__name__}: {exc}") from exc
    finally:
        versions.close()
        tier.close()
    _, after = store.inventory(args, None)
    removed = (
        before.get(namespace, store.Count()).entries - after.get(namespace, store.Count()).entries
    )
    others = sum(count.entries for name, count in after.items() if name != namespace)
    print(
        f"{where}: cleared namespace {namespace!r}: {removed} entries removed;"
        f" {others} entries in other namespaces left alone"
    )
    return 0


def _size(size: int | None) -> str:
    if size is None:
        return "-"  # the store cannot tell cheaply (Redis)
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _add_invalidate(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "invalidate",
        help="make every entry that depends on these names stale, in every process",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="dependency names, e.g. doc:42")
    _add_store_arguments(parser, _ONE_NAMESPACE_HELP)
    parser.set_defaults(handler=_invalidate)


def _add_gc(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "gc", help="delete a namespace's expired, stale (invalidated) and garbled entries"
    )
    _add_store_arguments(parser, _ONE_NAMESPACE_HELP)
    parser.set_defaults(handler=_gc)


def _cache_over(args: argparse.Namespace, verb: str) -> Any:
    """A TieredCache with no L1 over the store the arguments name (its versions too)."""
    from llmcache.langchain_adapter import TieredCache

    _, counts = store.inventory(args, None, must_exist=True)
    namespace = _chosen_namespace(args, counts, verb)
    return TieredCache(l1=None, l2=store.open_tier(args), namespace=namespace)


def _invalidate(args: argparse.Namespace) -> int:
    cache = _cache_over(args, "invalidate")
    try:
        cache.invalidate(*args.names)
    finally:
        cache.close()
    where = redact(args.url) if args.url else str(store.cache_directory(args))
    print(f"{where}: invalidated {', '.join(args.names)} in namespace {cache.namespace!r}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    cache = _cache_over(args, "collect")
    try:
        report = cache.gc()
    except LLMCacheError:
        raise
    except Exception as exc:  # a tier may raise its driver's errors: report them, one line
        raise TierError(f"gc failed: {type(exc).__name__}: {exc}") from exc
    finally:
        cache.close()
    where = redact(args.url) if args.url else str(store.cache_directory(args))
    for tier, counts in report.items():
        if "removed" in counts:  # the version store
            print(
                f"{where} ({tier}, namespace {cache.namespace!r}): removed {counts['removed']}"
                f" version records no entry needs; kept {counts['kept']}"
            )
            continue
        print(
            f"{where} ({tier}, namespace {cache.namespace!r}): removed {counts['stale']} stale,"
            f" {counts['expired']} expired, {counts['corrupt']} garbled; kept {counts['kept']}"
        )
    return 0


_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_demo,
    _add_simulate,
    _add_stats,
    _add_namespaces,
    _add_clear,
    _add_invalidate,
    _add_gc,
)

if __name__ == "__main__":
    raise SystemExit(main())
