"""NodeCache through a real LangGraph StateGraph: memory, disk, Redis, other processes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
import redis
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.types import CachePolicy, Send
from pydantic import BaseModel

from llmcache import (
    DiskTier,
    MemoryTier,
    MemoryVersions,
    RedisTier,
    SerializationError,
    depends_on,
)
from llmcache.errors import ConfigurationError
from llmcache.langgraph_cache import NodeCache
from llmcache.node_values import ValueTypes, dump_writes, load_writes
from tests import _graph_worker as worker
from tests.conftest import FakeClock

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402


def one_redis_url(request: pytest.FixtureRequest) -> str:
    """``$LLMCACHE_TEST_REDIS_URL``, else the session's valkey (a parametrised fixture cannot
    be asked for from inside another fixture's parameter)."""
    external = os.environ.get("LLMCACHE_TEST_REDIS_URL")
    if external:
        return external
    return str(request.getfixturevalue("valkey_server").url())


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_runs() -> Iterator[None]:
    worker.RUNS.clear()
    yield
    worker.RUNS.clear()


def _stream(graph: Any, question: str) -> tuple[list[str], str]:
    chunks = list(graph.stream({"question": question}, stream_mode="updates"))
    answer = next(c["write"]["answer"] for c in chunks if "write" in c)
    return worker.cached_nodes(chunks), answer


