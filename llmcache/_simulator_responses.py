"""Deterministic response generation for the chat-completions simulator.

Everything here is pure (no I/O, no clock), so the same request always yields the same
content; only ids and timestamps are added by the server.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

_FILLER_TEXT = (
    "Values vary with portion size and preparation , so treat them as a rough guide . "
    "Cooking oil and sauces add fat quickly , while vegetables mostly add fiber . "
    "Check the label when one is available for exact figures per serving ."
)
_FILLER = _FILLER_TEXT.split()
_SENTENCE_STARTS = [0] + [i + 1 for i, w in enumerate(_FILLER[:-1]) if w == "."]
_MAX_SCHEMA_DEPTH = 6
_TOKEN_RE = re.compile(r"\s*\S+(?:\s+$)?")


@dataclass
class Choice:
    """One generated choice: either text content or tool calls."""

    content: str | None
    tool_calls: list[JSON] = field(default_factory=list)
    finish_reason: str = "stop"
    pieces: list[str] = field(default_factory=list)  # content (or arguments) split for SSE


@dataclass
class Answer:
    """A planned answer for one request, independent of wall clock and ids."""

    model: str
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> JSON:
        """OpenAI-shaped usage block."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def message_text(message: Any) -> str:
    """Plain text of a message's content (string or list of content parts)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def last_user_text(body: JSON) -> str:
    """Text of the last ``user`` message of a request body ("" if none)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return message_text(message)
    return ""


def tokenize(text: str) -> list[str]:
    """Split text into word-ish pieces whose concatenation is the text."""
    return _TOKEN_RE.findall(text) or [text]


def request_digest(body: JSON, seed: int) -> bytes:
    """Hash of everything that determines the answer content."""
    keys = ("model", "messages", "temperature", "n", "tools", "tool_choice", "response_format")
    relevant = {k: body.get(k) for k in keys}
    relevant["seed"] = [seed, body.get("seed")]
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).digest()


def _rng(digest: bytes, index: int) -> random.Random:
    return random.Random(int.from_bytes(digest[:16], "big") + index)


