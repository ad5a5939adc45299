"""Scopes: which stored questions a new one may be compared with. Pure functions.

A semantic match is only ever looked for among entries that agree *exactly*
on everything but the wording of the last user message: the namespace, the
canonical llm_string (model, temperature, tools, response format...), every
earlier message (system prompt, earlier turns, tool calls and results), the
embedder's identity and version, and the guards' version. Those are hashed
into a scope id; the index searches one scope at a time, so entries of two
scopes never compete, and a changed embedder or guard set starts afresh.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from llmcache.keys import canonical_llm_string, canonical_prompt

__all__ = ["SCOPE_SCHEMA_VERSION", "Query", "query_of", "scope_id", "split_prompt"]

#: Bump when what goes into a scope changes.
SCOPE_SCHEMA_VERSION = 1

_HUMAN = frozenset({"HumanMessage", "HumanMessageChunk"})


@dataclass(frozen=True)
class Query:
    """A prompt seen by the semantic tier: the scope it lives in and the text compared."""

    namespace: str
    scope: str
    text: str


def split_prompt(prompt: str) -> tuple[str, str] | None:
    """(the canonical context, the last user message's text), or None if not eligible.

    LangChain hands chat prompts over as the JSON of the serialized messages;
    anything else is a plain-text LLM prompt, all of it the question. The
    last message must be a human message whose content is plain text (a
    string, or text blocks only): images, tool results or an assistant turn
    last are not compared by meaning.
    """
    if not prompt.startswith("["):
        return ("", prompt) if prompt.strip() else None
    try:
        messages = json.loads(canonical_prompt(prompt))
    except ValueError:
        return ("", prompt) if prompt.strip() else None
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not (isinstance(last, dict) and isinstance(last.get("kwargs"), dict)):
        return None
    ids = last.get("id")
    if not (isinstance(ids, list) and ids and ids[-1] in _HUMAN):
        return None
    kwargs = dict(last["kwargs"])
    text = _plain_text(kwargs.pop("content", None))
    if text is None or not text.strip():
        return None
    kwargs.pop("id", None)
    kwargs.pop("type", None)
    # Anything else on the last message (a name, extra kwargs) must match exactly.
    context = json.dumps([messages[:-1], kwargs], sort_keys=True, ensure_ascii=False)
    return context, text


def _plain_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                if set(block) - {"type", "text", "id"}:
                    return None  # annotations, cache control: not plain text
                parts.append(str(block.get("text", "")))
            else:
                return None
        return "".join(parts)
    return None


def scope_id(
    namespace: str, llm_string: str, context: str, embedder: str, guards_version: int
) -> str:
    """The hashed scope: equal exactly when every part is equal."""
    material = json.dumps(
        [
            SCOPE_SCHEMA_VERSION,
            namespace,
            canonical_llm_string(llm_string),
            context,
            embedder,
            guards_version,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def query_of(
    namespace: str, prompt: str, llm_string: str, embedder: str, guards_version: int
) -> Query | None:
    """The query for a prompt, or None when the prompt is not eligible."""
    split = split_prompt(prompt)
    if split is None:
        return None
    context, text = split
    return Query(
        namespace, scope_id(namespace, llm_string, context, embedder, guards_version), text
    )
