"""The stored envelope and the generations codec: exact round trips, safe decoding."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation
from pydantic import BaseModel

from llmcache import ConfigurationError, IntegrityError, SerializationError
from llmcache.generations import (
    compile_template,
    dump_generations,
    load_generations,
    usage_tokens,
)
from llmcache.serialization import (
    FORMAT_VERSION,
    MAX_DECOMPRESSED_BYTES,
    MAX_DEPTH,
    MAX_INFLATE_RATIO,
    Record,
    Signer,
    decode,
    encode,
    json_depth,
)

SIGNER = Signer.from_secret("a secret of at least sixteen bytes")
OTHER = Signer.from_secret("another secret, also long enough")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _plain(data: bytes) -> bytes:
    """The same bytes without the in-process decoded record attached."""
    return bytes(data)


@given(
    payload=json_values,
    expires=st.none() | st.floats(min_value=0, max_value=1e10),
    signed=st.booleans(),
    threshold=st.sampled_from([0, 64, 4096]),
)
def test_property_envelope_round_trip(
    payload: Any, expires: float | None, signed: bool, threshold: int
) -> None:
    signer = SIGNER if signed else None
    record = Record(payload, expires_at=expires, dependencies={"doc:1": 3})
    stored = encode(record, key="ns:k", signer=signer, compress_threshold=threshold)
    decoded = decode(_plain(stored), key="ns:k", signer=signer)
    assert decoded == record


@given(payload=json_values, position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_property_any_flipped_bit_in_a_signed_value_is_rejected(
    payload: Any, position: int, bit: int
) -> None:
    stored = bytearray(encode(Record(payload), key="ns:k", signer=SIGNER))
    stored[position % len(stored)] ^= 1 << bit
    with pytest.raises(SerializationError):
        decode(bytes(stored), key="ns:k", signer=SIGNER)


def test_a_signed_value_copied_under_another_key_is_rejected() -> None:
    stored = _plain(encode(Record(["answer for A"]), key="ns:a", signer=SIGNER))
    with pytest.raises(IntegrityError):
        decode(stored, key="ns:b", signer=SIGNER)


def test_signatures_are_checked_by_key_id_and_secret() -> None:
    stored = _plain(encode(Record([1]), key="ns:k", signer=SIGNER))
    with pytest.raises(IntegrityError):
        decode(stored, key="ns:k", signer=OTHER)
    with pytest.raises(IntegrityError):
        decode(stored, key="ns:k", signer=None)  # cannot verify, so cannot trust
    unsigned = _plain(encode(Record([1]), key="ns:k"))
    with pytest.raises(IntegrityError):
        decode(unsigned, key="ns:k", signer=SIGNER)


def test_same_secret_different_key_id_is_rejected() -> None:
    renamed = Signer.from_secret("a secret of at least sixteen bytes", key_id="k2")
    stored = _plain(encode(Record([1]), key="ns:k", signer=renamed))
    with pytest.raises(IntegrityError):
        decode(stored, key="ns:k", signer=SIGNER)


def test_signer_from_env_and_repr_hides_the_secret() -> None:
    assert Signer.from_env({}) is None
    signer = Signer.from_env({"LLMCACHE_SECRET": "x" * 20, "LLMCACHE_SECRET_ID": "prod-1"})
    assert signer is not None
    assert signer.key_id == b"prod-1"
    assert "x" * 20 not in repr(signer)
    with pytest.raises(ConfigurationError, match="secret= is too short"):
        Signer.from_secret("short")
    with pytest.raises(ConfigurationError, match=r"LLMCACHE_SECRET is too short: .* got 5"):
        Signer.from_env({"LLMCACHE_SECRET": "short"})
    with pytest.raises(ConfigurationError, match="LLMCACHE_SECRET_ID"):
        Signer.from_env({"LLMCACHE_SECRET": "x" * 20, "LLMCACHE_SECRET_ID": "i" * 256})


def _sealed(body: bytes, flags: int = 0, key: str = "ns:k") -> bytes:
    """An unsigned version-2 value with a valid CRC-32 over header, key and body."""
    header = b"LLMC" + bytes((FORMAT_VERSION, flags))
    check = zlib.crc32(body, zlib.crc32(key.encode(), zlib.crc32(header)))
    return header + check.to_bytes(4, "big") + body


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"LLMC",
        b"LLMC\x09\x00{}",
        _sealed(b"not json"),
        b"\x80\x04pickle",
        _sealed(b"[1]"),
        _sealed(b'{"p":1}', flags=0x08),  # an unknown flag
        _sealed(b'{"p":1,"e":1e999}'),  # the stdlib reads it as inf
        _sealed(b'{"p":1,"e":1' + b"0" * 400 + b"}", flags=0x04),  # past a float
        _sealed('{"p":"é"}'.encode()),  # encode writes ASCII only
        _sealed(b'{"p":1,"d":0}'),  # dependencies are an object (or absent)
    ],
)
def test_garbage_is_a_serialization_error(garbage: bytes) -> None:
    with pytest.raises(SerializationError):
        decode(garbage, key="ns:k")


def test_the_version_2_layout_is_a_crc_over_header_key_and_body() -> None:
    stored = _plain(encode(Record([1], expires_at=5.0), key="ns:k"))
    assert stored == _sealed(b'{"p":[1],"e":5.0}')
    assert decode(_sealed(b'{"p":[1],"e":5.0}'), key="ns:k") == Record([1], expires_at=5.0)


def test_old_format_values_are_not_read() -> None:
    """Version 1 had no check on unsigned values: read as a miss (not ours to delete)."""
    for old in (b"LLMC\x01\x00" + b'{"p":[1],"e":null}', b"LLMC\x01\x02", b"LLMC\x03\x00{}"):
        with pytest.raises(IntegrityError, match="format version"):
            decode(old, key="ns:k", signer=None)
        with pytest.raises(IntegrityError):
            decode(old, key="ns:k", signer=SIGNER)


@given(payload=json_values, position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_property_any_flipped_bit_in_an_unsigned_value_is_rejected(
    payload: Any, position: int, bit: int
) -> None:
    stored = bytearray(encode(Record(payload), key="ns:k"))
    stored[position % len(stored)] ^= 1 << bit
    with pytest.raises(SerializationError):
        decode(bytes(stored), key="ns:k")


@given(payload=json_values, end=st.integers(min_value=0))
def test_property_any_truncated_value_is_rejected(payload: Any, end: int) -> None:
    for signer in (None, SIGNER):
        stored = _plain(encode(Record(payload), key="ns:k", signer=signer))
        with pytest.raises(SerializationError):
            decode(stored[: end % len(stored)], key="ns:k", signer=signer)


def test_an_unsigned_value_copied_under_another_key_is_rejected() -> None:
    stored = _plain(encode(Record(["answer for A"]), key="ns:a"))
    with pytest.raises(SerializationError, match="checksum"):
        decode(stored, key="ns:b")


def test_large_values_are_compressed_and_bombs_refused() -> None:
    payload = ["word " * 20_000]
    stored = encode(Record(payload), key="ns:k", compress_threshold=4096)
    assert len(stored) < 5_000
    assert decode(_plain(stored), key="ns:k").payload == payload
    bomb_body = zlib.compress(b'{"p":"' + b"a" * (MAX_DECOMPRESSED_BYTES + 10) + b'"}', 9)
    with pytest.raises(SerializationError, match="size limit"):
        decode(_sealed(bomb_body, flags=0x01), key="ns:k")


def test_a_body_that_inflates_past_the_ratio_is_stored_uncompressed_and_reads_back() -> None:
    """A reader takes 2 MB from 2 KB for a bomb, so the writer never stores one that way."""
    payload = ["a" * (2 << 20)]
    stored = _plain(encode(Record(payload), key="ns:k"))
    assert not stored[5] & 0x01  # not compressed: zlib would make it ~2 KB
    assert decode(stored, key="ns:k").payload == payload
    squeezed = zlib.compress(b'{"p":["' + b"a" * (2 << 20) + b'"]}')
    assert len(squeezed) * MAX_INFLATE_RATIO < 2 << 20
    with pytest.raises(SerializationError, match="size limit"):
        decode(_sealed(squeezed, flags=0x01), key="ns:k")
    # Under the 1 MiB floor any ratio is read: a highly repetitive answer stays compressed.
    small = ["b" * (1 << 19)]
    compact = _plain(encode(Record(small), key="ns:k"))
    assert compact[5] & 0x01 and len(compact) < 2048
    assert decode(compact, key="ns:k").payload == small


def test_nesting_is_bounded_on_both_sides() -> None:
    def nested(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth - 1):  # the envelope is one level
            value = [value]
        return value

    deepest = Record(nested(MAX_DEPTH))
    assert decode(_plain(encode(deepest, key="ns:k")), key="ns:k") == deepest
    with pytest.raises(SerializationError, match="deeper"):
        encode(Record(nested(MAX_DEPTH + 1)), key="ns:k")
    with pytest.raises(SerializationError, match="JSON-serializable"):
        encode(Record(nested(100_000)), key="ns:k")  # the encoder's own recursion, refused
    deep = b'{"p":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    for flags in (0x00, 0x04):  # orjson, and the recursive stdlib parser
        with pytest.raises(SerializationError, match="deeper"):
            decode(_sealed(deep, flags=flags), key="ns:k")


@given(value=json_values)
def test_property_json_depth_matches_the_structure(value: Any) -> None:
    def depth(item: Any) -> int:
        if isinstance(item, dict):
            return 1 + max(map(depth, item.values()), default=0)
        if isinstance(item, list):
            return 1 + max(map(depth, item), default=0)
        return 0

    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert json_depth(text.encode()) == depth(value)


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(rb'{"a":"[[[{{{\"]]]","b":[[]]}') == 3
    assert json_depth(b"") == 0


def test_non_json_payloads_are_refused_on_encode() -> None:
    with pytest.raises(SerializationError):
        encode(Record([object()]), key="ns:k")
    with pytest.raises(SerializationError):
        encode(Record([float("nan")]), key="ns:k")


# -- generations --------------------------------------------------------------


class Meal(BaseModel):
    name: str
    kcal: int


def _chat(message: AIMessage, info: dict[str, Any] | None = None) -> ChatGeneration:
    return ChatGeneration(message=message, generation_info=info)


def _round_trip(generations: list[Any]) -> list[Any]:
    stored = encode(Record(dump_generations(generations)), key="ns:k", signer=SIGNER)
    return load_generations(decode(_plain(stored), key="ns:k", signer=SIGNER).payload)


def _without_ids(generations: list[Any]) -> list[Any]:
    out = []
    for generation in generations:
        if isinstance(generation, ChatGeneration):
            generation = generation.model_copy(
                update={"message": generation.message.model_copy(update={"id": None})}
            )
        out.append(generation)
    return out


def test_round_trip_is_exact_for_a_rich_chat_generation() -> None:
    message = AIMessage(
        content="",
        tool_calls=[{"name": "lookup", "args": {"dish": "bibimbap", "n": [1, 2]}, "id": "call_1"}],
        usage_metadata={
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "input_token_details": {"cache_read": 2},
        },
        response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "tool_calls"},
        additional_kwargs={"refusal": None},
        id="chatcmpl-1",
        name="assistant",
    )
    original = [_chat(message, {"finish_reason": "tool_calls", "logprobs": None})]
    restored = _round_trip(original)
    assert _without_ids(restored) == _without_ids(original)
    assert restored[0].message.tool_calls == message.tool_calls


def test_n_generations_text_and_chunks_round_trip() -> None:
    original = [
        _chat(AIMessage("first")),
        _chat(AIMessage("second")),
        ChatGenerationChunk(message=AIMessageChunk(content="chunk", chunk_position="last")),
        Generation(text="plain llm", generation_info={"finish_reason": "stop"}),
    ]
    restored = _round_trip(original)
    assert [type(g) for g in restored] == [type(g) for g in original]
    assert _without_ids(restored) == _without_ids(original)


def test_content_blocks_round_trip() -> None:
    blocks: list[Any] = [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "u"}},
    ]
    restored = _round_trip([_chat(AIMessage(content=blocks))])
    assert restored[0].message.content == blocks


def test_parsed_structured_output_is_stored_as_its_json_form() -> None:
    message = AIMessage(
        '{"name":"kimchi","kcal":23}', additional_kwargs={"parsed": Meal(name="kimchi", kcal=23)}
    )
    restored = _round_trip([_chat(message)])
    parsed = restored[0].message.additional_kwargs["parsed"]
    assert parsed == {"name": "kimchi", "kcal": 23}
    assert Meal(**parsed) == Meal(name="kimchi", kcal=23)


def test_an_lc_dict_inside_a_message_stays_a_plain_dict() -> None:
    injected = {"lc": 1, "type": "constructor", "id": ["os", "system"], "kwargs": {"command": "id"}}
    secret = {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}
    message = AIMessage("x", additional_kwargs={"payload": injected, "key": secret})
    restored = _round_trip([_chat(message)])
    assert restored[0].message.additional_kwargs == {"payload": injected, "key": secret}


def test_every_hit_is_fresh_with_a_new_id() -> None:
    payload = dump_generations([_chat(AIMessage("x", response_metadata={"a": {"b": [1]}}))])
    first, second = load_generations(payload), load_generations(payload)
    assert first[0].message.id != second[0].message.id
    first[0].message.response_metadata["a"]["b"].append(2)
    first[0].message.content = "changed"
    third = load_generations(payload)
    assert third[0].message.response_metadata == {"a": {"b": [1]}}
    assert third[0].message.content == "x"


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"type": "ChatGeneration"},
        [{"type": "HumanMessage", "text": "x", "info": None}],
        [
            {
                "type": "ChatGeneration",
                "text": "x",
                "info": None,
                "message": {"type": "SystemMessage", "fields": {}},
            }
        ],
        [
            {
                "type": "ChatGeneration",
                "text": "x",
                "info": None,
                "message": {
                    "type": "AIMessage",
                    "fields": {"content": "x", "__class__": "os.system"},
                },
            }
        ],
        [
            {
                "type": "ChatGeneration",
                "text": "x",
                "info": None,
                "message": {"type": "AIMessage", "fields": {"content": 42}},
            }
        ],
        [
            {
                "type": "ChatGeneration",
                "text": "x",
                "info": None,
                "message": {
                    "type": "AIMessage",
                    "fields": {"content": "x", "tool_calls": ["rm -rf"]},
                },
            }
        ],
        [{"type": "Generation", "text": 5, "info": None}],
        [{"type": [], "text": "x", "info": None}],  # unhashable: was a TypeError
        [
            {
                "type": "ChatGeneration",
                "text": "x",
                "info": None,
                "message": {"type": "AIMessage", "fields": {"content": ["x", 7]}},
            }
        ],
    ],
)
def test_payloads_outside_the_allowlist_are_refused(payload: Any) -> None:
    with pytest.raises(SerializationError):
        load_generations(payload)


def test_a_payload_missing_newer_fields_still_loads_with_defaults() -> None:
    payload = [
        {
            "type": "ChatGeneration",
            "text": "x",
            "info": None,
            "message": {"type": "AIMessage", "fields": {"content": "x"}},
        }
    ]
    (restored,) = load_generations(payload)
    assert restored.message.content == "x"
    assert restored.message.tool_calls == []
    assert restored.message.id


def test_unknown_generation_classes_are_not_cached() -> None:
    class Custom(Generation):
        pass

    with pytest.raises(SerializationError):
        dump_generations([Custom(text="x")])
    with pytest.raises(SerializationError):
        dump_generations([_chat(AIMessage("x"), info={"obj": object()})])


def test_usage_tokens() -> None:
    usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    assert usage_tokens(dump_generations([_chat(AIMessage("x", usage_metadata=usage))])) == 10  # type: ignore[arg-type]
    assert usage_tokens(dump_generations([Generation(text="x")])) == 0
    assert usage_tokens(json.loads("[]")) == 0


text = st.text(max_size=30)


@given(
    content=text,
    calls=st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(min_size=1, max_size=8),
                "args": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            }
        ),
        max_size=3,
    ),
    tokens=st.integers(0, 10**6),
    metadata=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    n=st.integers(1, 3),
)
def test_property_generations_round_trip(
    content: str, calls: list[dict[str, Any]], tokens: int, metadata: dict[str, Any], n: int
) -> None:
    message = AIMessage(
        content=content,
        tool_calls=[{**call, "id": f"c{i}"} for i, call in enumerate(calls)],
        usage_metadata={"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens},
        response_metadata=metadata,
    )
    original = [_chat(message) for _ in range(n)]
    assert _without_ids(_round_trip(original)) == _without_ids(original)


# -- a compiled template, built again and again (every in-memory hit) ------------


def _containers(value: Any) -> list[Any]:
    """Every dict and list reachable from ``value``, itself included."""
    if isinstance(value, dict):
        return [value, *(c for item in value.values() for c in _containers(item))]
    if isinstance(value, list):
        return [value, *(c for item in value for c in _containers(item))]
    return []


@given(info=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
       metadata=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
       args=st.dictionaries(st.text(max_size=5), json_values, max_size=3))  # fmt: skip
def test_property_builds_of_one_template_are_equal_and_share_no_container(
    info: dict[str, Any] | None, metadata: dict[str, Any], args: dict[str, Any]
) -> None:
    message = AIMessage(
        "x",
        response_metadata=metadata,
        tool_calls=[{"name": "f", "args": args, "id": "c1"}],
        usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    )
    original = [_chat(message, info)]
    template = compile_template(dump_generations(original), owned=False)
    first, second = template.build(), template.build()
    assert _without_ids(first) == _without_ids(second) == _without_ids(original)
    # Both kept alive while compared, so equal ids would be the same objects.
    held = [
        [c for g in build for c in _containers(g.generation_info) + _containers(g.message.__dict__)]
        for build in (first, second)
    ]
    shared = {id(c) for c in held[0]} & {id(c) for c in held[1]}
    assert not shared


def test_a_template_keeps_integers_past_64_bits_exact() -> None:
    big = 2**70 + 1
    payload = dump_generations([_chat(AIMessage("x", response_metadata={"n": big}))])
    template = compile_template(payload, owned=False)
    assert [template.build()[0].message.response_metadata["n"] for _ in range(2)] == [big, big]


@pytest.mark.parametrize(
    "value",
    [
        {"set": {1, 2}},  # not JSON
        {"tuple": (1, {"a": 1})},  # not JSON either, and it holds a dict
        {1: "int key"},
    ],
    ids=["set", "tuple", "int-key"],
)
def test_a_template_refuses_what_is_not_json(value: dict[Any, Any]) -> None:
    payload = dump_generations([_chat(AIMessage("x"))])
    payload[0]["message"]["fields"]["response_metadata"] = value
    with pytest.raises(SerializationError):
        compile_template(payload, owned=False)


def test_a_template_refuses_nesting_deeper_than_it_can_copy() -> None:
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    payload = dump_generations([_chat(AIMessage("x"))])
    payload[0]["message"]["fields"]["response_metadata"] = {"deep": deep}
    with pytest.raises(SerializationError):
        compile_template(payload, owned=False)
