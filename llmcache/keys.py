"""Canonical cache keys: pure functions, no I/O.

A key is ``"<namespace>:<sha256 hex>"``. The digest covers the key-schema
version, the namespace, the canonical llm_string and the canonical prompt, so
two calls share a key exactly when they mean the same request:

* transport-only settings (retries, timeouts, HTTP clients, the API key) are
  dropped from the llm_string: they change how a request travels, not what the
  model answers;
* message ids and the usage/cost/response metadata of earlier AI turns are
  dropped from the prompt: none of them is sent to the model, and LangChain
  rewrites ``usage_metadata["total_cost"]`` on every cache hit, which would
  otherwise make a replayed conversation miss once per turn.

Anything we cannot parse is kept verbatim: a key may then be more specific
than needed, never less.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import OrderedDict
from functools import lru_cache
from typing import Any

from llmcache.errors import ConfigurationError

__all__ = [
    "KEY_SCHEMA_VERSION",
    "TRANSPORT_PARAMS",
    "KeyMemo",
    "cache_key",
    "canonical_llm_string",
    "canonical_prompt",
    "namespace_prefix",
    "part_key",
    "validate_namespace",
]

#: Bump when the canonical form changes: old entries then simply miss.
KEY_SCHEMA_VERSION = 1

#: Constructor or call parameters that cannot change the answer.
TRANSPORT_PARAMS = frozenset(
    {
        "api_key",
        "async_client",
        "cache",
        "callbacks",
        "client",
        "default_headers",
        "default_query",
        "disable_streaming",
        "http_async_client",
        "http_client",
        "http_socket_options",
        "max_retries",
        "metadata",
        "openai_api_key",
        "openai_organization",
        "openai_proxy",
        "rate_limiter",
        "request_timeout",
        "stream_chunk_timeout",
        "stream_usage",
        "streaming",
        "tags",
        "timeout",
        "verbose",
    }
)

# Fields of an AI message that never reach the model on a later turn.
_AI_ONLY_METADATA = ("usage_metadata", "response_metadata")
_AI_MESSAGE_CLASSES = frozenset({"AIMessage", "AIMessageChunk"})
_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is 1-64 characters of ``[A-Za-z0-9_.-]``."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace must be 1-64 characters of letters, digits, '_', '.', '-': {namespace!r}"
        )
    return namespace


def namespace_prefix(namespace: str) -> str:
    """The prefix every key of ``namespace`` starts with."""
    return f"{namespace}:"


class KeyMemo:
    """Remembers recent keys: hashing a repeated prompt costs a dict lookup, not a parse.

    A long conversation is where this matters most (canonicalising 128
    messages re-reads ~50 KB of JSON), so the bound is on the characters the
    memo holds, not on the length of one prompt: the oldest entries go first
    when a new one would pass it. A prompt larger than an eighth of the budget
    is not kept. The function is pure, so forgetting is always safe.
    """

    def __init__(self, max_entries: int = 4096, max_chars: int = 4_000_000) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        # An OrderedDict, not a dict: the oldest entry is evicted on every new
        # key once the memo is full, and ``next(iter(dict))`` after many pops
        # from the front walks the holes they leave (4 µs a key at 4,096
        # entries, three times the hash itself); ``popitem(last=False)`` is O(1).
        self._keys: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._chars = 0

    def key(self, namespace: str, prompt: str, llm_string: str) -> str:
        memo_key = (namespace, prompt, llm_string)
        found = self._keys.get(memo_key)
        if found is not None:
            return found
        found = cache_key(namespace, prompt, llm_string)
        size = len(prompt) + len(llm_string)
        if size <= self.max_chars // 8:
            self._remember(memo_key, found, size)
        return found

    def _remember(self, memo_key: tuple[str, str, str], key: str, size: int) -> None:
        keys = self._keys
        # Threads may race here; a lost or doubled entry only costs a recompute,
        # so evict defensively (an empty memo ends the loop) rather than take a
        # lock on the hit path.
        while keys and (len(keys) >= self.max_entries or self._chars + size > self.max_chars):
            try:
                oldest, _ = keys.popitem(last=False)
            except KeyError:
                break
            self._chars -= len(oldest[1]) + len(oldest[2])
        if keys.setdefault(memo_key, key) is key:
            self._chars += size


def cache_key(namespace: str, prompt: str, llm_string: str) -> str:
    """The storage key for one (prompt, llm_string) pair in ``namespace``.

    The digest is SHA-256 of ``json.dumps([KEY_SCHEMA_VERSION, namespace,
    canonical llm_string, canonical prompt], ensure_ascii=False,
    separators=(",", ":"))`` in UTF-8. That text is its first three items'
    part, the same for every prompt to one model, then the prompt's JSON
    string and "]": the hash of the first part is computed once per
    (namespace, llm_string) and copied, so a key hashes only its prompt.
    """
    hasher = _prefix_hash(namespace, llm_string).copy()
    hasher.update(_json_string(canonical_prompt(prompt)).encode("utf-8", "surrogatepass"))
    hasher.update(b"]")
    return f"{namespace}:{hasher.hexdigest()}"


# json.dumps of a str with ensure_ascii=False is exactly this (the C encoder).
_json_string = json.encoder.encode_basestring


@lru_cache(maxsize=256)
def _prefix_hash(namespace: str, llm_string: str) -> Any:
    """SHA-256 fed the key material before the prompt (see :func:`cache_key`)."""
    head = json.dumps(
        [KEY_SCHEMA_VERSION, namespace, canonical_llm_string(llm_string)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256((head[:-1] + ",").encode("utf-8", "surrogatepass"))


def canonical_prompt(prompt: str) -> str:
    """The prompt with message ids and earlier turns' metadata removed.

    LangChain passes chat prompts as ``langchain_core.load.dumps(messages)``,
    which is plain ``json.dumps``; re-dumping what we parsed with the same
    defaults reproduces it byte for byte, so a prompt that needs no change
    takes the fast path and both paths agree.
    """
    if not _may_need_rewrite(prompt):
        return prompt
    messages = _parse_json(prompt)
    if messages is None:
        return prompt  # a plain-text LLM prompt that merely looks like JSON
    if not isinstance(messages, list) or not all(_is_serialized(m) for m in messages):
        return prompt
    for message in messages:
        kwargs = message["kwargs"]
        kwargs.pop("id", None)
        if message["id"][-1] in _AI_MESSAGE_CLASSES or kwargs.get("type") == "ai":
            for field in _AI_ONLY_METADATA:
                kwargs.pop(field, None)
    return json.dumps(messages)


def _parse_json(text: str) -> Any | None:
    """``json.loads(text)``, or None if it is not JSON (or nests too deep to parse).

    Not orjson, though it parses twice as fast: it reads integers beyond 64
    bits as floats, so two prompts differing only in such a number would
    share a key.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _may_need_rewrite(prompt: str) -> bool:
    return prompt.startswith("[") and (
        '"id": "' in prompt or '"type": "ai"' in prompt or "AIMessage" in prompt
    )


