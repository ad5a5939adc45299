"""Whatever bytes a tier hands back, a lookup is a hit or a counted miss, never an exception.

Issue 11, points 1 and 2. Hostile bytes are written straight into each tier's
store (memory, disk, Redis on both servers, Redis Cluster) under the key a
lookup reads, then read through the public ``TieredCache.lookup`` and
``alookup``: truncations of valid values at every offset, bit flips at every
byte, every flag byte, nesting 10,000 deep, huge declared lengths and zip
bombs, invalid UTF-8, old-format values, random bytes and randomly mutated
payloads under a valid checksum (hypothesis). Every rejection is a miss,
counted as corrupt, in bounded CPU time (``BOUND_S``, measured with the
thread's CPU clock so that a loaded machine does not fail it). Without a
secret, a flipped bit or a value swapped between keys is a miss (both were
served before the checksum), and ``ChatOpenAI`` over a corrupted value still
returns the model's answer.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_openai import ChatOpenAI

from llmcache import (
    ConfigurationError,
    DiskTier,
    MemoryTier,
    SerializationError,
    TieredCache,
    serialization,
)
from llmcache.backends.redis import RedisTier
from llmcache.generations import dump_generations
from llmcache.keys import cache_key
from llmcache.serialization import (
    MAX_DECOMPRESSED_BYTES,
    MAX_DEPTH,
    Signer,
    decode,
)
from llmcache.simulator import Simulator, SimulatorConfig
from llmcache.tiers import Tier

pytest_plugins = ["tests.redis_servers"]
from tests.redis_servers import RedisClusterServers, purge_prefix  # noqa: E402

NAMESPACE = "fuzz"
PROMPT = '[{"lc": 1, "type": "constructor", "id": ["x"], "kwargs": {"content": "bibimbap?"}}]'
LLM = "gpt-4o-mini temperature=0"
KEY = cache_key(NAMESPACE, PROMPT, LLM)
#: CPU seconds one lookup may spend on one hostile value (the thread's own clock).
BOUND_S = 0.05
SECRET = "a secret of at least sixteen bytes"


class _CPU:
    """The thread's CPU seconds over a block, with the garbage collector paused.

    A full collection late in a long test run walks the whole process's heap
    (150-200 ms measured in CI) and would be charged to whichever lookup it
    interrupted; the bound is about the lookup's own work on a hostile value.
    """

    def __init__(self) -> None:
        self.spent = 0.0

    def __enter__(self) -> _CPU:
        self._collecting = gc.isenabled()
        gc.disable()
        self._start = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = time.thread_time() - self._start
        if self._collecting:
            gc.enable()


_WORDS = ["rice", "beef", "egg", "spinach", "carrot", "gochujang", "sesame", "bean", "sprout"]
ANSWERS: dict[str, list[Generation]] = {
    "chat": [
        ChatGeneration(
            message=AIMessage(
                "Dolsot bibimbap, one serving: 82 g carbs, 21 g protein, 16 g fat.",
                usage_metadata={"input_tokens": 21, "output_tokens": 17, "total_tokens": 38},
                response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop"},
                id="chatcmpl-1",
            ),
            generation_info={"finish_reason": "stop", "logprobs": None},
        )
    ],
    "tools": [
        ChatGeneration(
            message=AIMessage(
                "",
                tool_calls=[
                    {"name": "nutrients", "args": {"dish": "bibimbap", "g": [400, 1]}, "id": "c1"},
                    {"name": "sodium", "args": {"dish": "kimchi"}, "id": "c2"},
                ],
                usage_metadata={"input_tokens": 30, "output_tokens": 12, "total_tokens": 42},
            )
        )
    ],
    # Past the 4 KB threshold: stored compressed.
    "compressed": [
        ChatGeneration(message=AIMessage(" ".join(random.Random(11).choices(_WORDS, k=700))))
    ],
}


def seal(body: bytes, *, flags: int = 0, version: int = 2, key: str = KEY) -> bytes:
    """An unsigned value with a valid checksum, built here from the documented layout."""
    header = b"LLMC" + bytes((version, flags))
    check = zlib.crc32(body, zlib.crc32(key.encode(), zlib.crc32(header)))
    return header + check.to_bytes(4, "big") + body


def _answer_body(**extra: str) -> bytes:
    """A valid envelope body for the chat answer, with some raw JSON fields spliced in."""
    payload = json.dumps(dump_generations(ANSWERS["chat"]), separators=(",", ":"))
    fields = "".join(f',"{name}":{value}' for name, value in extra.items())
    return f'{{"p":{payload}{fields}}}'.encode()


@cache
def _bomb() -> bytes:
    """A zlib stream of 7 KB that inflates past MAX_DECOMPRESSED_BYTES."""
    return zlib.compress(b'{"p":"' + b"a" * (MAX_DECOMPRESSED_BYTES + 10) + b'"}', 9)


def hostile_values(valid: dict[str, bytes], *, every_bit: bool) -> Iterator[tuple[str, bytes]]:
    """Values every lookup must reject: a miss, counted as corrupt.

    Every truncation and every byte flipped; with ``every_bit``, every bit of
    every byte of the small chat value (else one bit a byte, the bit varying).
    """
    for name, value in valid.items():
        for end in range(len(value)):
            yield f"{name} truncated at {end}", value[:end]
        for offset in range(len(value)):
            bits = range(8) if every_bit and name == "chat" else (offset % 8,)
            for bit in bits:
                flipped = bytearray(value)
                flipped[offset] ^= 1 << bit
                yield f"{name} bit {bit} of byte {offset} flipped", bytes(flipped)
        for flag in range(256):
            if flag != value[5]:  # the flag byte changed, the checksum left as it was
                yield f"{name} flag byte {flag:#04x}", value[:5] + bytes((flag,)) + value[6:]
    deep = b'{"p":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    yield "nesting 10k", seal(deep)
    yield "nesting 10k, stdlib parser", seal(deep, flags=0x04)
    yield "nesting 10k, compressed", seal(zlib.compress(deep), flags=0x01)
    yield "nesting 10k, old format", b"LLMC\x01\x00" + deep
    yield "nesting 10k, bare", deep
    yield "nesting 10k of objects", seal(b'{"p":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001)
    over = MAX_DEPTH + 1
    yield "nesting past MAX_DEPTH", seal(b'{"p":' + b"[" * over + b"]" * over + b"}")
    yield "signed flag, nothing after", b"LLMC\x02\x02"
    yield "signed flag, old format, nothing after", b"LLMC\x01\x02"
    yield "key id of 255 declared, none there", b"LLMC\x02\x02\xff"
    yield "key id of 255 declared, 10 there", b"LLMC\x02\x02\xff" + b"k" * 10
    yield "zip bomb past the size limit", seal(_bomb(), flags=0x01)
    yield (
        "zip bomb past the ratio",
        seal(zlib.compress(b'{"p":"' + b"a" * (8 << 20) + b'"}'), flags=1),
    )
    yield "compressed, trailing bytes", seal(zlib.compress(_answer_body()) + b"junk", flags=0x01)
    yield "number of 100k digits", seal(b'{"p":1' + b"1" * 100_000 + b"}")
    yield "number of 100k digits, stdlib", seal(b'{"p":1' + b"1" * 100_000 + b"}", flags=0x04)
    yield "expiry 1e999", seal(_answer_body(e="1e999"))
    yield "expiry past a float", seal(_answer_body(e="1" + "0" * 400), flags=0x04)
    yield "expiry a string", seal(_answer_body(e='"soon"'))
    yield "expiry true", seal(_answer_body(e="true"))
    yield "dependencies a list", seal(_answer_body(d="[1]"))
    yield "dependency version a float", seal(_answer_body(d='{"doc:1":1.5}'))
    yield "invalid UTF-8 in the answer", seal(_answer_body().replace(b"82 g", b"\xff\xfe g"))
    yield "invalid UTF-8 only", seal(b'{"p":"\xc3\x28"}')
    yield "UTF-16 JSON", seal('{"p":[1]}'.encode("utf-16"))
    yield "envelope not an object", seal(b"[1,2]")
    yield "envelope without p", seal(b'{"e":null}')
    yield "old format, valid JSON", b"LLMC\x01\x00" + _answer_body()
    yield "future format", seal(_answer_body(), version=3)
    yield "empty", b""
    yield "magic only", b"LLMC"
    yield "a pickle", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."
    yield "JSON with no envelope", _answer_body()


def refused_payloads() -> Iterator[tuple[str, bytes]]:
    """Sound envelopes whose payload the allowlist refuses: a miss, counted as an error."""
    yield "payload not generations", seal(b'{"p":{"type":"ChatGeneration"}}')
    yield "generation type a list", seal(b'{"p":[{"type":[],"text":"x","info":null}]}')
    yield (
        "message type an object",
        seal(
            b'{"p":[{"type":"ChatGeneration","text":"x","info":null,'
            b'"message":{"type":{},"fields":{}}}]}'
        ),
    )
    yield (
        "usage a list",
        seal(
            _answer_body()
            .replace(b'"usage_metadata":{', b'"usage_metadata":[{')
            .replace(b'"total_tokens":38}', b'"total_tokens":38}]')
        ),
    )


def any_outcome_values(valid: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
    """Values a lookup may serve or refuse; it must not raise either way."""
    body = _answer_body()
    for flag in range(256):  # every flag byte under a checksum that matches it
        yield f"chat body resealed with flag {flag:#04x}", seal(body, flags=flag)
    yield "lone surrogate in the answer", seal(body.replace(b"82 g", b"\\ud800 g"))
    yield "expiry far in the future", seal(_answer_body(e="1e300"))
    yield (
        "dependency versions past 64 bits",
        seal(_answer_body(d='{"d":' + "9" * 30 + "}"), flags=0x04),
    )


@dataclass
class Target:
    """A TieredCache over one tier, and a way to plant bytes in that tier's store."""

    cache: TieredCache
    tier: Tier

    @classmethod
    def over(cls, tier: Tier, *, as_l1: bool = False, secret: str | None = None) -> Target:
        l1, l2 = (tier, None) if as_l1 else (None, tier)
        return cls(
            TieredCache(l1=l1, l2=l2, namespace=NAMESPACE, secret=secret, coalesce=False), tier
        )

    def plant(self, raw: bytes) -> None:
        self.tier.set(KEY, raw)

    def stored(self, key: str = KEY) -> bytes:
        raw = self.tier.get(key)
        assert raw is not None
        return bytes(raw)  # plain bytes, without an in-process record attached

    def corrupt(self) -> int:
        return self.cache.stats().tiers[self.tier.name].corrupt

    def tier_errors(self) -> int:
        return self.cache.stats().tiers[self.tier.name].errors


