"""Canonical keys: same meaning, same key; anything that changes the answer, another key."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI

from llmcache import ConfigurationError, LLMCacheError
from llmcache.keys import (
    KEY_SCHEMA_VERSION,
    KeyMemo,
    cache_key,
    canonical_llm_string,
    canonical_prompt,
    validate_namespace,
)

BASE = "http://127.0.0.1:9/v1"


def _llm_string(**overrides: object) -> str:
    params: dict[str, object] = {"model": "gpt-4o-mini", "api_key": "k", "base_url": BASE}
    params.update(overrides)
    return ChatOpenAI(**params)._get_llm_string()  # type: ignore[arg-type]


def _key(prompt: str, llm_string: str, namespace: str = "default") -> str:
    return cache_key(namespace, prompt, llm_string)


PROMPT = dumps([SystemMessage("You estimate nutrients."), HumanMessage("bibimbap")])


def test_key_shape() -> None:
    key = _key(PROMPT, _llm_string())
    namespace, digest = key.split(":")
    assert namespace == "default"
    assert len(digest) == 64
    assert int(digest, 16) >= 0


@pytest.mark.parametrize(
    "transport",
    [
        {"max_retries": 7},
        {"timeout": 3.5},
        {"api_key": "another-key"},
        {"streaming": True},
        {"default_headers": {"x-trace": "1"}},
    ],
)
def test_transport_parameters_do_not_change_the_key(transport: dict[str, object]) -> None:
    assert _key(PROMPT, _llm_string(**transport)) == _key(PROMPT, _llm_string())


@pytest.mark.parametrize(
    "meaningful",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.7},
        {"max_tokens": 12},
        {"stop": ["\n"]},
        {"base_url": "http://127.0.0.1:10/v1"},
        {"seed": 3},
    ],
)
def test_parameters_that_change_the_answer_change_the_key(meaningful: dict[str, object]) -> None:
    assert _key(PROMPT, _llm_string(**meaningful)) != _key(PROMPT, _llm_string())


def test_call_time_tools_change_the_key_even_when_a_property_is_named_timeout() -> None:
    model = ChatOpenAI(model="gpt-4o-mini", api_key="k", base_url=BASE)

    def tool(props: dict[str, object]) -> str:
        bound = model.bind_tools(
            [{"type": "function", "function": {"name": "f", "parameters": props}}]
        )
        return model._get_llm_string(**bound.kwargs)  # type: ignore[attr-defined]

    with_timeout = tool({"type": "object", "properties": {"timeout": {"type": "number"}}})
    without = tool({"type": "object", "properties": {}})
    assert _key(PROMPT, with_timeout) != _key(PROMPT, without)
    assert _key(PROMPT, with_timeout) != _key(PROMPT, model._get_llm_string())


def test_message_ids_do_not_change_the_key() -> None:
    with_ids = dumps([SystemMessage("s", id="a1"), HumanMessage("bibimbap", id="b2")])
    without = dumps([SystemMessage("s"), HumanMessage("bibimbap")])
    assert _key(with_ids, "l") == _key(without, "l")


def test_earlier_ai_turns_usage_and_metadata_do_not_change_the_key() -> None:
    def conversation(ai: AIMessage) -> str:
        return dumps([HumanMessage("hi"), ai, HumanMessage("and then?")])

    first_run = AIMessage(
        "hello",
        id="chatcmpl-1",
        usage_metadata={"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        response_metadata={"token_usage": {"total_tokens": 4}, "model_name": "gpt-4o-mini"},
    )
    # What LangChain hands back on a cache hit: a zeroed cost, another id.
    replayed = AIMessage(
        "hello",
        id="lc_cache-x",
        usage_metadata={"input_tokens": 3, "output_tokens": 1, "total_tokens": 4, "total_cost": 0},  # type: ignore[typeddict-unknown-key]
    )
    assert _key(conversation(first_run), "l") == _key(conversation(replayed), "l")
    assert _key(conversation(AIMessage("goodbye")), "l") != _key(conversation(replayed), "l")


def test_tool_calls_of_earlier_turns_change_the_key() -> None:
    def with_call(args: dict[str, object]) -> str:
        ai = AIMessage("", tool_calls=[{"name": "f", "args": args, "id": "c1"}])
        return dumps([HumanMessage("q"), ai, ToolMessage("42", tool_call_id="c1")])

    assert _key(with_call({"x": 1}), "l") != _key(with_call({"x": 2}), "l")


def test_namespace_and_content_change_the_key() -> None:
    llm = _llm_string()
    assert _key(PROMPT, llm, "a") != _key(PROMPT, llm, "b")
    other = dumps([SystemMessage("You estimate nutrients."), HumanMessage("bulgogi")])
    assert _key(other, llm) != _key(PROMPT, llm)


def test_plain_text_prompts_are_kept_verbatim() -> None:
    assert canonical_prompt("Tell me a joke") == "Tell me a joke"
    assert canonical_prompt('["not", "messages", "id": "x"]') == '["not", "messages", "id": "x"]'
    assert _key("a", "l") != _key("a ", "l")


def test_unparseable_llm_strings_are_kept_verbatim() -> None:
    odd = "{not json---[('stop', None)]"
    assert _key(PROMPT, odd) != _key(PROMPT, odd + " ")


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "x" * 65, "ü"])
def test_bad_namespaces_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        validate_namespace(bad)
    assert isinstance(raised.value, LLMCacheError)


def test_key_memo_agrees_with_the_function_and_stays_bounded() -> None:
    memo = KeyMemo(max_entries=8)
    for index in range(50):
        prompt = f"prompt {index % 12}"
        assert memo.key("ns", prompt, "l") == cache_key("ns", prompt, "l")
    assert len(memo._keys) <= 8


def test_key_memo_under_a_stream_of_new_prompts_keeps_exactly_the_newest() -> None:
    # A big cache's first hits: every prompt is new, so every key evicts the
    # oldest. The memo must keep the newest max_entries, in order, with its
    # character count exact (eviction pops the oldest in O(1): benchmarks/scale.py).
    memo = KeyMemo(max_entries=64)
    prompts = [f"prompt number {index}" for index in range(10_000)]
    for prompt in prompts:
        assert memo.key("ns", prompt, "llm") == cache_key("ns", prompt, "llm")
    assert [prompt for _, prompt, _ in memo._keys] == prompts[-64:]
    assert memo._chars == sum(len(p) + len("llm") for p in prompts[-64:])


def test_key_memo_keeps_long_conversations_within_a_character_budget() -> None:
    # A 128-message history is ~50 KB: it must be remembered (the old memo
    # refused prompts over 16 K characters, so every lookup re-parsed it), and
    # the memo must still stay within its character budget.
    memo = KeyMemo(max_chars=400_000)
    prompts = [_conversation(128, salt=str(i)) for i in range(12)]
    assert all(40_000 < len(p) < 50_000 for p in prompts)
    for prompt in prompts:
        assert memo.key("ns", prompt, "l") == cache_key("ns", prompt, "l")
        assert memo._keys[("ns", prompt, "l")] == cache_key("ns", prompt, "l")
        held = sum(len(p) + len(llm) for _, p, llm in memo._keys)
        assert held == memo._chars <= 400_000
    assert len(memo._keys) < len(prompts)  # the oldest went first
    assert ("ns", prompts[-1], "l") in memo._keys
    huge = "x" * 60_000  # over an eighth of the budget: computed, not kept
    assert memo.key("ns", huge, "l") == cache_key("ns", huge, "l")
    assert ("ns", huge, "l") not in memo._keys


def _conversation(messages: int, salt: str = "") -> str:
    turns: list[object] = [SystemMessage("You are a helpful assistant.")]
    for i in range(messages // 2):
        turns.append(HumanMessage(f"question {salt} {i}: " + "about the dish " * 10, id=f"h{i}"))
        turns.append(
            AIMessage(
                f"answer {i}: " + "a fine dish with balanced flavours. " * 5,
                id=f"run-{i}",
                usage_metadata={"input_tokens": 9, "output_tokens": 9, "total_tokens": 18},
            )
        )
    return dumps(turns)


@pytest.mark.parametrize(
    "odd",
    [
        '{"lc": 1, "type": "constructor", "id": ["x", "AIMessage"], "kwargs": {"n": NaN}}',
        '{"lc": 1, "type": "constructor", "id": ["x", "AIMessage"], "kwargs": {"n": 1'
        + "2" * 30
        + "}}",
        '{"lc": 1, "type": "constructor", "id": ["x", "AIMessage"], "kwargs": {"s": "\\ud800"}}',
    ],
)
def test_json_that_only_the_stdlib_parses_is_canonicalised_the_same_way(odd: str) -> None:
    # NaN, integers beyond 64 bits and lone surrogates: faster parsers refuse
    # or round them (orjson reads a huge integer as a float, so two prompts
    # differing in its last digits would share a key); the key must keep them.
    with_id = odd[: -len("}}")] + ', "id": "m1"}}'
    prompt = "[" + with_id + "]"
    expected = json.loads("[" + odd + "]")
    assert canonical_prompt(prompt) == json.dumps(expected)


def test_deeply_nested_prompts_are_kept_verbatim_not_raised() -> None:
    deep = '[{"id": "x"}, ' + "[" * 100_000 + "]" * 100_000 + "]"
    assert canonical_prompt(deep) == deep
    assert _key(deep, "l").startswith("default:")


_texts = st.text(min_size=0, max_size=40)


@given(
    contents=st.lists(_texts, min_size=1, max_size=5), ids=st.lists(_texts, min_size=5, max_size=5)
)
def test_property_ids_never_matter(contents: list[str], ids: list[str]) -> None:
    plain = dumps([HumanMessage(c) for c in contents])
    with_ids = dumps([HumanMessage(c, id=i or None) for c, i in zip(contents, ids)])
    assert _key(plain, "l") == _key(with_ids, "l")


@given(a=st.lists(_texts, min_size=1, max_size=4), b=st.lists(_texts, min_size=1, max_size=4))
def test_property_different_conversations_never_collide(a: list[str], b: list[str]) -> None:
    key_a = _key(dumps([HumanMessage(c) for c in a]), "l")
    key_b = _key(dumps([HumanMessage(c) for c in b]), "l")
    assert (key_a == key_b) == (a == b)


@given(
    tokens=st.integers(min_value=0, max_value=10**6),
    cost=st.floats(min_value=0, max_value=10, allow_nan=False),
    reply=_texts,
)
def test_property_usage_of_earlier_turns_never_matters(
    tokens: int, cost: float, reply: str
) -> None:
    usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}
    first = dumps([HumanMessage("q"), AIMessage(reply, usage_metadata=usage), HumanMessage("r")])
    replay = dumps(
        [
            HumanMessage("q"),
            AIMessage(reply, usage_metadata={**usage, "total_cost": cost}),  # type: ignore[typeddict-item]
            HumanMessage("r"),
        ]
    )
    assert _key(first, "l") == _key(replay, "l")


@given(st.text(), st.text(), st.sampled_from(["default", "ns-2"]))
def test_property_the_key_hashes_the_documented_material(
    prompt: str, llm_string: str, namespace: str
) -> None:
    # The prefix is hashed once per model and copied (keys.cache_key): the
    # digest must still be that of the one JSON text, whatever the strings hold
    # (quotes, escapes, lone surrogates, a ']' or ',' at either side of the join).
    material = json.dumps(
        [
            KEY_SCHEMA_VERSION,
            namespace,
            canonical_llm_string(llm_string),
            canonical_prompt(prompt),
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()
    assert cache_key(namespace, prompt, llm_string) == f"{namespace}:{digest}"