@pytest.fixture(params=["memory", "disk", "redis"])
def make_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., NodeCache]]:
    """NodeCaches on one store: memory alone, memory over disk, Redis alone."""
    made: list[NodeCache] = []
    memory, versions = MemoryTier(), MemoryVersions()
    url = prefix = ""
    if request.param == "redis":
        url = one_redis_url(request)
        prefix = request.getfixturevalue("key_prefix")

    def make(**kwargs: Any) -> NodeCache:
        if request.param == "memory":
            cache = NodeCache(l1=memory, l2=None, versions=versions, **kwargs)
        elif request.param == "disk":
            cache = NodeCache(l2=DiskTier(tmp_path / "disk"), **kwargs)
        else:
            cache = NodeCache(l1=None, l2=RedisTier(url, prefix=prefix), **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()
    if url:
        purge_prefix(url, prefix)


def test_second_run_is_served_from_the_cache_and_marked_cached(
    make_cache: Callable[..., NodeCache],
) -> None:
    graph = worker.build(make_cache())
    assert _stream(graph, "soup") == ([], "NOTES ON SOUP")
    assert worker.RUNS == ["retrieve", "write"]
    cached, answer = _stream(graph, "soup")
    assert cached == ["retrieve", "write"] and answer == "NOTES ON SOUP"
    assert worker.RUNS == ["retrieve", "write"]  # no node ran again
    # Another input is another key.
    assert _stream(graph, "tea") == ([], "NOTES ON TEA")
    # A fresh cache object on the same store (a restart) serves it too.
    cached, _ = _stream(worker.build(make_cache()), "soup")
    assert cached == ["retrieve", "write"]
    assert worker.RUNS.count("retrieve") == 2


async def test_async_runs_are_served_from_the_cache(make_cache: Callable[..., NodeCache]) -> None:
    graph = worker.build(make_cache())
    first = [c async for c in graph.astream({"question": "q"}, stream_mode="updates")]
    second = [c async for c in graph.astream({"question": "q"}, stream_mode="updates")]
    assert worker.cached_nodes(first) == []
    assert worker.cached_nodes(second) == ["retrieve", "write"]
    assert second[-1]["write"]["messages"][0].content == "NOTES ON Q"
    assert worker.RUNS == ["retrieve", "write"]


def test_a_hit_rebuilds_messages_exactly(make_cache: Callable[..., NodeCache]) -> None:
    graph = worker.build(make_cache())
    first = graph.invoke({"question": "x"})
    second = graph.invoke({"question": "x"})
    # Ids aside (LangGraph's add_messages gives an id-less message a fresh one on
    # every run, whether the node ran or the cache answered).
    assert [m.model_copy(update={"id": None}) for m in second["messages"]] == [
        m.model_copy(update={"id": None}) for m in first["messages"]
    ]
    assert type(second["messages"][0]) is AIMessage and worker.RUNS == ["retrieve", "write"]


def test_an_invalidated_dependency_reruns_exactly_the_nodes_that_used_it(
    make_cache: Callable[..., NodeCache],
) -> None:
    cache = make_cache(dependencies={"retrieve": ["doc:42"], "write": ["style:plain"]})
    graph = worker.build(cache)
    _stream(graph, "q")
    assert _stream(graph, "q")[0] == ["retrieve", "write"]
    cache.invalidate("doc:42")
    # retrieve reruns; its output is unchanged, so write's input (its key) is too: still cached.
    assert _stream(graph, "q")[0] == ["write"]
    assert worker.RUNS == ["retrieve", "write", "retrieve"]
    cache.invalidate("style:plain")
    assert _stream(graph, "q")[0] == ["retrieve"]
    # Another cache object on the same store (another process) sees the same versions.
    assert _stream(worker.build(make_cache(dependencies={})), "q")[0] == ["retrieve", "write"]


def test_depends_on_around_a_run_reaches_every_node_it_cached(
    make_cache: Callable[..., NodeCache],
) -> None:
    cache = make_cache()
    graph = worker.build(cache)
    with depends_on("kb:menus"):
        _stream(graph, "q")
        assert _stream(graph, "q")[0] == ["retrieve", "write"]
    cache.invalidate("kb:other")
    with depends_on("kb:menus"):
        assert _stream(graph, "q")[0] == ["retrieve", "write"]
    cache.invalidate("kb:menus")
    with depends_on("kb:menus"):
        assert _stream(graph, "q")[0] == []
    assert worker.RUNS.count("write") == 2


def test_clear_cache_of_one_node_reruns_that_node_only(
    make_cache: Callable[..., NodeCache],
) -> None:
    graph = worker.build(make_cache())
    _stream(graph, "q")
    graph.clear_cache(nodes=["retrieve"])
    assert _stream(graph, "q")[0] == ["write"]
    graph.clear_cache()
    assert _stream(graph, "q")[0] == []


def test_a_node_ttl_is_honoured(tmp_path: Path, clock: FakeClock) -> None:
    cache = NodeCache(l1=MemoryTier(clock=clock), l2=DiskTier(tmp_path / "d"), clock=clock)
    graph = worker.build(cache, ttl=60)
    _stream(graph, "q")
    clock.advance(59)
    assert _stream(graph, "q")[0] == ["retrieve", "write"]
    clock.advance(2)
    assert _stream(graph, "q")[0] == []
    assert worker.RUNS == ["retrieve", "write"] * 2
    cache.close()


@pytest.mark.redis
def test_a_node_ttl_reaches_redis(redis_url: str, key_prefix: str) -> None:
    cache = NodeCache(l1=None, l2=RedisTier(redis_url, prefix=key_prefix))
    _stream(worker.build(cache, ttl=60), "q")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.scan_iter(match=key_prefix + "langgraph:*")]
        assert len(keys) == 2
        assert all(0 < client.pttl(key) <= 60_000 for key in keys)
    finally:
        client.close()
        cache.close()
        purge_prefix(redis_url, key_prefix)


# -- nothing is unpickled, nothing unregistered is built -------------------------------


class _Detonator:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def _planted(tmp_path: Path, **cache_args: Any) -> tuple[NodeCache, Any, list[str], DiskTier]:
    disk = DiskTier(tmp_path / "disk")
    cache = NodeCache(l1=None, l2=disk, **cache_args)
    graph = worker.build(cache)
    _stream(graph, "q")
    keys = disk.keys(cache.namespace)
    assert len(keys) == 2
    return cache, graph, keys, disk


def test_pickled_and_foreign_values_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    cache, graph, keys, disk = _planted(tmp_path)
    serde = JsonPlusSerializer(pickle_fallback=True)
    kind, data = serde.dumps_typed(_Detonator(str(marker)))
    assert kind == "pickle"  # what LangGraph's own caches would store, and later unpickle
    bombs = [pickle.dumps(_Detonator(str(marker))), kind.encode() + b":" + data, data]
    for bomb in bombs:
        for key in keys:
            disk.set(key, bomb)
        assert _stream(graph, "q")[0] == []  # a miss: both nodes ran again
        assert not marker.exists()
    assert cache.stats().tiers["disk"].corrupt >= 2
    cache.close()


