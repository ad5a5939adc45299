"""One contract for every vector index: the embedded SQLite one (file and memory) and Redis."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmcache.semantic.index import Entry, SQLiteIndex, VectorIndex
from tests.semantic_servers import SEARCH_SERVERS, _redis8_search, _valkey_search, search_url  # noqa: F401

DIMS = 16


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture(
    params=[
        "sqlite-file",
        "sqlite-memory",
        *(pytest.param(f"redis-{s}", marks=pytest.mark.redis) for s in SEARCH_SERVERS),
    ]
)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    made: VectorIndex
    if request.param == "sqlite-file":
        made = SQLiteIndex(tmp_path / "semantic.sqlite3")
    elif request.param == "sqlite-memory":
        made = SQLiteIndex(None)
    else:
        from llmcache.semantic.redis_index import RedisIndex

        url = search_url(request, request.param.removeprefix("redis-"))
        made = RedisIndex(url, prefix=f"llmcache-test-{uuid.uuid4().hex[:8]}")
    yield made
    for namespace in ("ns", "other"):
        made.clear(namespace)
    made.close()


def entry(scope: str, text: str, seed: int, namespace: str = "ns") -> Entry:
    return Entry(namespace, scope, text, f"{namespace}:{text}", unit(seed))


def test_search_ranks_by_similarity_within_k(index: VectorIndex) -> None:
    index.add([entry("s1", f"q{i}", i) for i in range(10)])
    found = index.search("ns", "s1", unit(3), 3, -1.0)
    assert len(found) == 3
    assert found[0].text == "q3" and found[0].target == "ns:q3"
    assert found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [m.similarity for m in found] == sorted((m.similarity for m in found), reverse=True)


def test_floor_drops_weak_matches(index: VectorIndex) -> None:
    index.add([entry("s1", "q1", 1), entry("s1", "q2", 2)])
    found = index.search("ns", "s1", unit(1), 5, 0.99)
    assert [m.text for m in found] == ["q1"]


def test_scopes_never_compete(index: VectorIndex) -> None:
    index.add([entry("s1", "one", 1), entry("s2", "two", 1)])
    assert [m.text for m in index.search("ns", "s1", unit(1), 5, -1.0)] == ["one"]
    assert [m.text for m in index.search("ns", "s2", unit(1), 5, -1.0)] == ["two"]
    assert index.search("ns", "s3", unit(1), 5, -1.0) == []


def test_remove_and_clear_only_touch_their_own(index: VectorIndex) -> None:
    index.add([entry("s1", "a", 1), entry("s1", "b", 2), entry("s1", "c", 3, namespace="other")])
    assert index.search("ns", "s1", unit(1), 5, 0.99)  # cached copies refresh after a remove
    index.remove("ns", "ns:a")
    assert [m.text for m in index.search("ns", "s1", unit(1), 5, -1.0)] == ["b"]
    index.clear("ns")
    assert index.search("ns", "s1", unit(2), 5, -1.0) == []
    assert index.count("ns") == 0
    assert [m.text for m in index.search("other", "s1", unit(3), 5, -1.0)] == ["c"]
    index.add([entry("s1", "d", 4)])  # usable again after a clear
    assert [m.text for m in index.search("ns", "s1", unit(4), 5, 0.99)] == ["d"]


def test_adding_a_target_twice_keeps_one_row(index: VectorIndex) -> None:
    index.add([entry("s1", "a", 1)])
    index.add([entry("s1", "a", 1)])
    assert len(index.search("ns", "s1", unit(1), 5, -1.0)) == 1
    assert index.count("ns") == 1


def _insert(path: str, worker: int, count: int) -> None:
    index = SQLiteIndex(path)
    for i in range(count):
        # One row per call: the worst case for contention between processes.
        index.add([Entry("ns", "shared", f"w{worker}-{i}", f"ns:w{worker}-{i}", unit(i))])
    index.close()


@pytest.mark.slow
def test_processes_share_the_embedded_index(tmp_path: Path) -> None:
    path = str(tmp_path / "semantic.sqlite3")
    reader = SQLiteIndex(path)
    reader.add([entry("shared", "before", 1)])
    assert len(reader.search("ns", "shared", unit(1), 10, -1.0)) == 1  # a cached copy exists
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_insert, args=(path, w, 150)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert reader.count("ns") == 1 + 4 * 150
    # This process's cached copy of the scope picks up every other process's rows.
    found = reader.search("ns", "shared", unit(7), 1000, -1.0)
    assert len(found) == 601
    assert {m.text for m in found} >= {f"w{w}-{i}" for w in range(4) for i in range(150)}
    reader.close()


@pytest.mark.parametrize(
    "store", ["sqlite-file", *(pytest.param(s, marks=pytest.mark.redis) for s in SEARCH_SERVERS)]
)
def test_a_new_index_object_finds_what_another_added(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # As a new process does: it has written nothing yet, so it must learn the
    # vector size from the store (FT.INFO on Redis, whose shape redis-py 8 changed).
    def open_index() -> VectorIndex:
        if store == "sqlite-file":
            return SQLiteIndex(tmp_path / "semantic.sqlite3")
        from llmcache.semantic.redis_index import RedisIndex

        return RedisIndex(search_url(request, store), prefix=prefix)

    prefix = f"llmcache-test-{uuid.uuid4().hex[:8]}"
    writer = open_index()
    writer.add([entry("s1", "q1", 1), entry("s1", "q2", 2)])
    reader = open_index()
    try:
        found = reader.search("ns", "s1", unit(2), 1, -1.0)
        assert [m.text for m in found] == ["q2"]
    finally:
        writer.clear("ns")
        writer.close()
        reader.close()


def test_growing_scope_searches_like_a_brute_force(index: VectorIndex) -> None:
    # Rows arrive one at a time between searches: the scope's copy grows past its
    # capacity several times and must always rank exactly like a full scan.
    vectors = []
    for i in range(150):
        index.add([entry("s1", f"q{i}", 1000 + i)])
        vectors.append(unit(1000 + i))
        if i % 7 == 0 or i == 149:
            query = unit(i)
            expected = np.argsort(-(np.stack(vectors) @ query), kind="stable")[:4]
            found = index.search("ns", "s1", query, 4, -1.0)
            assert [m.text for m in found] == [f"q{j}" for j in expected]


def _statements(index: SQLiteIndex) -> list[str]:
    seen: list[str] = []
    index._db().set_trace_callback(seen.append)
    return seen


def test_an_unchanged_index_is_searched_after_one_cheap_check(tmp_path: Path) -> None:
    index = SQLiteIndex(tmp_path / "semantic.sqlite3")
    index.add([entry("s1", "a", 1), entry("s1", "b", 2)])
    index.search("ns", "s1", unit(1), 2, -1.0)
    seen = _statements(index)
    for _ in range(3):
        assert index.search("ns", "s1", unit(1), 2, -1.0)[0].text == "a"
    assert seen == ["PRAGMA data_version"] * 3
    index.add([entry("s1", "c", 3)])  # this connection's own commit is noticed too
    seen.clear()
    assert index.search("ns", "s1", unit(3), 1, -1.0)[0].text == "c"
    assert len(seen) == 3
    index.close()


def test_another_connection_s_changes_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "semantic.sqlite3"
    reader, writer = SQLiteIndex(path), SQLiteIndex(path)
    reader.add([entry("s1", "a", 1), entry("s1", "b", 2)])
    assert len(reader.search("ns", "s1", unit(1), 5, -1.0)) == 2  # a cached copy exists
    writer.add([entry("s1", "c", 3)])
    assert [m.text for m in reader.search("ns", "s1", unit(3), 1, -1.0)] == ["c"]
    writer.remove("ns", "ns:a")
    assert {m.text for m in reader.search("ns", "s1", unit(1), 5, -1.0)} == {"b", "c"}
    writer.clear("ns")
    assert reader.search("ns", "s1", unit(2), 5, -1.0) == []
    reader.close()
    writer.close()


def _change(path: str, operation: str) -> None:
    index = SQLiteIndex(path)
    if operation == "add":
        index.add([entry("s1", "c", 3)])
    elif operation == "remove":
        index.remove("ns", "ns:a")
    else:
        index.clear("ns")
    index.close()


@pytest.mark.slow
def test_another_process_s_add_remove_and_clear_are_seen(tmp_path: Path) -> None:
    path = str(tmp_path / "semantic.sqlite3")
    reader = SQLiteIndex(path)
    reader.add([entry("s1", "a", 1), entry("s1", "b", 2)])
    assert len(reader.search("ns", "s1", unit(1), 5, -1.0)) == 2  # a cached copy exists
    context = multiprocessing.get_context("spawn")

    def run(operation: str) -> None:
        process = context.Process(target=_change, args=(path, operation))
        process.start()
        process.join(120)
        assert process.exitcode == 0

    run("add")
    assert [m.text for m in reader.search("ns", "s1", unit(3), 1, -1.0)] == ["c"]
    run("remove")
    assert {m.text for m in reader.search("ns", "s1", unit(1), 5, -1.0)} == {"b", "c"}
    run("clear")
    assert reader.search("ns", "s1", unit(2), 5, -1.0) == []
    reader.close()
