"""memoize: a function's JSON results kept in the engine's tiers, keyed by its arguments.

``@cache.memoize(ttl=600, depends_on=["kb:menus"])`` over a plain or an
``async def`` function whose arguments and result are JSON values
(``llmcache.json_values``; never pickle). The key is the function's module
and qualified name, ``version``, and the canonical JSON of its arguments as
bound to its signature with defaults applied, so ``f(1)``, ``f(x=1)`` and
``f()`` with ``x=1`` as default share one entry. ``key=`` replaces the
arguments' part with a string of your own (for arguments that are not JSON,
such as ``self``). ``depends_on`` is a collection of dependency names, or a
function of the call's arguments giving them; the enclosing
``with depends_on(...)`` block's names are added, and ``invalidate(name)``
makes every result that depended on ``name`` stale, in every process.

Identical concurrent calls (threads or asyncio tasks; with a Redis L2, other
processes too) run the function once: the first call leads, the others wait
for its result (the engine's coalescing, bounded by the cache's
``coalesce_wait``; a ``TieredCache`` whose ``coalesce_wait`` is a function
calls it with the function's qualified name and its arguments' JSON). A
call that raises is not cached and its exception propagates unchanged; the
calls that waited for it then run the function themselves (one leads again).

Errors: what can be known when decorating (not a function, a generator
function, a lambda, a bad ttl, bad dependency names, defaults that are not
JSON) raises ConfigurationError then; arguments or a result that are not
JSON raise it at the call (the result's after the function ran: it is not
stored, and the call's caller sees the error rather than an uncacheable value
silently recomputed every time).

The plain face ``llmcache.Cache`` and ``TieredCache`` both have ``memoize``
(:class:`Memoizing`). Nothing here imports LangChain.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

from llmcache.config import check_ttl
from llmcache.engine import Engine, dependency_names
from llmcache.errors import ConfigurationError, SerializationError
from llmcache.json_values import canonical_json, fresh, json_copy
from llmcache.keys import part_key
from llmcache.serialization import Record
from llmcache.tiers import Flow

__all__ = ["MISS", "Memoizing", "lookup", "memoize", "store_flow"]

F = TypeVar("F", bound=Callable[..., Any])
#: What ``depends_on`` takes: names, or a function of the call's arguments giving names.
Dependencies = Collection[str] | Callable[..., Iterable[str]]


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


#: What a lookup returns when it has no value (None is a value a function may return).
MISS: Final = _Miss()

_FACE = "memoize"
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL


# -- values in the engine: shared with llmcache.plain ---------------------------------


def lookup(
    engine: Engine, key: str, dependencies: frozenset[str], wait: float
) -> tuple[Any, Flow[Any] | None]:
    """The value memory alone holds (no flow), else MISS and the flow that looks further.

    The flow returns the value or MISS; on a miss with ``wait`` > 0 it waits
    for an identical call in flight, and otherwise leads the key.
    """
    record = engine.peek(key)
    if record is not None:  # a record that holds no value is a counted miss, as in TieredCache
        # Private: its payload was parsed from memory's bytes for this read alone.
        return _value(engine, record, owned=record.private), None
    return MISS, _lookup_flow(engine, key, dependencies, wait)


def _lookup_flow(engine: Engine, key: str, dependencies: frozenset[str], wait: float) -> Flow[Any]:
    hit = yield from engine.lookup_flow(key, dependencies, wait)
    if hit is None:
        return MISS
    return _value(engine, hit.record, owned=hit.parsed and not hit.retained)


def _value(engine: Engine, record: Record, *, owned: bool) -> Any:
    """The value a record holds (a fresh copy unless ``owned``), or MISS if it holds none."""
    payload = record.payload
    counters = engine.counters
    if type(payload) is not dict or len(payload) != 1 or "v" not in payload:
        error = SerializationError("the stored value is not a plain JSON value")
        counters.failure("errors", "decode value", error)
        counters.add("misses")
        return MISS
    counters.add_hit(0)
    value = payload["v"]
    # A record in memory is shared by every hit: each caller gets its own copy.
    return value if owned else fresh(value)


def store_flow(
    engine: Engine,
    key: str,
    value: Any,
    dependencies: frozenset[str],
    ttl: float | None,
    what: str,
) -> Flow[int]:
    """Store ``value`` under ``key`` and hand it to the key's waiting callers.

    A value that is not JSON raises ConfigurationError naming ``what``, after
    letting the waiting callers go (each then runs on its own: the same
    function would give a value just as unstorable).
    """
    try:
        # A copy: memory keeps the stored payload, and the caller keeps ``value``.
        payload = {"v": json_copy(value, what)}
    except ConfigurationError:
        yield from engine.abandon_flow(key, retry=False)
        raise
    return (yield from engine.store_flow(key, payload, dependencies, ttl))


# -- the decorator --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One call's storage key, dependencies, ttl and coalescing bound."""

    key: str
    dependencies: frozenset[str]
    ttl: float | None
    wait: float