def _envelope(key: str, payload: Any) -> bytes:
    from llmcache.serialization import Record, encode

    return bytes(encode(Record(payload), key=key))


@pytest.mark.parametrize(
    "payload",
    [
        [["draft", {"$t": "model", "n": "os.system", "v": {}}]],
        [["draft", {"$t": "message", "n": "Path", "v": {"content": "x"}}]],
        [["draft", {"$t": "dataclass", "n": "subprocess.Popen", "v": {"args": "true"}}]],
        [["draft", {"$t": "lc", "v": {"lc": 1, "type": "constructor", "id": ["os", "system"]}}]],
        {"not": "a list"},
    ],
)
def test_stored_values_naming_unregistered_classes_are_misses(tmp_path: Path, payload: Any) -> None:
    cache, graph, keys, disk = _planted(tmp_path)
    for key in keys:
        disk.set(key, _envelope(key, payload))
    assert _stream(graph, "q")[0] == []
    assert worker.RUNS == ["retrieve", "write"] * 2
    assert cache.stats().errors >= 1
    cache.close()


def test_with_a_secret_an_unsigned_value_is_a_miss(tmp_path: Path) -> None:
    cache, graph, keys, disk = _planted(tmp_path, secret="s" * 32)
    assert _stream(graph, "q")[0] == ["retrieve", "write"]
    forged = [["draft", "forged"]]
    for key in keys:
        disk.set(key, _envelope(key, forged))
    cached, answer = _stream(graph, "q")
    assert cached == [] and answer == "NOTES ON Q"
    cache.close()


# -- values: registered types, what cannot be stored ----------------------------------


class Plan(BaseModel):
    steps: list[str]
    budget: float


@dataclasses.dataclass
class Step:
    name: str
    plan: Plan
    done: bool = False


def _typed_graph(cache: NodeCache) -> Any:
    def plan(state: dict[str, Any]) -> dict[str, Any]:
        worker.RUNS.append("plan")
        return {"plan": Step("a", Plan(steps=["x", "y"], budget=1.5)), "extra": (1, "t")}

    graph = StateGraph(dict)  # type: ignore[type-var]
    graph.add_node("plan", plan, cache_policy=CachePolicy())
    graph.add_edge(START, "plan")
    graph.add_edge("plan", END)
    return graph.compile(cache=cache)


def test_registered_models_and_dataclasses_come_back_as_themselves(tmp_path: Path) -> None:
    first = _typed_graph(NodeCache(l2=tmp_path / "d", types=[Plan, Step]))
    expected = first.invoke({"q": 1})
    # Another cache object on the same directory: decoded from disk, not from memory.
    second = _typed_graph(NodeCache(l2=tmp_path / "d", types={"plan": Plan, "step": Step}))
    third = _typed_graph(NodeCache(l2=tmp_path / "d", types=[Plan, Step]))
    assert third.invoke({"q": 1}) == expected
    assert type(expected["plan"]) is Step and type(expected["plan"].plan) is Plan
    assert worker.RUNS == ["plan"]
    # Registered under other names, the stored entry is not theirs to rebuild: a miss.
    assert second.invoke({"q": 1}) == expected
    assert worker.RUNS == ["plan", "plan"]


def test_an_unregistered_type_is_not_stored_and_the_node_still_runs(tmp_path: Path) -> None:
    cache = NodeCache(l2=tmp_path / "d")
    graph = _typed_graph(cache)
    assert graph.invoke({"q": 1})["extra"] == (1, "t")
    assert graph.invoke({"q": 1})["plan"].plan.budget == 1.5
    assert worker.RUNS == ["plan", "plan"]
    assert cache.stats().errors == 2  # counted, never raised into the graph
    cache.close()


def test_the_codec_round_trips_what_it_admits() -> None:
    types = ValueTypes([Plan])
    writes = [
        (
            "messages",
            [HumanMessage("hi", id="1"), SystemMessage("s"), ToolMessage("t", tool_call_id="c")],
        ),
        ("tasks", Send("node", {"x": (1, 2)})),
        ("odd", {1: "int key", "$t": "a user's own key", "n": None}),
        ("plan", Plan(steps=[], budget=0.5)),
        ("plain", {"a": [1, 2.5, True, None, "s"]}),
    ]
    dumped = dump_writes(writes, types)
    again = load_writes(json.loads(json.dumps(dumped)), types)
    assert again == writes
    assert type(again[2][1]) is dict and type(again[1][1]) is Send


