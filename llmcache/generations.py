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
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from llmcache.errors import SerializationError
from llmcache.pricing import answer_cost

__all__ = [
    "Template",
    "build_owned",
    "compile_template",
    "dump_generations",
    "load_generations",
    "usage",
    "usage_cost",
    "usage_tokens",
]

_GENERATIONS: dict[str, type[Generation]] = {
    cls.__name__: cls for cls in (Generation, GenerationChunk, ChatGeneration, ChatGenerationChunk)
}
_MESSAGES: dict[str, type[BaseMessage]] = {cls.__name__: cls for cls in (AIMessage, AIMessageChunk)}
_CHAT_GENERATIONS = frozenset(
    cls for cls in _GENERATIONS.values() if issubclass(cls, ChatGeneration)
)
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


def dump_generations(generations: Sequence[Generation]) -> list[dict[str, Any]]:
    """The JSON-able form of what the model returned. Raises SerializationError."""
    value: object = generations  # callers outside the type checker pass anything
    if not isinstance(value, (list, tuple)):
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
        fields = message.model_dump(mode="json", exclude={"type"})
        item["message"] = {"type": message_name, "fields": fields}
        item["text"] = _shared_text(item["text"], fields)
    return item


def _shared_text(text: Any, fields: Any) -> Any:
    """The message's own content string when the generation's text equals it.

    A chat generation's text is a copy of its message's content: one string
    object for both halves the memory a kept answer needs.
    """
    content = fields.get("content") if type(fields) is dict else None
    return content if type(content) is str and content == text else text


@dataclass(slots=True)
class _Part:
    """One validated generation, with private copies of its containers to copy from."""

    generation_cls: type[Generation]
    text: str
    # How to make a new copy of the generation_info / the message fields
    # (see ``_copy_plan``). None: a single-use template, built from ``fresh`` only.
    copy_info: _Plan | None
    copy_fields: _Plan | None
    message_cls: type[BaseMessage] | None
    #: The message's fields once ``id`` and ``type`` are added are all its
    #: class declares (else ``model_construct`` fills in the defaults).
    message_complete: bool
    # The decoded dicts themselves, handed to the first build only: a record
    # just read from disk or Redis is used once, and needs no copy.
    fresh: tuple[Any, Any] | None = None


# Guards the one-time hand-off of a part's ``fresh`` dicts: held for two
# assignments, so one lock for every template costs less than one each.
_HAND_OFF = threading.Lock()


class Template:
    """A validated stored payload that builds fresh generations on every call.

    Checking the payload is done once per stored record (``compile_template``);
    an in-memory hit on the same record then only copies its containers (the
    strings and numbers in them are immutable, and shared) and builds
    objects: mutating what a hit returned never changes the cache.
    """

    __slots__ = ("_parts", "nanos", "tokens")

    def __init__(self, parts: list[_Part], tokens: int, nanos: int = 0) -> None:
        self._parts = parts
        self.tokens = tokens  #: what the stored response cost upstream (0 when unknown)
        #: ... and in nano-dollars (0 with no tokens, pricing.UNKNOWN with no known price)
        self.nanos = nanos

    def build(self) -> list[Generation]:
        generations: list[Generation] = []
        for part in self._parts:
            fresh = None
            if part.fresh is not None:
                with _HAND_OFF:  # two threads must never both take the same dicts
                    fresh, part.fresh = part.fresh, None
            if fresh is not None:
                info, message_fields = fresh
            elif part.copy_info is None or part.copy_fields is None:
                raise SerializationError("a single-use template was built twice")
            else:
                info, message_fields = _copy(part.copy_info), _copy(part.copy_fields)
            generations.append(
                _make(
                    part.generation_cls,
                    part.text,
                    info,
                    part.message_cls,
                    message_fields,
                    part.message_complete,
                )
            )
        return generations


def _make(
    cls: type[Generation],
    text: str,
    info: Any,
    message_cls: type[BaseMessage] | None,
    message_fields: Any,
    message_complete: bool,
) -> Generation:
    """One generation (and its message) around checked containers it may keep."""
    fields = {"text": text, "generation_info": info}
    if message_cls is not None:
        # Every hit is a new message: LangChain and its tracers key on message ids.
        message_fields["id"] = _fresh_id()
        message_fields["type"] = _TYPE_DEFAULTS[message_cls]
        fields["message"] = _build(message_cls, message_fields, message_complete)
    fields["type"] = _TYPE_DEFAULTS[cls]
    return _build(cls, fields, _GENERATION_COMPLETE[cls])


def load_generations(payload: Any) -> list[Generation]:
    """Fresh generation objects from a stored payload, each message with a new id."""
    return compile_template(payload, owned=False).build()


def build_owned(payload: Any) -> tuple[list[Generation], int, int]:
    """Generations made of ``payload``'s own containers, with its tokens and cost.

    For a payload nobody else holds (parsed for this one read): the checks of
    :func:`compile_template`, with no template, copy or hand-off, so a read
    of bytes kept in memory costs a parse and this. Raises SerializationError.
    """
    if type(payload) is not list or not payload:
        raise SerializationError("stored generations are not a non-empty list")
    tokens, nanos = usage(payload)
    generations = []
    for item in payload:
        cls, text, info, message_cls, fields, complete = _checked(item)
        generations.append(_make(cls, text, info, message_cls, fields, complete))
    return generations, tokens, nanos