class Memo:
    """One memoized function: how its calls become keys and dependencies."""

    def __init__(
        self,
        engine: Engine,
        function: Callable[..., Any],
        *,
        ttl: float | None,
        depends_on: Dependencies,
        key: Callable[..., str] | None,
        version: str,
    ) -> None:
        if inspect.isclass(function) or not callable(function):
            raise ConfigurationError(f"memoize decorates a function, not {function!r}")
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise ConfigurationError(
                f"memoize cannot cache {function!r}: a generator's values are not one JSON result"
            )
        name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
        if not isinstance(name, str) or "<lambda>" in name:
            raise ConfigurationError(
                "memoize a def, not a lambda or an anonymous callable: the function's"
                f" name is part of its key and would not tell it apart ({function!r})"
            )
        if not isinstance(version, str):
            raise ConfigurationError(f"version is a string: {version!r}")
        if key is not None and not callable(key):
            raise ConfigurationError(f"key is a function of the call's arguments: {key!r}")
        self.engine = engine
        self.function = function
        self.name = f"{getattr(function, '__module__', None) or '?'}.{name}"
        self.version = version
        self.ttl = check_ttl(ttl)
        self.key_function = key
        self.static: frozenset[str] = frozenset()
        self.dynamic: Callable[..., Iterable[str]] | None = None
        if callable(depends_on):
            self.dynamic = depends_on
        else:
            self.static = dependency_names(depends_on)
        self.signature: inspect.Signature | None = None
        self._plain: list[str] | None = None
        self._positions: frozenset[str] = frozenset()
        self._defaults: dict[str, Any] = {}
        if key is None:
            try:
                self.signature = inspect.signature(function)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"memoize cannot read the signature of {self.name} ({exc}); pass key="
                ) from exc
            parameters = list(self.signature.parameters.values())
            for parameter in parameters:
                if parameter.default is not inspect.Parameter.empty:
                    what = f"the default of {parameter.name!r} of {self.name}"
                    json_copy(parameter.default, what)
            if all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters):
                # The common signature: bound without inspect (see _bound).
                self._plain = [p.name for p in parameters]
                self._positions = frozenset(self._plain)
                self._defaults = {
                    p.name: p.default
                    for p in parameters
                    if p.default is not inspect.Parameter.empty
                }

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """The key and dependencies of one call (ConfigurationError: arguments not JSON)."""
        material = self._arguments(args, kwargs)
        key = part_key(self.engine.namespace, _FACE, self.name, self.version, material)
        names = self.static
        if self.dynamic is not None:
            names = names | dependency_names(self.dynamic(*args, **kwargs))
        return Call(
            key,
            self.engine.dependencies(names),
            self.ttl,
            self.engine.wait_bound(self.name, material),
        )

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key_function is not None:
            made = self.key_function(*args, **kwargs)
            if type(made) is not str:
                raise ConfigurationError(
                    f"the key= function of {self.name} returned {type(made).__name__}, not str"
                )
            return made
        arguments = [
            [name, json_copy(value, f"argument {name!r} of {self.name}")]
            for name, value in self._bound(args, kwargs)
        ]
        return canonical_json(arguments)

    def _bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
        """(name, value) of every parameter in order, defaults applied, ``*args`` as a list.

        What ``signature.bind`` and ``apply_defaults`` give, without them for
        the common signature (no ``*``, ``/`` or ``**``), where they cost more
        than the rest of a hit: a call they would refuse takes the slow path,
        which raises the TypeError.
        """
        names = self._plain
        if names is not None and len(args) <= len(names):
            values = dict(zip(names, args))
            if len(values) + len(kwargs) <= len(names):
                for name, value in kwargs.items():
                    if name in values or name not in self._positions:
                        break
                    values[name] = value
                else:
                    defaults = self._defaults
                    if all(name in values or name in defaults for name in names):
                        return [
                            (name, values[name] if name in values else defaults[name])
                            for name in names
                        ]
        assert self.signature is not None
        bound = self.signature.bind(*args, **kwargs)  # a TypeError, as the call itself would
        bound.apply_defaults()
        parameters = self.signature.parameters
        return [
            (name, list(value) if parameters[name].kind is _VAR_POSITIONAL else value)
            for name, value in bound.arguments.items()
        ]

    def store_flow(self, call: Call, result: Any) -> Flow[int]:
        return store_flow(
            self.engine, call.key, result, call.dependencies, call.ttl, f"the result of {self.name}"
        )