def _text_answer(prompt: str, rng: random.Random, length: int) -> str:
    short = " ".join(prompt.split())[:40].replace("'", "’")
    carbs, protein, fat, fiber = (
        rng.randint(5, 90),
        rng.randint(1, 45),
        rng.randint(0, 40),
        rng.randint(0, 15),
    )
    kcal = carbs * 4 + protein * 4 + fat * 9
    words = (
        f"Estimated for '{short}': carbs {carbs} g, protein {protein} g, fat {fat} g, "
        f"fiber {fiber} g, about {kcal} kcal."
    ).split()
    filler = iter(_FILLER[rng.choice(_SENTENCE_STARTS) :] + _FILLER * (length // len(_FILLER) + 1))
    while len(words) < length:
        words.append(next(filler))
    text = " ".join(words).replace(" ,", ",").replace(" .", ".")
    return text if text.endswith(".") else text + "."


def _resolve(schema: JSON, root: JSON) -> JSON:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}
    return schema


def _string_value(name: str, schema: JSON, rng: random.Random) -> str:
    fmt = schema.get("format")
    day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date":
        return day
    if fmt == "date-time":
        return f"{day}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
    if fmt == "email":
        return f"user{rng.randint(1, 999)}@example.com"
    if fmt in ("uri", "url"):
        return f"https://example.com/{name or 'item'}/{rng.randint(1, 999)}"
    if fmt == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    text = f"{name or 'value'}-{_FILLER[rng.randrange(len(_FILLER))].strip(',.') or 'x'}"
    text += f"-{rng.randint(1, 999)}"
    min_len, max_len = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(min_len, "x")
    return text[: int(max_len)] if max_len is not None else text


def _number(schema: JSON, rng: random.Random, integer: bool) -> int | float:
    low_raw: Any = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    low = float(low_raw)
    high_raw: Any = schema.get("maximum", schema.get("exclusiveMaximum", max(low, 0.0) + 100))
    high = float(high_raw)
    step = 1.0 if integer else 1e-3
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        low += step
    if "exclusiveMaximum" in schema and "maximum" not in schema:
        high -= step
    high = max(low, high)
    if integer:
        return rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
    value = round(rng.uniform(low, high), 2)
    return value if low <= value <= high else (low + high) / 2  # rounding left the range


def schema_value(
    schema: Any, rng: random.Random, root: JSON | None = None, name: str = "", depth: int = 0
) -> Any:
    """A deterministic JSON value valid for a (reasonable subset of) JSON schema."""
    if not isinstance(schema, dict):
        return None
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key, []) if _resolve(o, root).get("type") != "null"]
        if key in schema:
            return schema_value(options[0], rng, root, name, depth + 1) if options else None
    if schema.get("allOf"):
        merged: JSON = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return schema_value(merged, rng, root, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "string":
        return _string_value(name, schema, rng)
    if kind in ("integer", "number"):
        return _number(schema, rng, kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        if depth >= _MAX_SCHEMA_DEPTH:
            return []
        if isinstance(schema.get("prefixItems"), list):
            return [schema_value(s, rng, root, name, depth + 1) for s in schema["prefixItems"]]
        item = schema.get("items", {"type": "string"})
        if not item and "minItems" not in schema:
            return []  # unconstrained items (e.g. a recursive model LangChain inlined as {})
        low = int(schema.get("minItems", 1))
        count = max(low, min(int(schema.get("maxItems", 3)), rng.randint(low, low + 2)))
        return [schema_value(item, rng, root, name, depth + 1) for _ in range(count)]
    if kind == "object":
        props = schema.get("properties") or {}
        # Past the depth limit only required fields are filled, so recursive models terminate.
        keys = list(props) if depth < _MAX_SCHEMA_DEPTH else list(schema.get("required", []))
        value = {k: schema_value(props.get(k, {}), rng, root, k, depth + 1) for k in keys}
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict) and depth < _MAX_SCHEMA_DEPTH:
            value["key"] = schema_value(extra, rng, root, "key", depth + 1)
        return value
    return None


def _tool_call(tool: JSON, digest: bytes, index: int) -> JSON:
    function = tool.get("function", {}) if isinstance(tool, dict) else {}
    params = function.get("parameters") or {"type": "object", "properties": {}}
    arguments = json.dumps(schema_value(params, _rng(digest, 1000 + index)))
    return {
        "id": f"call_{hashlib.sha256(digest + bytes([index % 256])).hexdigest()[:24]}",
        "type": "function",
        "function": {"name": str(function.get("name", "tool")), "arguments": arguments},
    }


def _pick_tool(body: JSON) -> JSON | None:
    """The tool to call, or None when the model should answer with text."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "function" in t]
    messages = body.get("messages") or []
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    # After a tool result the conversation continues in text, like a real model would.
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"].get("name") == wanted), tools[0])
    return tools[0]


def _content(body: JSON, rng: random.Random, length: int) -> str:
    fmt = body.get("response_format")
    prompt = last_user_text(body)
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return json.dumps(schema_value(schema, rng))
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return json.dumps({"answer": _text_answer(prompt, rng, 0), "score": rng.randint(0, 100)})
    return _text_answer(prompt, rng, length)


def plan_answer(body: JSON, seed: int, completion_tokens: int) -> Answer:
    """Build the deterministic answer for a chat-completions request body."""
    digest = request_digest(body, seed)
    messages = body.get("messages") or []
    prompt_chars = sum(len(message_text(m)) for m in messages)
    prompt_chars += len(json.dumps(body.get("tools") or "")) if body.get("tools") else 0
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    tool = _pick_tool(body)
    choices: list[Choice] = []
    for index in range(max(1, int(body.get("n") or 1))):
        if tool is not None:
            call = _tool_call(tool, digest, index)
            pieces = tokenize(call["function"]["arguments"])
            choices.append(Choice(None, [call], "tool_calls", pieces))
            continue
        pieces = tokenize(_content(body, _rng(digest, index), completion_tokens))
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        choices.append(Choice("".join(pieces), [], finish, pieces))
    return Answer(
        model=str(body.get("model") or "gpt-4o-mini"),
        choices=choices,
        prompt_tokens=max(1, prompt_chars // 4),
        completion_tokens=sum(len(c.pieces) for c in choices),
    )


def completion_body(answer: Answer, *, id_: str, created: int, fingerprint: str) -> JSON:
    """The non-streaming ``chat.completion`` object."""
    choices = []
    for index, choice in enumerate(answer.choices):
        message: JSON = {"role": "assistant", "content": choice.content, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = choice.tool_calls
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": answer.usage(),
    }


def stream_chunks(
    answer: Answer, *, id_: str, created: int, fingerprint: str, include_usage: bool
) -> Iterator[tuple[JSON, int]]:
    """``chat.completion.chunk`` objects, each with the number of tokens it carries."""
    base = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": answer.model,
        "system_fingerprint": fingerprint,
    }
    extra: JSON = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: JSON, finish: str | None = None) -> JSON:
        item = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [item], **extra}

    for index, choice in enumerate(answer.choices):
        if choice.tool_calls:
            call = choice.tool_calls[0]
            head = {**call, "index": 0, "function": {**call["function"], "arguments": ""}}
            yield chunk(index, {"role": "assistant", "content": None, "tool_calls": [head]}), 0
            for piece in choice.pieces:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                yield chunk(index, delta), 1
        else:
            yield chunk(index, {"role": "assistant", "content": "", "refusal": None}), 0
            for piece in choice.pieces:
                yield chunk(index, {"content": piece}), 1
        yield chunk(index, {}, choice.finish_reason), 0
    if include_usage:
        yield {**base, "choices": [], "usage": answer.usage()}, 0
