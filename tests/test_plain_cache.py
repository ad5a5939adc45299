"""llmcache.Cache, the plain-Python face: memoize and get/set/delete on memory, disk, Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from llmcache import Cache, DiskTier, MemoryTier, MemoryVersions, RedisTier, depends_on
from llmcache.errors import ConfigurationError
from tests import _memo_worker
from tests.conftest import FakeClock

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import purge_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _one_redis_url(request: pytest.FixtureRequest) -> str:
    external = os.environ.get("LLMCACHE_TEST_REDIS_URL")
    if external:
        return external
    return str(request.getfixturevalue("valkey_server").url())


@pytest.fixture(params=["memory", "disk", pytest.param("redis", marks=pytest.mark.redis)])
def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Cache]]:
    """Caches on one store: each new one is another process's view of the same entries."""
    made: list[Cache] = []
    memory, versions = MemoryTier(), MemoryVersions()
    url = prefix = ""
    if request.param == "redis":
        url, prefix = _one_redis_url(request), request.getfixturevalue("key_prefix")

    def make(**kwargs: Any) -> Cache:
        if request.param == "memory":
            cache = Cache(l1=memory, l2=None, versions=versions, **kwargs)
        elif request.param == "disk":
            cache = Cache(l2=DiskTier(tmp_path / "disk"), **kwargs)
        else:
            cache = Cache(l2=RedisTier(url, prefix=prefix), secret="s" * 32, **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()
    if url:
        purge_prefix(url, prefix)


# -- memoize ---------------------------------------------------------------------------


def test_memoize_runs_once_per_arguments_however_they_are_passed(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache()
    runs: list[tuple[Any, ...]] = []

    @cache.memoize()
    def total(x: int, y: int = 2, *rest: int, scale: float = 1.0, **named: str) -> dict[str, Any]:
        runs.append((x, y, rest, scale, named))
        return {"total": (x + y + sum(rest)) * scale, "named": sorted(named)}

    assert total(1) == {"total": 3.0, "named": []}
    assert total(x=1) == total(1, 2) == total(1, y=2, scale=1.0) == {"total": 3.0, "named": []}
    assert len(runs) == 1  # bound to the signature, defaults applied: one key
    assert total(1, 2, 3) == {"total": 6.0, "named": []}
    assert total(1, 2, 3, tag="a") == {"total": 6.0, "named": ["tag"]}
    assert total(1, scale=1) == {"total": 3, "named": []}  # 1 is not 1.0: its own key
    assert len(runs) == 4
    # Another cache object on the same store (a restart, another process) has them all.
    again = make_cache()
    rerun: list[int] = []

    @again.memoize()
    def total(x: int, y: int = 2, *rest: int, scale: float = 1.0, **named: str) -> dict[str, Any]:
        rerun.append(x)
        return {}

    assert total(1, 2, 3, tag="a") == {"total": 6.0, "named": ["tag"]}
    assert rerun == []


def test_a_hit_is_a_fresh_copy_of_exactly_what_was_returned(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache()
    value = {"text": "é ✓", "big": 2**70, "neg": -0.5, "flag": False, "none": None, "l": [[1]]}

    @cache.memoize
    def produce(name: str) -> dict[str, Any]:
        return json.loads(json.dumps(value))

    first = produce("a")
    first["l"][0].append(2)  # the caller's own object: the cache kept a copy
    second = produce("a")
    assert second == value and type(second["big"]) is int and type(second["neg"]) is float
    second["l"].clear()
    assert produce("a") == value
    assert cache.stats().hits == 2


def test_ttl_of_the_decorator_and_of_the_cache_from_an_injected_clock(
    make_cache: Callable[..., Cache], clock: FakeClock
) -> None:
    cache = make_cache(clock=clock, ttl=100)
    runs: list[str] = []

    @cache.memoize(ttl=10)
    def short(q: str) -> str:
        runs.append(q)
        return q

    @cache.memoize()
    def long(q: str) -> str:
        runs.append(q.upper())
        return q

    short("a"), long("a")
    clock.advance(9.5)
    short("a"), long("a")
    assert runs == ["a", "A"]
    clock.advance(1)  # past 10 s, not past 100 s
    short("a"), long("a")
    assert runs == ["a", "A", "a"]
    clock.advance(100)
    long("a")
    assert runs == ["a", "A", "a", "A"]


def test_depends_on_names_a_function_and_the_enclosing_block(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache()
    runs: list[str] = []

    @cache.memoize(depends_on=["kb:menus"])
    def menu(day: str) -> str:
        runs.append(day)
        return f"menu of {day}"

    @cache.memoize(depends_on=lambda user, question: [f"user:{user}"])
    def personal(user: int, question: str) -> str:
        runs.append(f"{user}:{question}")
        return f"{question} for {user}"

    with depends_on("global"):
        menu("mon"), personal(1, "q"), personal(2, "q")
    assert len(runs) == 3
    cache.invalidate("user:1")
    menu("mon"), personal(1, "q"), personal(2, "q")
    assert runs[3:] == ["1:q"]
    cache.invalidate("kb:menus")
    menu("mon"), personal(2, "q")
    assert runs[4:] == ["mon"]
    # The block's name: only entries written inside it (the two recomputed
    # above were written outside it).
    cache.invalidate("global")
    menu("mon"), personal(1, "q"), personal(2, "q")
    assert runs[5:] == ["2:q"]


async def test_async_functions_and_the_async_key_value_calls(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache()
    runs: list[int] = []

    @cache.memoize(depends_on=["doc"])
    async def square(n: int) -> list[int]:
        runs.append(n)
        return [n * n]

    assert await square(3) == [9] and await square(n=3) == [9]
    assert runs == [3]
    await cache.ainvalidate("doc")
    assert await square(3) == [9] and runs == [3, 3]
    await cache.aset("k", {"a": [1, 2]}, depends_on=["doc"])
    assert await cache.aget("k") == {"a": [1, 2]}
    assert cache.get("k") == {"a": [1, 2]}  # one entry for both paths
    await cache.adelete("k")
    assert await cache.aget("k", "gone") == "gone"
    await cache.aclear()
    assert await square(3) == [9] and runs == [3, 3, 3]


def test_version_and_key_override(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    runs: list[str] = []

    def answer(question: str) -> str:
        runs.append(question)
        return question[::-1]

    first, same, bumped = (
        cache.memoize()(answer),
        cache.memoize(version="")(answer),
        cache.memoize(version="2")(answer),
    )
    first("ab"), same("ab"), bumped("ab")
    assert runs == ["ab", "ab"]

    class Assistant:
        """``self`` is not JSON: ``key=`` says what a call is keyed by."""

        def __init__(self, model: str) -> None:
            self.model = model

        @cache.memoize(key=lambda self, question: f"{self.model}|{question}")
        def ask(self, question: str) -> str:
            runs.append(f"{self.model}:{question}")
            return f"{self.model} says {question}"

    assert Assistant("m1").ask("hi") == Assistant("m1").ask("hi") == "m1 says hi"
    assert Assistant("m2").ask("hi") == "m2 says hi"
    assert runs[2:] == ["m1:hi", "m2:hi"]


def test_exceptions_are_not_cached_and_propagate_unchanged(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache()
    errors = [KeyError("first"), ValueError("second")]
    runs: list[int] = []

    @cache.memoize()
    def flaky(n: int) -> int:
        runs.append(n)
        if errors:
            raise errors.pop(0)
        return n

    first, second = errors
    with pytest.raises(KeyError) as caught_first:
        flaky(1)
    with pytest.raises(ValueError, match="second") as caught_second:
        flaky(1)
    assert caught_first.value is first and caught_second.value is second  # the very objects
    assert flaky(1) == 1 and flaky(1) == 1
    assert runs == [1, 1, 1]


# -- get / set / delete ------------------------------------------------------------------


def test_get_set_delete_clear(make_cache: Callable[..., Cache], clock: FakeClock) -> None:
    cache = make_cache(clock=clock)
    assert cache.get("answer:1") is None and cache.get("answer:1", 0) == 0
    cache.set("answer:1", ["x", {"y": None}])
    cache.set("answer:2", None)  # None is a value, told apart from a miss by default=
    cache.set("short", 1, ttl=5)
    other = make_cache()
    assert other.get("answer:1") == ["x", {"y": None}]
    assert other.get("answer:2", "missing") is None
    clock.advance(6)
    assert cache.get("short") is None
    cache.delete("answer:1")
    cache.delete("never-set")
    assert cache.get("answer:1") is None
    # Gone from the shared tier: a process that had not read it yet misses. (One
    # that had keeps its memory copy: invalidate reaches every process, delete not.)
    assert make_cache().get("answer:1") is None
    neighbour = make_cache(namespace="neighbour")
    neighbour.set("answer:2", "theirs")
    cache.clear()
    assert cache.get("answer:2", "missing") == "missing"
    assert neighbour.get("answer:2") == "theirs"


def test_an_answer_computed_across_an_invalidation_is_stored_stale(
    make_cache: Callable[..., Cache],
) -> None:
    """Seed 003's SmartCache: get, compute, set; an invalidation in between wins."""
    cache = make_cache()
    assert cache.get("result:q", depends_on=["user:7"]) is None  # the miss takes the versions
    cache.invalidate("user:7")  # the user's data changed while we computed
    cache.set("result:q", "computed from old data", depends_on=["user:7"])
    assert cache.get("result:q", depends_on=["user:7"]) is None
    cache.set("result:q", "computed from new data", depends_on=["user:7"])
    assert cache.get("result:q") == "computed from new data"


# -- bad input ---------------------------------------------------------------------------


def test_bad_input_is_a_clear_configuration_error(tmp_path: Path) -> None:
    cache = Cache(l2=DiskTier(tmp_path))
    runs: list[Any] = []

    @cache.memoize()
    def echo(value: Any) -> Any:
        runs.append(value)
        return value

    for argument, says in [
        ((1, 2), "tuple is not JSON"),
        ({1: "a"}, "JSON keys are str"),
        (float("nan"), "JSON cannot carry"),
        (object(), "not a JSON value"),
        ({"deep": b"bytes"}, "bytes"),
    ]:
        with pytest.raises(ConfigurationError, match=says):
            echo(argument)
    assert runs == []  # refused before the call

    @cache.memoize()
    def returns(kind: str) -> Any:
        runs.append(kind)
        return {"set": {1}, "tuple": (1,)}[kind]

    with pytest.raises(ConfigurationError, match=r"the result of .*returns"):
        returns("set")
    with pytest.raises(ConfigurationError, match="tuple"):
        returns("tuple")
    with pytest.raises(ConfigurationError, match="tuple"):
        returns("tuple")
    assert runs == ["set", "tuple", "tuple"]  # never stored

    for key in (1, b"k", None, ("a",)):
        for call in (cache.get, cache.delete, lambda k: cache.set(k, 1)):
            with pytest.raises(ConfigurationError, match="key is a string"):
                call(key)
    with pytest.raises(ConfigurationError, match="not a JSON value"):
        cache.set("k", {"when": object()})
    for ttl in (0, -1, float("inf"), "10", True):
        with pytest.raises(ConfigurationError, match="ttl"):
            cache.set("k", 1, ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="ttl"):
            cache.memoize(ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not one string"):
        cache.memoize(depends_on="doc:1")
    with pytest.raises(ConfigurationError, match="not one string"):
        cache.set("k", 1, depends_on="doc:1")
    assert cache.get("k") is None


def test_what_can_be_known_when_decorating_is_refused_then(tmp_path: Path) -> None:
    cache = Cache(l2=DiskTier(tmp_path))

    class Thing:
        pass

    def with_default(when: Any = Thing) -> int:
        return 1

    def generator() -> Iterator[int]:
        yield 1

    for function, says in [
        (with_default, "default of 'when'"),
        (generator, "generator"),
        (lambda x: x, "not a lambda"),
        (Thing, "decorates a function"),
        (max, "signature"),
    ]:
        with pytest.raises(ConfigurationError, match=says):
            cache.memoize(function)
    largest = cache.memoize(key=lambda *args: json.dumps(args))(max)  # no signature needed
    assert largest(1, 3) == 3 and largest(1, 3) == 3
    with pytest.raises(ConfigurationError, match="version"):
        cache.memoize(version=2)(with_default)  # type: ignore[arg-type]

    @cache.memoize(key=lambda n: n)  # type: ignore[arg-type, return-value]
    def keyed(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="returned int, not str"):
        keyed(1)

    @cache.memoize(depends_on=lambda n: f"doc:{n}")
    def one_name(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="not one string"):
        one_name(1)


# -- other processes, other faces ----------------------------------------------------------


_WORKER = "from tests._memo_worker import main; main()"


def _worker(directory: Path, action: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tests._memo_worker import main; main()",
            str(directory),
            action,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_another_process_shares_results_and_invalidates_them_on_disk(tmp_path: Path) -> None:
    cache, answer, runs = _memo_worker.build(tmp_path)
    assert answer("q") == {"question": "q", "answer": 1} and runs == ["q"]
    assert _worker(tmp_path, "call") == {"value": {"question": "q", "answer": 1}, "runs": 0}
    assert _worker(tmp_path, "invalidate") == {"invalidated": True}
    assert answer("q") == {"question": "q", "answer": 1}
    assert runs == ["q", "q"]  # this process's memory copy was stale too
    assert _worker(tmp_path, "call")["runs"] == 0
    cache.close()


@pytest.mark.slow
@pytest.mark.redis
def test_identical_calls_in_three_processes_run_once_through_redis(
    request: pytest.FixtureRequest, key_prefix: str
) -> None:
    url = _one_redis_url(request)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, "stampede", url, key_prefix, "4"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:  # all at once: every process is in flight together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120) for child in children]
        coalesced = 0
        for child, (out, err) in zip(children, outputs):
            assert child.returncode == 0, err
            reported = json.loads(out)
            assert reported["results"] == ["SAME"] * 4
            coalesced += reported["coalesced"]
        client = redis.Redis.from_url(url)
        assert int(client.get(f"{key_prefix}runs") or 0) == 1  # 12 calls, one run
        client.close()
        # All waited for the leader (none came late and simply read the stored value):
        # 3 tasks in its process, and in each other process its leader (on the
        # Redis lease) and that leader's 3 tasks.
        assert coalesced == 11
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        purge_prefix(url, key_prefix)


def test_the_plain_face_does_not_import_langchain(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "for name in ('langchain_core', 'langchain', 'langgraph', 'langchain_openai'):\n"
        "    sys.modules[name] = None  # any import of them fails\n"
        "import asyncio, llmcache\n"
        f"cache = llmcache.Cache(l2={str(tmp_path)!r})\n"
        "@cache.memoize(depends_on=['d'])\n"
        "def double(n): return [n, n]\n"
        "@cache.memoize\n"
        "async def triple(n): return n * 3\n"
        "assert double(2) == double(2) == [2, 2] and asyncio.run(triple(2)) == 6\n"
        "cache.set('k', {'v': 1}); assert cache.get('k') == {'v': 1}\n"
        "cache.invalidate('d'); print(cache.stats().hits)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'langgraph'))"
        " and sys.modules[m] is not None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["2", "[]"]


def test_tiered_cache_memoizes_beside_its_llm_entries(tmp_path: Path) -> None:
    from llmcache import TieredCache

    cache = TieredCache(l2=DiskTier(tmp_path))
    runs: list[str] = []

    @cache.memoize(depends_on=["doc"])
    def summary(text: str) -> str:
        runs.append(text)
        return text[:3]

    assert summary("abcdef") == summary(text="abcdef") == "abc" and runs == ["abcdef"]
    assert cache.lookup("abcdef", "llm") is None  # an LLM key never meets a memoized one
    cache.invalidate("doc")
    assert summary("abcdef") == "abc" and runs == ["abcdef", "abcdef"]
    assert (
        repr(cache)
        == "TieredCache(namespace='default', memory=MemoryTier, disk=DiskTier, ttl=None)"
    )
    cache.close()


def test_the_quick_binding_agrees_with_inspect(tmp_path: Path) -> None:
    """Plain signatures are bound without inspect on every call: the same keys, same errors."""
    from llmcache.memoize import Memo

    def plain(a: int, b: int = 2, c: Any = None) -> int:
        return a

    cache = Cache(l2=DiskTier(tmp_path))
    memo = Memo(cache.engine, plain, ttl=None, depends_on=(), key=None, version="")
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((1, 2), {}),
        ((), {"a": 1}),
        ((1,), {"b": 2, "c": None}),
        ((1,), {"c": [1, {"x": 2}]}),
        ((), {"c": "z", "a": 3}),
    ]
    bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1, 2, 3, 4), {}),
        ((), {}),
        ((1,), {"a": 1}),
        ((1,), {"d": 1}),
        ((), {"b": 1}),
    ]
    quick = [memo._arguments(args, kwargs) for args, kwargs in calls]
    assert memo._plain is not None
    memo._plain = None  # inspect's way from here on
    assert [memo._arguments(args, kwargs) for args, kwargs in calls] == quick
    assert quick[0] == quick[1] == quick[2] == quick[3] and len(set(quick)) == 3
    for args, kwargs in bad:
        with pytest.raises(TypeError):
            memo._arguments(args, kwargs)
    memo = Memo(cache.engine, plain, ttl=None, depends_on=(), key=None, version="")
    for args, kwargs in bad:
        with pytest.raises(TypeError):
            memo._arguments(args, kwargs)
    cache.close()


@pytest.mark.parametrize("l1", [True, False], ids=["memory", "disk-only"])
def test_a_stored_payload_that_holds_no_value_is_a_counted_miss(tmp_path: Path, l1: bool) -> None:
    """Written under a Cache key by something else (another face, an older format)."""
    from llmcache.keys import part_key

    cache = Cache(l2=DiskTier(tmp_path)) if l1 else Cache(l1=None, l2=DiskTier(tmp_path))
    engine = cache.engine
    engine.run(engine.store_flow(part_key(cache.namespace, "plain", "k"), ["no"], frozenset()))
    assert cache.get("k", "default") == "default"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.errors) == (0, 1, 1)
    cache.set("k", "fixed")  # and the next write repairs it
    assert cache.get("k") == "fixed"
    cache.close()