def compile_template(payload: Any, *, owned: bool, reusable: bool = True) -> Template:
    """Check a stored payload against the allowlist. Raises SerializationError.

    With ``owned``, the first build hands out ``payload``'s own containers:
    only for a payload nobody else holds (one just parsed from stored bytes).
    An owned template that is not ``reusable`` (its record is not kept in
    this process) skips preparing the copies a second build would need.
    """
    if not isinstance(payload, list) or not payload:
        raise SerializationError("stored generations are not a non-empty list")
    tokens, nanos = usage(payload)
    try:
        parts = [_compile_one(item, reusable=reusable or not owned) for item in payload]
    except RecursionError as exc:  # JSON nested deeper than we copy
        raise SerializationError("stored generation is nested too deeply") from exc
    if not owned:
        for part in parts:
            part.fresh = None
    return Template(parts, tokens, nanos)


def _compile_one(item: Any, *, reusable: bool) -> _Part:
    cls, text, info, message_cls, fields, complete = _checked(item)
    if not reusable:
        return _Part(cls, text, None, None, message_cls, complete, fresh=(info, fields))
    return _Part(
        cls, text, _copy_plan(info), _copy_plan(fields), message_cls, complete, fresh=(info, fields)
    )


def _checked(
    item: Any,
) -> tuple[type[Generation], str, Any, type[BaseMessage] | None, Any, bool]:
    """One stored generation checked against the allowlist: its class, text, info,
    message class and fields, and whether those fields are all the class declares."""
    if type(item) is not dict:
        raise SerializationError("stored generation is not an object")
    kind = item.get("type")
    # Looked up only when a string: a list or dict there is unhashable (a TypeError).
    cls = _GENERATIONS.get(kind) if type(kind) is str else None
    text = item.get("text")
    info = item.get("info")
    # isinstance: an unparsed payload (a coalesced leader's) may hold str and dict subclasses.
    if cls is None or not isinstance(text, str) or not isinstance(info, (dict, type(None))):
        raise SerializationError(f"not an allowed generation: {item.get('type')!r}")
    message_cls, fields, complete = (None, None, False)
    if cls in _CHAT_GENERATIONS:
        message_cls, fields = _compile_message(item.get("message"))
        text = _shared_text(text, fields)  # parsed from JSON, they are two objects
        # The schema check let through only declared fields other than type; with
        # id and type added, the count tells whether every declared one is there.
        added = 1 + ("id" not in fields)
        complete = len(fields) + added == len(_FIELDS[message_cls])
    return cls, text, info, message_cls, fields, complete


_IMMUTABLE_JSON = frozenset({str, int, float, bool, type(None)})

#: A JSON value ready to be copied again and again: ``(value, None)`` for an
#: immutable one, else ``(private, nested)``: a private shallow copy of the
#: container (a dict, or a tuple for a list) holding its immutable items,
#: with placeholders where containers go, and for each nested container
#: ``(slot, its private copy, its nested)``.
_Plan = tuple[Any, tuple[tuple[Any, Any, Any], ...] | None]


def _copy_plan(value: Any) -> _Plan:
    """How to make new copies of the JSON ``value`` (see :func:`_copy`).

    ``value`` is copied once, privately, first, into dicts (of immutable
    items, which the garbage collector does not track) and tuples, not
    closures: a kept template holds a third to a half of the tracked objects
    closures did, and every full collection walks every kept template.
    Anything not JSON is refused.
    """
    kind = type(value)
    if kind in _IMMUTABLE_JSON:
        return value, None
    return _private(value)


def _private(value: Any) -> tuple[Any, tuple[tuple[Any, Any, Any], ...]]:
    kind = type(value)
    if kind is dict:
        items = value.items()
    elif kind is list:
        items = enumerate(value)
    else:
        raise SerializationError(f"not a JSON value: {kind.__name__}")
    private: Any = {} if kind is dict else [None] * len(value)
    nested = []
    for slot, item in items:
        if kind is dict and type(slot) is not str:
            raise SerializationError(f"not a JSON object key: {type(slot).__name__}")
        if type(item) in _IMMUTABLE_JSON:
            private[slot] = item
        else:
            private[slot] = None  # a placeholder, replaced on every copy
            nested.append((slot, *_private(item)))
    return (private if kind is dict else tuple(private)), tuple(nested)


def _copy(plan: _Plan) -> Any:
    """A new copy of a planned JSON value (see :func:`_copy_plan`)."""
    private, nested = plan
    return private if nested is None else _copy_container(private, nested)