def _valid_values(target: Target) -> dict[str, bytes]:
    values = {}
    for name, answer in ANSWERS.items():
        target.cache.update(PROMPT, LLM, answer)
        values[name] = target.stored()
    assert values["compressed"][5] & 0x01, "the large answer should be stored compressed"
    return values


def _check_result(result: Any) -> None:
    assert result is None or (
        isinstance(result, list) and all(isinstance(g, Generation) for g in result)
    )


class FuzzContract:
    """Run against every tier; a subclass provides ``target``: a fresh Target."""

    #: Every bit of every byte of the small value (a stored write per case is slow on disk).
    every_bit = False
    #: The async run takes every n-th hostile value (the sync run takes them all).
    async_stride = 5

    def test_hostile_values_are_counted_misses(self, target: Target) -> None:
        cases = list(hostile_values(_valid_values(target), every_bit=self.every_bit))
        before, slowest = target.corrupt(), 0.0
        for name, raw in cases:
            target.plant(raw)
            with _CPU() as cpu:
                result = target.cache.lookup(PROMPT, LLM)
            spent = cpu.spent
            assert result is None, name
            assert spent < BOUND_S, f"{name}: {spent * 1000:.1f} ms"
            slowest = max(slowest, spent)
        assert target.corrupt() - before == len(cases)
        assert target.tier_errors() == 0
        print(f"{len(cases)} hostile values, slowest rejection {slowest * 1000:.2f} ms CPU")
        target.cache.update(PROMPT, LLM, ANSWERS["chat"])  # and the cache still works
        assert target.cache.lookup(PROMPT, LLM) is not None

    async def test_hostile_values_are_counted_misses_async(self, target: Target) -> None:
        every = hostile_values(_valid_values(target), every_bit=self.every_bit)
        cases = list(itertools.islice(every, 0, None, self.async_stride))
        before = target.corrupt()
        for name, raw in cases:
            target.plant(raw)
            with _CPU() as cpu:
                result = await target.cache.alookup(PROMPT, LLM)
            spent = cpu.spent
            assert result is None, name
            assert spent < BOUND_S, f"{name}: {spent * 1000:.1f} ms"
        assert target.corrupt() - before == len(cases)
        assert target.tier_errors() == 0

    async def test_refused_payloads_are_misses(self, target: Target) -> None:
        cases = list(refused_payloads())
        for name, raw in cases:
            target.plant(raw)
            assert target.cache.lookup(PROMPT, LLM) is None, name
            assert await target.cache.alookup(PROMPT, LLM) is None, name
        assert target.cache.stats().errors == 2 * len(cases)

    async def test_values_that_may_be_served_never_raise(self, target: Target) -> None:
        for name, raw in any_outcome_values(_valid_values(target)):
            target.plant(raw)
            with _CPU() as cpu:
                _check_result(target.cache.lookup(PROMPT, LLM))
                _check_result(await target.cache.alookup(PROMPT, LLM))
            assert cpu.spent < 2 * BOUND_S, name

    def test_random_bytes_never_raise(self, target: Target) -> None:
        # Inner functions: one hypothesis test per tier (a shared method would be
        # one test run from several classes, which hypothesis refuses).
        @settings(max_examples=150, deadline=None)
        @given(raw=_random_values)
        def check(raw: bytes) -> None:
            target.plant(raw)
            with _CPU() as cpu:
                _check_result(target.cache.lookup(PROMPT, LLM))
            assert cpu.spent < BOUND_S

        check()

    def test_mutated_payloads_under_a_valid_checksum_never_raise(self, target: Target) -> None:
        """Anyone who can write to the store can compute a CRC: the payload is checked too."""

        @settings(max_examples=150, deadline=None)
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            target.plant(seal(json.dumps(_mutated_document(data)).encode()))
            _check_result(target.cache.lookup(PROMPT, LLM))

        check()

    def test_a_flipped_digit_in_the_answer_is_a_miss_without_a_secret(self, target: Target) -> None:
        """Served before the checksum: every altered answer came back as the answer."""
        target.cache.update(PROMPT, LLM, ANSWERS["chat"])
        good = target.stored()
        body = good.index(b"{")
        served = []
        for offset in [good.index(digit, body) for digit in (b"82", b"21", b"16", b"17", b"38")]:
            altered = bytearray(good)
            altered[offset] = ord("9") if altered[offset] != ord("9") else ord("8")
            target.plant(bytes(altered))
            result = target.cache.lookup(PROMPT, LLM)
            if result is not None:
                served.append(result)
        assert served == []
        assert target.corrupt() == 5

    def test_a_value_swapped_under_another_key_is_a_miss_without_a_secret(
        self, target: Target
    ) -> None:
        target.cache.update("another question", LLM, ANSWERS["tools"])
        target.plant(target.stored(cache_key(NAMESPACE, "another question", LLM)))
        assert target.cache.lookup(PROMPT, LLM) is None
        assert target.corrupt() == 1
        assert target.cache.lookup("another question", LLM) is not None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["type", "text", "info", "message", "fields", "content", "tool_calls",
                         "usage_metadata", "total_tokens", "name", "args", "id", "p", "e", "d"])
        | st.text(max_size=5),
        children,
        max_size=3,
    ),
    max_leaves=12,
)  # fmt: skip
_random_values = (
    st.binary(max_size=400)
    | st.binary(max_size=400).map(lambda b: b"LLMC\x02" + b)
    | st.tuples(st.integers(0, 255), st.binary(max_size=400)).map(
        lambda fb: seal(fb[1], flags=fb[0])
    )
)