def _is_serialized(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("lc") == 1
        and isinstance(message.get("id"), list)
        and bool(message["id"])
        and isinstance(message.get("kwargs"), dict)
    )


@lru_cache(maxsize=1024)
def canonical_llm_string(llm_string: str) -> str:
    """The llm_string with transport-only parameters removed.

    Two shapes exist: ``<json of the serialized model>---<repr of call params>``
    for serializable models (ChatOpenAI and most providers), and a bare
    ``repr(sorted(params.items()))`` for the rest. Memoized: a process sees few
    distinct llm_strings and this sits on every lookup.
    """
    model_part, params_part = _split_llm_string(llm_string)
    canonical: list[Any] = []
    if model_part is not None:
        if isinstance(model_part, dict) and isinstance(model_part.get("kwargs"), dict):
            model_part = {**model_part, "kwargs": _drop_transport(model_part["kwargs"])}
        canonical.append(model_part)
    canonical.append(_canonical_params(params_part))
    return json.dumps(canonical, sort_keys=True, default=repr, ensure_ascii=False)


def _split_llm_string(llm_string: str) -> tuple[Any | None, str]:
    if not llm_string.startswith("{"):
        return None, llm_string
    try:
        model, end = json.JSONDecoder().raw_decode(llm_string)
    except ValueError:
        return None, llm_string
    rest = llm_string[end:]
    if not rest.startswith("---"):
        return None, llm_string
    return model, rest[3:]


def _canonical_params(params: str) -> Any:
    try:
        parsed = ast.literal_eval(params)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return params  # holds a non-literal (a class, an object): keep it verbatim
    if isinstance(parsed, list) and all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in parsed
    ):
        return _drop_transport(dict(parsed))
    return parsed


def _drop_transport(params: Any) -> Any:
    """Remove transport-only keys and secrets from a top-level parameter dict.

    Only the top level: a tool's JSON schema may well have a property named
    ``timeout``, and that one changes the answer.
    """
    if not isinstance(params, dict):
        return params
    return {
        key: value
        for key, value in params.items()
        if not (isinstance(key, str) and key in TRANSPORT_PARAMS) and not _is_secret(value)
    }


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get("lc") == 1 and value.get("type") == "secret"


def part_key(namespace: str, face: str, *parts: str) -> str:
    """The storage key for a face's own key, given as ``parts`` (a LangGraph node's, a store's).

    ``face`` keeps faces apart: a ByteStore key and a node key never collide,
    even if a user gives both one engine namespace.
    """
    # Length-prefixed fields: unambiguous whatever the parts hold, and several
    # times cheaper than json.dumps (a ByteStore hashes every key of a batch).
    fields = (str(KEY_SCHEMA_VERSION), face, namespace, *parts)
    material = "".join(f"{len(field)}:{field}" for field in fields)
    digest = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{namespace}:{digest}"