@pytest.mark.parametrize(
    "value",
    [math.nan, {1, 2}, object(), b"bytes", AIMessage("x", additional_kwargs={"o": object()})],
)
def test_the_codec_refuses_what_it_cannot_store_exactly(value: Any) -> None:
    with pytest.raises(SerializationError):
        dump_writes([("c", value)], ValueTypes())


def test_only_models_and_dataclasses_can_be_registered() -> None:
    with pytest.raises(ConfigurationError):
        ValueTypes([dict])
    with pytest.raises(ConfigurationError):
        ValueTypes([AIMessage])
    with pytest.raises(ConfigurationError):
        NodeCache(l2=None, dependencies="doc:1")  # type: ignore[arg-type]


# -- other processes -------------------------------------------------------------------


def _child(l2: str, prefix: str, question: str, log: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from tests._graph_worker import main; main(*sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, l2, prefix, question, str(log)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_another_process_reads_node_results_through_disk(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    first = _child(str(tmp_path / "shared"), "", "stew", log)
    second = _child(str(tmp_path / "shared"), "", "stew", log)
    assert first == {"cached": [], "answer": "NOTES ON STEW"}
    assert second == {"cached": ["retrieve", "write"], "answer": "NOTES ON STEW"}
    assert log.read_text().split() == ["retrieve", "write"]
    # And this process, on the same directory, too.
    cached, _ = _stream(worker.build(NodeCache(l2=tmp_path / "shared")), "stew")
    assert cached == ["retrieve", "write"]


@pytest.mark.slow
@pytest.mark.redis
def test_another_process_reads_node_results_through_redis(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    log = tmp_path / "runs.log"
    try:
        first = _child(redis_url, key_prefix, "stew", log)
        second = _child(redis_url, key_prefix, "stew", log)
        assert first["cached"] == [] and second["cached"] == ["retrieve", "write"]
        assert log.read_text().split() == ["retrieve", "write"]
        # Invalidation from this process reaches the next one.
        cache = NodeCache(l1=None, l2=RedisTier(redis_url, prefix=key_prefix))
        worker.build(cache).clear_cache(nodes=["write"])
        cache.close()
        assert _child(redis_url, key_prefix, "stew", log)["cached"] == ["retrieve"]
    finally:
        purge_prefix(redis_url, key_prefix)


class _Fanout(TypedDict, total=False):
    q: str
    a: str
    b: str
    c: str


@pytest.mark.redis
def test_a_step_of_cached_nodes_is_one_redis_round_trip(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three nodes in one step: one MGET for the step, not a GET per node."""

    def node(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def run(state: dict[str, Any]) -> dict[str, Any]:
            worker.RUNS.append(name)
            return {name: state["q"] + name}

        run.__name__ = run.__qualname__ = f"node_{name}"
        return run

    graph = StateGraph(_Fanout)
    for name in "abc":
        graph.add_node(name, node(name), cache_policy=CachePolicy())
        graph.add_edge(START, name)
        graph.add_edge(name, END)
    cache = NodeCache(l1=None, l2=RedisTier(redis_url, prefix=key_prefix))
    compiled = graph.compile(cache=cache)
    sent = {"count": 0}
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(conn: Any, command: Any, check_health: bool = True) -> None:
        sent["count"] += 1
        original(conn, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    try:
        compiled.invoke({"q": "1"})
        trips = []
        for _ in range(5):  # the first reads also fetch the dependency versions, then kept
            sent["count"] = 0
            assert compiled.invoke({"q": "1"}) == {"q": "1", "a": "1a", "b": "1b", "c": "1c"}
            trips.append(sent["count"])
        assert sorted(worker.RUNS) == ["a", "b", "c"]
        assert 1 in trips and max(trips) <= 4, trips
    finally:
        monkeypatch.undo()
        cache.close()
        purge_prefix(redis_url, key_prefix)