def _mutated_document(data: st.DataObject) -> Any:
    """A valid envelope for one of the answers with one node replaced by random JSON."""
    answer = ANSWERS[data.draw(st.sampled_from(sorted(ANSWERS)))]
    document: Any = {"p": dump_generations(answer)}
    parent: Any = None
    slot: Any = None
    node = document
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 4)):
        slots = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        parent, slot = node, data.draw(st.sampled_from(slots))
        node = node[slot]
    replacement = data.draw(_json_values)
    if parent is None:
        return replacement
    parent[slot] = replacement
    return document


# -- the tiers ------------------------------------------------------------------------


class TestMemory(FuzzContract):
    every_bit = True
    async_stride = 1

    @pytest.fixture
    def target(self) -> Target:
        return Target.over(MemoryTier(), as_l1=True)


class TestDisk(FuzzContract):
    @pytest.fixture
    def target(self, tmp_path: Path) -> Iterator[Target]:
        target = Target.over(DiskTier(tmp_path / "disk"))
        yield target
        target.cache.close()


@pytest.mark.redis
class TestRedis(FuzzContract):
    @pytest.fixture
    def target(self, redis_url: str, key_prefix: str) -> Iterator[Target]:
        target = Target.over(RedisTier(redis_url, prefix=key_prefix))
        yield target
        target.cache.close()
        purge_prefix(redis_url, key_prefix)


