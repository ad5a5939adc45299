"""JSON values for the plain-Python face: checked, copied, written canonically. Pure.

A value here is exactly what JSON can carry back unchanged: ``dict`` with
``str`` keys, ``list``, ``str``, ``int``, finite ``float``, ``bool`` and
``None``, of exactly those types. Anything else is refused rather than
approximated: a tuple would come back as a list, an ``IntEnum`` as an int, a
``{1: ...}`` key as ``"1"`` (sharing a key with ``{"1": ...}``), NaN as
nothing JSON can say. So a cached result is equal to, and of the same types
as, what the function returned, and two argument lists share a key only when
they are the same JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llmcache.errors import ConfigurationError
from llmcache.serialization import MAX_DEPTH

__all__ = ["MAX_VALUE_DEPTH", "canonical_json", "fresh", "json_copy"]

#: The deepest nesting of a value: the stored envelope around it takes a few levels.
MAX_VALUE_DEPTH = MAX_DEPTH - 8


def json_copy(value: Any, what: str) -> Any:
    """A copy of ``value`` made only of JSON types; ConfigurationError naming ``what`` if not."""
    return _copy(value, what, MAX_VALUE_DEPTH)


def _copy(value: Any, what: str, depth: int) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise ConfigurationError(f"{what} holds {value!r}, which JSON cannot carry")
    if depth <= 0:
        raise ConfigurationError(f"{what} nests deeper than {MAX_VALUE_DEPTH} levels")
    if kind is list:
        return [_copy(item, what, depth - 1) for item in value]
    if kind is dict:
        copied = {}
        for key, item in value.items():
            if type(key) is not str:
                raise ConfigurationError(
                    f"{what} holds a dict key {key!r} ({type(key).__name__}); JSON keys are str"
                )
            copied[key] = _copy(item, what, depth - 1)
        return copied
    hint = " (a tuple is not JSON: pass a list)" if kind is tuple else ""
    raise ConfigurationError(
        f"{what} holds a {kind.__qualname__}, not a JSON value{hint}; values are"
        " dict (str keys), list, str, int, float, bool or None, never pickled"
    )


def fresh(value: Any) -> Any:
    """A copy of a checked JSON value that shares nothing mutable with it."""
    kind = type(value)
    if kind is list:
        return [fresh(item) for item in value]
    if kind is dict:
        return {key: fresh(item) for key, item in value.items()}
    return value  # immutable


def canonical_json(value: Any) -> str:
    """One text per JSON value: sorted keys, no spaces (``value`` from :func:`json_copy`)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
