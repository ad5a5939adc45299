"""Streamed calls served from the cache, and stored: ``cached(model, cache)``.

LangChain's chat models never consult a cache when they stream (``stream``,
``astream``, ``astream_events``, a chain or a LangGraph node that streams):
only ``invoke``'s path (``BaseChatModel._generate_with_cache``) does. So
``BaseCache`` alone cannot serve a stream, and this face is a model wrapper:
:func:`cached` returns a copy of the model whose class is a subclass of the
model's own, overriding ``_stream`` / ``_astream``. Everything LangChain builds
on the model (``bind_tools``, ``with_structured_output``, ``|`` chains,
``with_config``...) builds on the copy, so it streams through the cache too.

A stream looks the cache up under the very key ``invoke`` uses (the same
``dumps(messages)`` and ``_get_llm_string(stop, **kwargs)``), through the
cache's public ``lookup`` / ``update``: a ``stream`` after an ``invoke``
hits, and the reverse; TTL, dependencies, namespaces, stats and coalescing
apply unchanged, and any ``BaseCache`` works (``TieredCache`` coalesces).

* A hit is served as chunks (:func:`served_chunks`): the text in pieces of
  whole words, each tool call as a tool-call chunk, then one last chunk with
  the usage and the response metadata. Added up, they equal what ``invoke``
  returns from the same entry. No upstream call is made.
* A miss streams upstream, chunk by chunk as they come, and keeps them; only
  when the upstream stream ends is their sum stored (as ``invoke`` with
  streaming on would store it). A stream that fails, is cancelled or is
  closed half-way stores nothing and ends its lead at once.
* Identical concurrent streams: the first leads (its lead is held by the
  stream, not by a frame: a generator is off the stack between chunks); the
  others wait in their lookup for its stored answer, then are served it as
  chunks, all at once. A leader that ends without an answer releases them to
  lead themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumps
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation

from llmcache.coalesce.leaders import HeldOwner, leading_as
from llmcache.errors import ConfigurationError
from llmcache.stream_chunks import DEFAULT_CHUNK_CHARS, served_chunks, stored_answer

__all__ = ["cached"]

logger = logging.getLogger("llmcache.streaming")

ChatModelT = TypeVar("ChatModelT", bound=BaseChatModel)


class _CachePath:
    """Invoke's cache path (``_generate_with_cache``) running for ``model`` in this context.

    That path looked the cache up already and stores the answer itself, so
    the model's ``_stream`` goes straight upstream there (and notes it did).
    """

    __slots__ = ("model", "streamed")

    def __init__(self, model: BaseChatModel) -> None:
        self.model = model
        self.streamed = False


_CACHE_PATH: ContextVar[_CachePath | None] = ContextVar("llmcache_cache_path", default=None)

_classes: dict[tuple[type[BaseChatModel], int], type[BaseChatModel]] = {}
_originals: dict[type[BaseChatModel], type[BaseChatModel]] = {}
_classes_lock = threading.Lock()


def cached(
    model: ChatModelT,
    cache: BaseCache | None = None,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
) -> ChatModelT:
    """A copy of ``model`` whose streamed calls are served from the cache and stored in it.

    ``cache``: the cache of the copy, for ``invoke`` and ``stream`` alike (its
    ``cache`` field is set to it). None keeps the model's own setting, read
    at each call as LangChain reads it: a ``BaseCache`` on the model, else the
    global one (``set_llm_cache``); ``cache=False`` on the model: no caching.
    ``chunk_chars``: served text comes in pieces of whole words at least this
    long (1: a word per chunk). The model itself is not changed.
    """
    given: object = model  # checked at run time too: callers are not all typed
    if not isinstance(given, BaseChatModel):
        hint = (
            " (wrap the chat model, then bind: cached(model).bind_tools(...))"
            if isinstance(getattr(given, "bound", None), BaseChatModel)
            else ""
        )
        raise ConfigurationError(f"cached() takes a chat model, not {type(given).__name__}{hint}")
    if cache is not None and not isinstance(cache, BaseCache):
        raise ConfigurationError(f"cache is a LangChain BaseCache or None: {cache!r}")
    if isinstance(chunk_chars, bool) or not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise ConfigurationError(f"chunk_chars is an int >= 1: {chunk_chars!r}")
    base = _originals.get(type(model), type(model))
    copy = model.model_copy(update=None if cache is None else {"cache": cache})
    # Same memory layout (a subclass adding no slots or fields): only the class changes.
    object.__setattr__(copy, "__class__", _subclass(base, chunk_chars))
    return copy


def _subclass(base: type[BaseChatModel], chunk_chars: int) -> type[BaseChatModel]:
    """``base`` with cached streaming, made once per class and chunk size.

    It keeps ``base``'s name, qualified name and module, so LangChain
    serializes it as ``base``: its ``llm_string`` (a part of every key) is the
    plain model's, and the wrapped and plain models share entries.
    """
    with _classes_lock:
        made = _classes.get((base, chunk_chars))
        if made is not None:
            return made
        if not hasattr(BaseChatModel, "_generate_with_cache"):
            raise ConfigurationError(
                "this langchain-core has no BaseChatModel._generate_with_cache: cached() cannot "
                "tell invoke's streaming from a stream, so it does not wrap models here"
            )
        namespace = _methods(base, chunk_chars)
        namespace.update(__module__=base.__module__, __qualname__=base.__qualname__)
        namespace["__doc__"] = base.__doc__
        metaclass: Any = type(base)  # pydantic's: the subclass is a model like base
        made = cast(type[BaseChatModel], metaclass(base.__name__, (base,), namespace))
        _classes[(base, chunk_chars)] = made
        _originals[made] = base
        return made


def _methods(base: type[BaseChatModel], chunk_chars: int) -> dict[str, Any]:
    """The overrides: ``_stream``/``_astream`` where ``base`` streams, and invoke's cache path."""
    upstream_stream = base._stream
    upstream_astream = base._astream
    generate_with_cache = base._generate_with_cache
    agenerate_with_cache = base._agenerate_with_cache

    def _stream(
        self: BaseChatModel,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        def upstream() -> Iterator[ChatGenerationChunk]:
            return upstream_stream(self, messages, stop=stop, run_manager=run_manager, **kwargs)

        cache = _stream_cache(self)
        if cache is None:
            return upstream()
        call = _Call(self, cache, messages, stop, kwargs, chunk_chars)
        return _stream_through(call, upstream, run_manager)

    def _astream(
        self: BaseChatModel,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        def upstream() -> AsyncIterator[ChatGenerationChunk]:
            return upstream_astream(self, messages, stop=stop, run_manager=run_manager, **kwargs)

        cache = _stream_cache(self)
        if cache is None:
            return upstream()
        call = _Call(self, cache, messages, stop, kwargs, chunk_chars)
        return _astream_through(call, upstream, run_manager)

    def _generate_with_cache(
        self: BaseChatModel,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        path = _CachePath(self)
        token = _CACHE_PATH.set(path)
        try:
            result = generate_with_cache(self, messages, stop, run_manager, **kwargs)
        finally:
            _CACHE_PATH.reset(token)
        if run_manager is not None:
            for chunk in _replayed(self, path, result, run_manager, kwargs, chunk_chars):
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        return result

    async def _agenerate_with_cache(
        self: BaseChatModel,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        path = _CachePath(self)
        token = _CACHE_PATH.set(path)
        try:
            result = await agenerate_with_cache(self, messages, stop, run_manager, **kwargs)
        finally:
            _CACHE_PATH.reset(token)
        if run_manager is not None:
            for chunk in _replayed(self, path, result, run_manager, kwargs, chunk_chars):
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        return result

    methods: dict[str, Any] = {
        "_generate_with_cache": _generate_with_cache,
        "_agenerate_with_cache": _agenerate_with_cache,
    }
    # Only what the model implements: LangChain asks whether _stream/_astream are
    # overridden to decide whether a model streams at all. A model with a sync
    # stream only streams async through LangChain's fallback, which runs our
    # _stream in a worker thread.
    if upstream_stream is not BaseChatModel._stream:
        methods["_stream"] = _stream
    if upstream_astream is not BaseChatModel._astream:
        methods["_astream"] = _astream
    return methods


def _stream_cache(model: BaseChatModel) -> BaseCache | None:
    """The cache a stream of ``model`` goes through here (None: straight upstream)."""
    path = _CACHE_PATH.get()
    if path is not None and path.model is model:
        path.streamed = True  # invoke's own streaming: it looked up and stores itself
        return None
    return _cache_of(model)


def _replayed(
    model: BaseChatModel,
    path: _CachePath,
    result: ChatResult,
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun,
    kwargs: dict[str, Any],
    chunk_chars: int,
) -> list[ChatGenerationChunk]:
    """The chunks of an invoke's hit, for callbacks that wanted it streamed ([]: none).

    An invoke whose callbacks ask for tokens (LangGraph's ``stream_mode=
    "messages"``, ``astream_events``) streams a miss; LangChain serves a hit
    whole. So that a warm cache streams like a cold one, the hit is replayed
    as tokens (LangChain does the same for its v2 protocol handlers only).
    A call that should stream but did not is a hit: a miss would have streamed.
    """
    if path.streamed or not result.generations or not run_manager.handlers:
        return []  # streamed already, or nobody to replay to (streaming=True alone)
    try:
        asynchronous = isinstance(run_manager, AsyncCallbackManagerForLLMRun)
        if not model._should_stream(async_api=asynchronous, run_manager=run_manager, **kwargs):
            return []
        protocol = getattr(model, "_should_use_protocol_streaming", None)
        if protocol is not None and protocol(
            async_api=asynchronous, run_manager=run_manager, **kwargs
        ):
            return []  # LangChain replays hits to those handlers itself
        generation = result.generations[0]
        if generation.message.id is None:
            # The chunks and the message share an id, so consumers see one message.
            generation.message.id = f"lc_run--{run_manager.run_id}"
        return list(served_chunks(generation, chunk_chars))
    except Exception as exc:  # the answer stands; only its tokens are not replayed
        logger.warning("llmcache: a cached answer could not be replayed as tokens: %s", exc)
        return []


def _cache_of(model: BaseChatModel) -> BaseCache | None:
    """The model's cache as LangChain's invoke path resolves it (None: do not cache)."""
    if isinstance(model.cache, BaseCache):
        return model.cache
    if model.cache is False:
        return None
    cache = get_llm_cache()
    if cache is None and model.cache is True:
        raise ConfigurationError("the model asks to cache (cache=True), but no cache is set")
    return cache


class _Call:
    """One streamed call's key, lead and chunks: the part the sync and async shells share."""

    def __init__(
        self,
        model: BaseChatModel,
        cache: BaseCache,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        chunk_chars: int,
    ) -> None:
        self.model = model
        self.cache = cache
        self.chunk_chars = chunk_chars
        # Exactly BaseChatModel._generate_with_cache's key: ids do not count.
        self.llm_string = model._get_llm_string(stop=stop, **kwargs)
        self.prompt = dumps(
            [
                message.model_copy(update={"id": None}) if message.id is not None else message
                for message in messages
            ]
        )
        self.chunks: list[ChatGenerationChunk] = []
        self.owner: HeldOwner | None = None

    def lead(self, *, in_task: bool) -> HeldOwner:
        """The owner this call's lookup leads as: the stream, not the frame that looked."""
        self.owner = HeldOwner.here(in_task=in_task)
        return self.owner

    def served(self, value: Sequence[Generation] | None) -> Iterator[ChatGenerationChunk] | None:
        """A hit as chunks; None for a miss (or a value that cannot be served: go upstream)."""
        if not isinstance(value, list) or not value:
            return None  # LangChain's rule: anything but a non-empty list is a miss
        try:
            convert = getattr(self.model, "_convert_cached_generations", None)
            # What invoke does to a hit (plain Generations to AIMessages, total_cost 0).
            generations = convert(value) if convert is not None else value
            return served_chunks(generations[0], self.chunk_chars)
        except Exception as exc:
            logger.warning("llmcache: a cached answer could not be streamed: %s", exc)
            return None

    def answer(self) -> list[ChatGeneration] | None:
        try:
            return stored_answer(self.chunks)
        except Exception as exc:  # never fail a stream that worked
            logger.warning("llmcache: a streamed answer could not be stored: %s", exc)
            return None

    def end(self) -> None:
        if self.owner is not None:
            self.owner.end()


def _stream_through(
    call: _Call,
    upstream: Callable[[], Iterator[ChatGenerationChunk]],
    run_manager: CallbackManagerForLLMRun | None,
) -> Iterator[ChatGenerationChunk]:
    """The sync shell: serve the hit, or stream upstream and store the completed answer."""
    try:
        try:
            with leading_as(call.lead(in_task=False)):
                value = call.cache.lookup(call.prompt, call.llm_string)
        except Exception as exc:  # a cache that raises is a miss
            logger.warning("llmcache: a stream's lookup failed: %s", exc)
            value = None
        served = call.served(value)
        if served is not None:
            for chunk in served:
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
            return
        for chunk in upstream():
            call.chunks.append(chunk)
            yield chunk
        answer = call.answer()
        if answer is not None:
            try:
                call.cache.update(call.prompt, call.llm_string, answer)
            except Exception as exc:
                logger.warning("llmcache: a streamed answer could not be stored: %s", exc)
    finally:
        call.end()  # stored: a no-op; else its followers stop waiting now


async def _astream_through(
    call: _Call,
    upstream: Callable[[], AsyncIterator[ChatGenerationChunk]],
    run_manager: AsyncCallbackManagerForLLMRun | None,
) -> AsyncIterator[ChatGenerationChunk]:
    """The async twin of :func:`_stream_through`."""
    try:
        try:
            with leading_as(call.lead(in_task=True)):
                value = await call.cache.alookup(call.prompt, call.llm_string)
        except Exception as exc:
            logger.warning("llmcache: a stream's lookup failed: %s", exc)
            value = None
        served = call.served(value)
        if served is not None:
            for chunk in served:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
            return
        async for chunk in upstream():
            call.chunks.append(chunk)
            yield chunk
        answer = call.answer()
        if answer is not None:
            try:
                await call.cache.aupdate(call.prompt, call.llm_string, answer)
            except Exception as exc:
                logger.warning("llmcache: a streamed answer could not be stored: %s", exc)
    finally:
        call.end()