@pytest.mark.redis
@pytest.mark.cluster
class TestRedisCluster(FuzzContract):
    @pytest.fixture
    def target(self, redis_cluster: RedisClusterServers, key_prefix: str) -> Iterator[Target]:
        target = Target.over(RedisTier(redis_cluster.url, cluster=True, prefix=key_prefix))
        yield target
        target.cache.close()
        purge_prefix(redis_cluster.url, key_prefix, cluster=True)


# -- decode itself, and the end-to-end call -------------------------------------------


@settings(max_examples=400, deadline=None)
@given(raw=_random_values, signed=st.booleans())
def test_decode_raises_nothing_but_serialization_errors(raw: bytes, signed: bool) -> None:
    signer = Signer.from_secret(SECRET) if signed else None
    with contextlib.suppress(SerializationError):
        decode(raw, key=KEY, signer=signer)


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret", "secret"])
def test_decode_refuses_every_hostile_value(secret: str | None) -> None:
    signer = None if secret is None else Signer.from_secret(secret)
    count = 0
    valid = _valid_values(Target.over(MemoryTier(), secret=secret))
    for name, raw in hostile_values(valid, every_bit=True):
        with _CPU() as cpu:
            try:
                decode(raw, key=KEY, signer=signer)
            except SerializationError:
                pass
            else:
                pytest.fail(f"decoded: {name}")
        assert cpu.spent < BOUND_S, name
        count += 1
    assert count > 8_000


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=1)) as simulator:
        yield simulator