def memoize(
    engine: Engine,
    function: F,
    *,
    ttl: float | None = None,
    depends_on: Dependencies = (),
    key: Callable[..., str] | None = None,
    version: str = "",
) -> F:
    """``function`` with its results cached in ``engine`` (the module docstring says how)."""
    memo = Memo(engine, function, ttl=ttl, depends_on=depends_on, key=key, version=version)

    # The two shells below are all that differs between sync and async. Each
    # looks up, calls and stores in its own frame: the engine's coalescing
    # ties a lead to the frame that looked up (llmcache.leaders), and that
    # frame must live until the result is stored.
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def amemoized(*args: Any, **kwargs: Any) -> Any:
            call = memo.call(args, kwargs)
            found, flow = lookup(engine, call.key, call.dependencies, call.wait)
            if flow is not None:
                found = await engine.arun(flow)
            if found is not MISS:
                return found
            try:
                result = await function(*args, **kwargs)
            except BaseException:
                await engine.arun(engine.abandon_flow(call.key))  # waiting calls go on now
                raise
            await engine.arun(memo.store_flow(call, result))
            return result

        return amemoized  # type: ignore[return-value]

    @functools.wraps(function)
    def memoized(*args: Any, **kwargs: Any) -> Any:
        call = memo.call(args, kwargs)
        found, flow = lookup(engine, call.key, call.dependencies, call.wait)
        if flow is not None:
            found = engine.run(flow)
        if found is not MISS:
            return found
        try:
            result = function(*args, **kwargs)
        except BaseException:
            engine.run(engine.abandon_flow(call.key))  # waiting calls go on now
            raise
        engine.run(memo.store_flow(call, result))
        return result

    return memoized  # type: ignore[return-value]


class Memoizing:
    """``memoize`` for a face over an engine (``llmcache.Cache``, ``TieredCache``)."""

    _engine: Engine

    @overload
    def memoize(self, function: F, /) -> F: ...

    @overload
    def memoize(
        self,
        function: None = None,
        /,
        *,
        ttl: float | None = None,
        depends_on: Dependencies = (),
        key: Callable[..., str] | None = None,
        version: str = "",
    ) -> Callable[[F], F]: ...

    def memoize(
        self,
        function: F | None = None,
        /,
        *,
        ttl: float | None = None,
        depends_on: Dependencies = (),
        key: Callable[..., str] | None = None,
        version: str = "",
    ) -> F | Callable[[F], F]:
        """Cache a function's JSON results by its JSON arguments: ``@cache.memoize(ttl=60)``.

        ``ttl``: seconds (else the cache's); ``depends_on``: dependency names,
        or a function of the call's arguments giving them; ``key``: a function
        of the call's arguments giving a string to key by instead of them;
        ``version``: bump it when the function's answers change. Works on
        ``async def`` functions too; identical concurrent calls run it once.
        Also usable bare: ``@cache.memoize``. See ``llmcache.memoize``.
        """
        # Checked now, even before there is a function to decorate.
        check_ttl(ttl)
        if not callable(depends_on):
            dependency_names(depends_on)

        def decorate(function: F) -> F:
            return memoize(
                self._engine, function, ttl=ttl, depends_on=depends_on, key=key, version=version
            )

        return decorate if function is None else decorate(function)