def _copy_container(private: Any, nested: tuple[tuple[Any, Any, Any], ...]) -> Any:
    """Every dict and list anew; the strings, numbers, booleans and None in
    them shared (they are immutable): about 60% of the cost of parsing a
    JSON copy. A container with none nested is copied here, without a call."""
    new = private.copy() if type(private) is dict else list(private)
    for slot, child, child_nested in nested:
        if not child_nested:
            new[slot] = child.copy() if type(child) is dict else list(child)
        else:
            new[slot] = _copy_container(child, child_nested)
    return new


def _compile_message(stored: Any) -> tuple[type[BaseMessage], dict[str, Any]]:
    if not isinstance(stored, dict):
        raise SerializationError("stored message is not an object")
    kind = stored.get("type")
    cls = _MESSAGES.get(kind) if type(kind) is str else None
    fields = stored.get("fields")
    if cls is None or not isinstance(fields, dict):
        raise SerializationError(f"message class not allowed: {stored.get('type')!r}")
    schema = _MESSAGE_SCHEMAS[cls.__name__]
    for name, value in fields.items():
        allowed = schema.get(name)
        if allowed is None:
            raise SerializationError(f"unknown message field: {name!r}")
        if type(value) not in allowed:
            raise SerializationError(f"message field {name!r} has type {type(value).__name__}")
    for name in _CALL_LISTS:
        calls = fields.get(name)
        if calls and not all(type(call) is dict for call in calls):
            raise SerializationError(f"message field {name!r} holds a non-object")
    content = fields.get("content")
    # Content blocks are strings or objects: LangChain reads a hit's blocks with .get.
    if type(content) is list and not all(type(block) in (str, dict) for block in content):
        raise SerializationError("message content holds a block that is not a string or object")
    return cls, fields


# The slots every pydantic model instance has, set through their descriptors:
# half the cost of ``object.__setattr__`` by name.
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__
_new_instance = object.__new__
# Generations are built from text, generation_info, type (and message): all their fields?
_GENERATION_COMPLETE: dict[type[BaseModel], bool] = {
    cls: _FIELDS[cls]
    == {"text", "generation_info", "type"}
    | ({"message"} if issubclass(cls, ChatGeneration) else set())
    for cls in _GENERATIONS.values()
}


def _build(cls: type[_Model], fields: dict[str, Any], complete: bool) -> _Model:
    """Instantiate without re-validating what ``_compile_*`` already checked.

    With ``complete`` (``fields`` has every field the class declares), the
    same as ``cls.model_construct(**fields)`` at a fifth of its cost on the
    hit path; a payload written before a field existed takes
    ``model_construct``, which fills in the defaults. These classes have no
    private attributes and no extra fields.
    """
    if not complete:
        return cls.model_construct(**fields)
    instance: _Model = _new_instance(cls)
    _SET_DICT(instance, fields)
    _SET_FIELDS_SET(instance, set(fields))
    _SET_EXTRA(instance, None)
    _SET_PRIVATE(instance, None)
    return instance


def _fresh_id() -> str:
    # uuid4() costs ~3 µs a hit; a random per-process tag plus a counter is unique too.
    return f"lc_cache-{_ids.tag}-{next(_ids.counter)}"


class _Ids:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tag = f"{os.urandom(6).hex()}{os.getpid():x}"
        self.counter = itertools.count()


_ids = _Ids()
if hasattr(os, "register_at_fork"):  # a forked child must not repeat the parent's ids
    os.register_at_fork(after_in_child=_ids.reset)


def usage(payload: Any) -> tuple[int, int]:
    """(:func:`usage_tokens`, :func:`usage_cost`) of a stored payload, in one read of it."""
    try:
        fields = payload[0]["message"]["fields"]
        usage = fields.get("usage_metadata") or {}
        total = usage.get("total_tokens", 0)
    except (LookupError, TypeError, AttributeError):
        return 0, 0
    if not (isinstance(total, int) and total > 0):
        return 0, 0
    metadata = fields.get("response_metadata") or {}
    model = metadata.get("model_name") or metadata.get("model") if type(metadata) is dict else None
    details = usage.get("input_token_details")
    cached = details.get("cache_read") if type(details) is dict else None
    try:
        # Most answers of a process share a handful of models and token counts.
        nanos = _cost(
            model if type(model) is str else None,
            usage.get("input_tokens"),
            usage.get("output_tokens"),
            cached,
        )
    except TypeError:  # a count that is not hashable (a list): priced without the memo
        nanos = answer_cost(usage, model if isinstance(model, str) else None)
    return total, nanos


@lru_cache(maxsize=4096)
def _cost(model: str | None, input_tokens: Any, output_tokens: Any, cached: Any) -> int:
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cached is not None:
        usage["input_token_details"] = {"cache_read": cached}
    return answer_cost(usage, model)


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


def usage_cost(payload: Any) -> int:
    """What the stored response cost upstream in nano-dollars (see ``pricing.answer_cost``)."""
    try:
        fields = payload[0]["message"]["fields"]
        usage = fields.get("usage_metadata") or {}
        metadata = fields.get("response_metadata") or {}
        model = metadata.get("model_name") or metadata.get("model")
    except (LookupError, TypeError, AttributeError):
        return 0
    if not isinstance(usage, dict):
        return 0
    return answer_cost(usage, model if isinstance(model, str) else None)