def _model(sim: Simulator, cache: TieredCache) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", temperature=0, max_retries=0,
                      base_url=sim.base_url, api_key="sim", cache=cache)  # fmt: skip


_DEEP = b'{"p":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
_UNHASHABLE = b'{"p":[{"type":[],"text":"x","info":null}]}'


def _content_blocks(good: bytes, key: str) -> bytes:
    """The stored answer with its content made a list of blocks, one of them an int."""
    document = json.loads(good[10:])  # after the header and the CRC of an unsigned value
    document["p"][0]["message"]["fields"]["content"] = ["text", {"type": "text", "text": "x"}, 7]
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("corrupt", "secret"),
    [
        # The first three raised out of ChatOpenAI.invoke before (IndexError,
        # RecursionError, TypeError); the old format is how they were reached.
        pytest.param(lambda good, key: b"LLMC\x01\x02", SECRET, id="old-signed-flag-only"),
        pytest.param(lambda good, key: b"LLMC\x01\x00" + _DEEP, None, id="old-deep"),
        pytest.param(lambda good, key: b"LLMC\x01\x00" + _UNHASHABLE, None, id="old-unhashable"),
        pytest.param(lambda good, key: b"LLMC\x02\x02", SECRET, id="signed-flag-only"),
        pytest.param(lambda good, key: seal(_DEEP, key=key), None, id="deep"),
        pytest.param(lambda good, key: seal(_UNHASHABLE, key=key), None, id="unhashable"),
        pytest.param(  # raised AttributeError inside LangChain before
            lambda good, key: b"LLMC\x01\x00" + _content_blocks(good, key),
            None,
            id="old-content-block-an-int",
        ),
        pytest.param(
            lambda good, key: seal(_content_blocks(good, key), key=key),
            None,
            id="content-block-an-int",
        ),
        pytest.param(lambda good, key: good[:-7], None, id="truncated"),
        pytest.param(lambda good, key: good[:-7], SECRET, id="truncated-signed"),
        pytest.param(
            lambda good, key: good[:40] + bytes((good[40] ^ 0x10,)) + good[41:], None, id="bit-flip"
        ),
    ],
)
async def test_chatopenai_over_a_corrupted_value_returns_the_models_answer(
    sim: Simulator,
    tmp_path: Path,
    corrupt: Callable[[bytes, str], bytes],
    secret: str | None,
) -> None:
    disk = DiskTier(tmp_path)
    _model(sim, TieredCache(l1=None, l2=disk, secret=secret)).invoke("Nutrients of bibimbap?")
    (key,) = disk.keys("default")
    good = bytes(disk.get(key) or b"")
    first = sim.requests
    for calls, path in enumerate(("invoke", "ainvoke"), start=first + 1):
        disk.set(key, corrupt(good, key))
        cache = TieredCache(l2=DiskTier(tmp_path), secret=secret)  # the default L1, same disk
        model = _model(sim, cache)
        prompt = "Nutrients of bibimbap?"
        answer = model.invoke(prompt) if path == "invoke" else await model.ainvoke(prompt)
        assert answer.content
        assert sim.requests == calls  # the model answered: the stored value was a miss
        assert model.invoke(prompt).content == answer.content  # and its answer is cached again
        assert sim.requests == calls


