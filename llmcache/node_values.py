"""A LangGraph node's writes <-> JSON, building only what an allowlist admits.

LangGraph hands its node cache the node's writes as live Python objects, a
list of ``(channel, value)`` pairs, and expects the cache to serialize them
(its ``InMemoryCache`` and ``RedisCache`` use ``JsonPlusSerializer``, whose
decoders rebuild classes named in the stored bytes). Here nothing in the
stored bytes names a class to import: a tagged value names an entry of a
:class:`ValueTypes` allowlist, and decoding builds only

* plain JSON (str, int, float, bool, None, lists, dicts with string keys);
* tuples, and dicts with other keys, tagged so they come back as they went;
* LangChain messages (the classes in ``_MESSAGES``), with their own
  validating constructors and only the fields they declare;
* LangGraph's ``Send`` (a node's fan-out);
* pydantic models and dataclasses the user registers, by a name the user
  gave or their qualified name, never imported from the stored bytes.

Anything else cannot be stored (SerializationError): the node's result is not
cached and the node runs again next time. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from llmcache.errors import ConfigurationError, SerializationError

__all__ = ["ValueTypes", "dump_writes", "load_writes"]

_TAG = "$t"  # a dict holding this key is always a tagged value
_MESSAGES: dict[str, type[BaseMessage]] = {
    cls.__name__: cls
    for cls in (
        AIMessage,
        AIMessageChunk,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        HumanMessageChunk,
        RemoveMessage,
        SystemMessage,
        ToolMessage,
    )
}
_MAX_DEPTH = 200


class ValueTypes:
    """The user's classes a node's writes may hold: pydantic models and dataclasses.

    ``ValueTypes([Plan, Step])`` registers each under ``module.QualName``;
    ``ValueTypes({"plan": Plan})`` under names of your choosing, which keeps
    stored entries readable after a class moves.
    """

    def __init__(self, types: Iterable[type] | Mapping[str, type] = ()) -> None:
        named = types.items() if isinstance(types, Mapping) else ((None, cls) for cls in types)
        self._by_name: dict[str, type] = {}
        self._by_class: dict[type, str] = {}
        for name, cls in named:
            if not isinstance(cls, type) or not (
                issubclass(cls, BaseModel) or dataclasses.is_dataclass(cls)
            ):
                raise ConfigurationError(
                    f"only pydantic models and dataclasses can be registered, not {cls!r}"
                )
            if issubclass(cls, BaseMessage):
                raise ConfigurationError(f"{cls.__name__}: LangChain messages need no registering")
            label = name or f"{cls.__module__}.{cls.__qualname__}"
            if label in self._by_name:
                raise ConfigurationError(f"two classes registered as {label!r}")
            self._by_name[label] = cls
            self._by_class[cls] = label

    def name_of(self, cls: type) -> str | None:
        return self._by_class.get(cls)

    def named(self, name: str) -> type | None:
        return self._by_name.get(name)


def dump_writes(writes: Iterable[Any], types: ValueTypes) -> list[list[Any]]:
    """A node's ``(channel, value)`` writes as JSON. Raises SerializationError."""
    dumped: list[list[Any]] = []
    for write in writes:
        if not isinstance(write, (tuple, list)) or len(write) != 2 or type(write[0]) is not str:
            raise SerializationError(f"a write is a (channel, value) pair, not {write!r:.80}")
        dumped.append([write[0], _dump(write[1], types, 0)])
    return dumped


def load_writes(payload: Any, types: ValueTypes) -> list[tuple[str, Any]]:
    """The writes stored by :func:`dump_writes`, as fresh objects. Raises SerializationError."""
    if not isinstance(payload, list):
        raise SerializationError("stored node writes are not a list")
    writes: list[tuple[str, Any]] = []
    for item in payload:
        if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not str:
            raise SerializationError("a stored write is not a [channel, value] pair")
        writes.append((item[0], _load(item[1], types, 0)))
    return writes


def _dump(value: Any, types: ValueTypes, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise SerializationError("value nests too deep to store")
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(f"{value} is not JSON")
        return value
    depth += 1
    if kind is list:
        return [_dump(item, types, depth) for item in value]
    if kind is tuple:
        return {_TAG: "tuple", "v": [_dump(item, types, depth) for item in value]}
    if kind is dict:
        if _TAG not in value and all(type(key) is str for key in value):
            return {key: _dump(item, types, depth) for key, item in value.items()}
        pairs = [[_dump(k, types, depth), _dump(v, types, depth)] for k, v in value.items()]
        return {_TAG: "map", "v": pairs}
    if isinstance(value, BaseMessage):
        name = kind.__name__
        if _MESSAGES.get(name) is not kind:
            raise SerializationError(f"{name} is not a message class the cache can rebuild")
        return {_TAG: "message", "n": name, "v": _jsonable(value.model_dump())}
    if _is_send(value):
        return {_TAG: "send", "node": value.node, "v": _dump(value.arg, types, depth)}
    registered = types.name_of(kind)
    if registered is None:
        raise SerializationError(
            f"{kind.__module__}.{kind.__qualname__} is not registered: pass it in types= "
            "(pydantic models and dataclasses), or return plain JSON values"
        )
    if isinstance(value, BaseModel):
        return {_TAG: "model", "n": registered, "v": _jsonable(value.model_dump(mode="json"))}
    fields = {
        field.name: _dump(getattr(value, field.name), types, depth)
        for field in dataclasses.fields(value)
        if field.init
    }
    return {_TAG: "dataclass", "n": registered, "v": fields}


def _load(value: Any, types: ValueTypes, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise SerializationError("stored value nests too deep")
    if isinstance(value, list):
        return [_load(item, types, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value  # a JSON scalar
    tag = value.get(_TAG)
    if tag is None:
        return {key: _load(item, types, depth + 1) for key, item in value.items()}
    body = value.get("v")
    try:
        if tag == "tuple" and isinstance(body, list):
            return tuple(_load(item, types, depth + 1) for item in body)
        if tag == "map" and isinstance(body, list):
            return {
                _hashable(_load(k, types, depth + 1)): _load(v, types, depth + 1) for k, v in body
            }
        if tag == "message" and isinstance(body, dict):
            cls = _MESSAGES.get(value.get("n"))  # type: ignore[arg-type]
            if cls is None:
                raise SerializationError(f"stored message class {value.get('n')!r} is not allowed")
            return cls.model_validate(body)
        if tag == "send" and isinstance(value.get("node"), str):
            from langgraph.types import Send

            return Send(value["node"], _load(body, types, depth + 1))
        if tag in ("model", "dataclass") and isinstance(body, dict):
            cls = types.named(value.get("n"))  # type: ignore[arg-type]
            if cls is None:
                raise SerializationError(f"stored class {value.get('n')!r} is not registered")
            if tag == "model" and issubclass(cls, BaseModel):
                return cls.model_validate(body)
            if tag == "dataclass" and dataclasses.is_dataclass(cls):
                return cls(**{key: _load(item, types, depth + 1) for key, item in body.items()})
    except (ValidationError, TypeError, ValueError) as exc:
        raise SerializationError(f"stored {tag} value does not rebuild: {exc}") from exc
    raise SerializationError(f"stored value has an unknown or malformed tag {tag!r:.40}")


def _jsonable(value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(f"value is not JSON-serializable: {exc}") from exc


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise TypeError("a stored map key is not hashable")
    return key


def _is_send(value: Any) -> bool:
    # Imported here: the codec is usable (and tested) without LangGraph installed.
    try:
        from langgraph.types import Send
    except ImportError:  # pragma: no cover - the face imports langgraph anyway
        return False
    return type(value) is Send
