"""A cached answer as the chunks of a stream, and a completed stream as the answer to store.

Pure functions over LangChain's message classes, for ``llmcache.streaming``:
no cache, no model, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation

__all__ = ["DEFAULT_CHUNK_CHARS", "served_chunks", "stored_answer", "text_pieces"]

#: A served stream's text comes in pieces of whole words, each at least this long.
DEFAULT_CHUNK_CHARS = 16

_WORDS = re.compile(r"\S+\s*|\s+")


def served_chunks(
    generation: Generation, chunk_chars: int = DEFAULT_CHUNK_CHARS
) -> Iterator[ChatGenerationChunk]:
    """A cached generation as the chunks of a stream; added up, they equal its message.

    Text content in pieces of whole words (each at least ``chunk_chars``
    long but the last); list content (content blocks) in one chunk; each
    tool call as one tool-call chunk (its arguments as JSON); then a last
    chunk with the usage, the response metadata and the generation info.
    Every chunk carries the message's id. One exception to "equal": an
    invalid tool call goes out with its raw arguments, and LangChain reads
    them back as it reads any stream's (its ``error`` is not kept; arguments
    its lenient JSON parser can complete become a call).

    Raises ValueError at once for a generation that holds no AI message; the
    chunks are made as they are read, so the first comes before the rest is built.
    """
    message = getattr(generation, "message", None)
    if message is None:
        message = AIMessage(content=generation.text)
    if not isinstance(message, AIMessage):
        raise ValueError(f"not an AI message: {type(message).__name__}")
    return _chunks(message, generation.generation_info, chunk_chars)


def _chunks(
    message: AIMessage, generation_info: dict[str, Any] | None, chunk_chars: int
) -> Iterator[ChatGenerationChunk]:
    content = message.content
    empty: str | list[str | dict[str, Any]] = "" if isinstance(content, str) else []
    extra = dict(message.additional_kwargs)  # on the first chunk, whichever it is

    def chunk(**fields: Any) -> ChatGenerationChunk:
        nonlocal extra
        made = AIMessageChunk(id=message.id, additional_kwargs=extra, **fields)
        extra = {}
        return ChatGenerationChunk(message=made)

    if isinstance(content, str):
        for piece in text_pieces(content, chunk_chars):
            yield chunk(content=piece)
    elif content:
        yield chunk(content=list(content))
    index = 0
    for call in message.tool_calls:
        args = json.dumps(call["args"], ensure_ascii=False)
        yield chunk(content=empty, tool_call_chunks=[_tool_chunk(call, args, index)])
        index += 1
    for invalid in message.invalid_tool_calls:
        yield chunk(content=empty, tool_call_chunks=[_tool_chunk(invalid, None, index)])
        index += 1
    last = chunk(content=empty, chunk_position="last")
    # Assigned, not validated: a hit's usage may carry keys UsageMetadata does not
    # declare (LangChain's total_cost), which validation would drop.
    last.message.usage_metadata = message.usage_metadata  # type: ignore[attr-defined]
    last.message.response_metadata = dict(message.response_metadata)
    last.generation_info = generation_info
    yield last


def _tool_chunk(call: Any, args: str | None, index: int) -> ToolCallChunk:
    return tool_call_chunk(
        name=call.get("name"),
        args=args if args is not None else call.get("args"),
        id=call.get("id"),
        index=index,
    )


def text_pieces(text: str, chunk_chars: int) -> list[str]:
    """``text`` in pieces of whole words (with their trailing spaces), each >= ``chunk_chars``."""
    pieces: list[str] = []
    current = ""
    for word in _WORDS.findall(text):
        current += word
        if len(current) >= chunk_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def stored_answer(chunks: Sequence[ChatGenerationChunk]) -> list[ChatGeneration] | None:
    """What a completed stream stores: its chunks added up, as invoke's streaming path stores it.

    None for a stream with no chunks (nothing to store).
    """
    if not chunks:
        return None
    generation = generate_from_stream(iter(chunks)).generations[0]
    message = generation.message
    # LangChain's invoke folds generation info into the message's metadata before storing.
    message.response_metadata = {**(generation.generation_info or {}), **message.response_metadata}
    return [generation]
