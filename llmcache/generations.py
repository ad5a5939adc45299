"""LangChain generations <-> the JSON payload of a stored envelope.

Decoding builds only the classes in ``_GENERATIONS`` and ``_MESSAGES``, with
LangChain's own validating constructors and only the fields those classes
declare: nothing in the stored bytes can name a class to import or a callable
to run. A ``{"lc": 1, ...}`` dict inside a message stays a plain dict, because
nothing here ever calls ``langchain_core.load.loads`` (the CVE-2025-68664
class of injection). Pydantic objects a provider put into a message (the
``parsed`` result of ``with_structured_output``) are stored as their JSON
form; LangChain's structured-output parsers accept that dict and rebuild the
model.

Decoding is our own: the stored JSON is checked field by field against the
JSON types each field may hold, then the objects are built without a second
pydantic validation. That is a few microseconds a generation on the hit path,
against about 100 µs for ``langchain_core.load.loads``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from llmcache.errors import SerializationError

__all__ = ["Template", "compile_template", "dump_generations", "load_generations", "usage_tokens"]

_GENERATIONS: dict[str, type[Generation]] = {
    cls.__name__: cls for cls in (Generation, GenerationChunk, ChatGeneration, ChatGenerationChunk)
}
_MESSAGES: dict[str, type[BaseMessage]] = {cls.__name__: cls for cls in (AIMessage, AIMessageChunk)}
_CONTAINERS = frozenset({dict, list})
_Model = TypeVar("_Model", bound=BaseModel)
_FIELDS: dict[type[BaseModel], frozenset[str]] = {
    cls: frozenset(cls.model_fields) for cls in (*_GENERATIONS.values(), *_MESSAGES.values())
}
# ``cls.model_fields`` is a slow descriptor in recent pydantic: read it once.
_TYPE_DEFAULTS: dict[type[BaseModel], Any] = {
    cls: cls.model_fields["type"].default for cls in _FIELDS
}
# The JSON types each stored message field may hold; anything else is refused.
_FIELD_TYPES: dict[str, frozenset[type]] = {
    "content": frozenset({str, list}),
    "additional_kwargs": frozenset({dict}),
    "response_metadata": frozenset({dict}),
    "name": frozenset({str, type(None)}),
    "id": frozenset({str, type(None)}),
    "tool_calls": frozenset({list}),
    "invalid_tool_calls": frozenset({list}),
    "usage_metadata": frozenset({dict, type(None)}),
    "tool_call_chunks": frozenset({list}),
    "chunk_position": frozenset({str, type(None)}),
}
_CALL_LISTS = ("tool_calls", "invalid_tool_calls", "tool_call_chunks")
_MESSAGE_SCHEMAS = {
    name: {field: _FIELD_TYPES[field] for field in cls.model_fields if field != "type"}
    for name, cls in _MESSAGES.items()
}
_ID_STATE: list[Any] = [0, "", itertools.count()]


def dump_generations(generations: Sequence[Generation]) -> list[dict[str, Any]]:
    """The JSON-able form of what the model returned. Raises SerializationError."""
    if not isinstance(generations, Sequence) or isinstance(generations, (str, bytes)):
        raise SerializationError(f"expected a sequence of generations, got {type(generations)}")
    try:
        return [_dump_one(generation) for generation in generations]
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(f"generation is not serializable: {exc}") from exc


def _dump_one(generation: Generation) -> dict[str, Any]:
    name = type(generation).__name__
    if _GENERATIONS.get(name) is not type(generation):
        raise SerializationError(f"cannot cache a {type(generation).__qualname__}")
    item: dict[str, Any] = {
        "type": name,
        "text": generation.text,
        "info": to_jsonable_python(generation.generation_info),
    }
    if isinstance(generation, ChatGeneration):
        message = generation.message
        message_name = type(message).__name__
        if _MESSAGES.get(message_name) is not type(message):
            raise SerializationError(f"cannot cache a {type(message).__qualname__}")
        item["message"] = {
            "type": message_name,
            "fields": message.model_dump(mode="json", exclude={"type"}),
        }
    return item


@dataclass(frozen=True)
class _Part:
    """One validated generation: its classes and fields, ready to be copied and built."""

    generation_cls: type[Generation]
    generation_fields: dict[str, Any]
    message_cls: type[BaseMessage] | None
    message_fields: dict[str, Any] | None


class Template:
    """A validated stored payload that builds fresh generations on every call.

    Checking the payload is done once per stored record (``compile_template``);
    an in-memory hit on the same record then only copies containers and builds
    objects. ``build`` copies every container: mutating what a hit returned
    never changes the cache.
    """

    __slots__ = ("_parts",)

    def __init__(self, parts: list[_Part]) -> None:
        self._parts = parts

    def build(self) -> list[Generation]:
        generations: list[Generation] = []
        for part in self._parts:
            fields = _copy(part.generation_fields)
            if part.message_cls is not None:
                message_fields = _copy(part.message_fields)
                # Every hit is a new message: LangChain and its tracers key on message ids.
                message_fields["id"] = _fresh_id()
                fields["message"] = _build(part.message_cls, message_fields)
            generations.append(_build(part.generation_cls, fields))
        return generations


def load_generations(payload: Any) -> list[Generation]:
    """Fresh generation objects from a stored payload, each message with a new id."""
    return compile_template(payload).build()


def compile_template(payload: Any) -> Template:
    """Check a stored payload against the allowlist. Raises SerializationError."""
    if not isinstance(payload, list) or not payload:
        raise SerializationError("stored generations are not a non-empty list")
    return Template([_compile_one(item) for item in payload])


def _compile_one(item: Any) -> _Part:
    if not isinstance(item, dict):
        raise SerializationError("stored generation is not an object")
    cls = _GENERATIONS.get(item.get("type"))  # type: ignore[arg-type]
    text = item.get("text")
    info = item.get("info")
    if cls is None or not isinstance(text, str) or not isinstance(info, (dict, type(None))):
        raise SerializationError(f"not an allowed generation: {item.get('type')!r}")
    fields = {"text": text, "generation_info": info, "type": _TYPE_DEFAULTS[cls]}
    if not issubclass(cls, ChatGeneration):
        return _Part(cls, fields, None, None)
    message_cls, message_fields = _compile_message(item.get("message"))
    return _Part(cls, fields, message_cls, message_fields)


def _compile_message(stored: Any) -> tuple[type[BaseMessage], dict[str, Any]]:
    if not isinstance(stored, dict):
        raise SerializationError("stored message is not an object")
    cls = _MESSAGES.get(stored.get("type"))
    fields = stored.get("fields")
    if cls is None or not isinstance(fields, dict):
        raise SerializationError(f"message class not allowed: {stored.get('type')!r}")
    schema = _MESSAGE_SCHEMAS[cls.__name__]
    for name, value in fields.items():
        expected = schema.get(name)
        if expected is None:
            raise SerializationError(f"unknown message field: {name!r}")
        if type(value) not in expected:
            raise SerializationError(f"message field {name!r} has type {type(value).__name__}")
    for name in _CALL_LISTS:
        calls = fields.get(name)
        if calls and not all(type(call) is dict for call in calls):
            raise SerializationError(f"message field {name!r} holds a non-object")
    return cls, {**fields, "type": _TYPE_DEFAULTS[cls]}


def _build(cls: type[_Model], fields: dict[str, Any]) -> _Model:
    """Instantiate without re-validating what ``_load_*`` already checked.

    The same as ``cls.model_construct(**fields)`` when every field is given,
    at a third of its cost on the hit path; a payload written before a field
    existed takes ``model_construct``, which fills in the defaults.
    """
    if fields.keys() != _FIELDS[cls]:
        return cls.model_construct(**fields)
    instance = cls.__new__(cls)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(fields))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): much cheaper than deepcopy."""
    kind = type(value)
    if kind is dict:
        if not value:
            return {}
        return {k: _copy(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
    if kind is list:
        if not value:
            return []
        return [_copy(v) if type(v) in _CONTAINERS else v for v in value]
    return value


def _fresh_id() -> str:
    # uuid4() costs ~3 µs a hit; a random per-process tag plus a counter is unique too.
    if _ID_STATE[0] != os.getpid():
        _ID_STATE[:] = [os.getpid(), f"{os.urandom(6).hex()}{os.getpid():x}", itertools.count()]
    return f"lc_cache-{_ID_STATE[1]}-{next(_ID_STATE[2])}"


def usage_tokens(payload: Any) -> int:
    """Total tokens the stored response cost upstream (0 when unknown).

    Every generation of one response carries the same usage, so the first is
    the response's.
    """
    try:
        usage = payload[0]["message"]["fields"].get("usage_metadata") or {}
        total = usage.get("total_tokens", 0)
    except (LookupError, TypeError, AttributeError):
        return 0
    return total if isinstance(total, int) and total > 0 else 0