def test_a_too_short_secret_names_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCACHE_SECRET", "hunter2")
    with pytest.raises(ConfigurationError, match="LLMCACHE_SECRET is too short") as env:
        TieredCache(l2=DiskTier(tmp_path))
    assert "hunter2" not in str(env.value)
    monkeypatch.delenv("LLMCACHE_SECRET")
    with pytest.raises(ConfigurationError, match="secret= is too short") as arg:
        TieredCache(l2=DiskTier(tmp_path), secret="hunter3")
    assert "hunter3" not in str(arg.value)
    monkeypatch.setenv("LLMCACHE_SECRET", SECRET)
    monkeypatch.setenv("LLMCACHE_SECRET_ID", "k" * 300)
    with pytest.raises(ConfigurationError, match="LLMCACHE_SECRET_ID"):
        TieredCache(l2=DiskTier(tmp_path))


@pytest.mark.parametrize("error", [MemoryError, RecursionError, IndexError])
async def test_a_bug_in_decoding_would_still_be_a_counted_miss(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: type[Exception]
) -> None:
    """decode raises only SerializationError (above); the layering does not rely on it."""
    target = Target.over(DiskTier(tmp_path))
    target.cache.update(PROMPT, LLM, ANSWERS["chat"])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error("a decoding bug")

    monkeypatch.setattr(serialization, "decode", broken)
    assert target.cache.lookup(PROMPT, LLM) is None
    target.cache.update(PROMPT, LLM, ANSWERS["chat"])
    assert await target.cache.alookup(PROMPT, LLM) is None
    assert target.corrupt() == 2
    monkeypatch.undo()
    target.cache.update(PROMPT, LLM, ANSWERS["chat"])
    assert target.cache.lookup(PROMPT, LLM) is not None
