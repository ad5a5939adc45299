"""Running one workload once through the real ``ChatOpenAI``, recording every call.

Every call's own latency (from ``ainvoke`` to its answer, after any Semaphore wait), its end
time, whether the cache answered it, the answer's text and token usage are recorded. Whether
the cache answered is seen by a thin :class:`Observed` wrapper around the contender's cache
(it notes what ``lookup`` returned, through a context variable set per call), so every
contender is measured the same way whatever statistics it keeps itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

from _workloads_data import Call, Workload
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache

from llmcache import depends_on

__all__ = ["CallRecord", "Observed", "PhaseRun", "Upstream", "reference_answers", "run_phase"]


@dataclass(frozen=True)
class Upstream:
    base_url: str | None  # None: the OpenAI API
    model: str
    api_key: str = "simulator"
    # One httpx client for a whole run (one event loop): building one costs ~10 ms of CPU
    # (an SSL context), and each phase building its own was a tenth of a quick run.
    client: Any = None


@dataclass
class CallRecord:
    call: Call
    started: float = 0.0
    ended: float = 0.0
    hit: bool = False
    failed: bool = False
    error: str = ""  # the exception's type when the call raised
    content: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "workload_call", default=None
)


def _note(value: RETURN_VAL_TYPE | None) -> RETURN_VAL_TYPE | None:
    record = _current.get()
    if record is not None and value is not None:
        record.hit = True
    return value


class Observed(BaseCache):
    """Passes every call to ``inner``; notes in the current call's record that it hit."""

    def __init__(self, inner: BaseCache) -> None:
        self.inner = inner

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return _note(self.inner.lookup(prompt, llm_string))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return _note(await self.inner.alookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.inner.update(prompt, llm_string, return_val)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self.inner.aupdate(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        self.inner.clear(**kwargs)

    async def aclear(self, **kwargs: Any) -> None:
        await self.inner.aclear(**kwargs)


@dataclass
class PhaseRun:
    wall_s: float
    records: list[CallRecord] = field(default_factory=list)


def _chain(workload: Workload, upstream: Upstream, cache: BaseCache | bool, client: Any) -> Any:
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    where: dict[str, Any] = {}
    if upstream.base_url is not None:
        where = {"base_url": upstream.base_url, "api_key": SecretStr(upstream.api_key)}
    llm = ChatOpenAI(
        model=upstream.model,
        temperature=0,
        max_retries=2,
        timeout=120,
        cache=cache,
        http_async_client=client,
        **where,
    )
    template = ChatPromptTemplate.from_messages(
        [("system", workload.system), ("user", workload.user)]
    )
    return template | llm


async def run_phase(
    workload: Workload,
    calls: list[Call],
    cache: BaseCache | None,
    upstream: Upstream,
    *,
    concurrency: int,
    progress: bool,
) -> PhaseRun:
    """The workload once, in its own concurrency shape; every call under ``depends_on``."""
    import openai

    # Without a client of the run's, one for this phase, closed with it: langchain-openai
    # would otherwise keep one per base_url across event loops.
    client = upstream.client or openai.DefaultAsyncHttpxClient()
    chain = _chain(workload, upstream, False if cache is None else Observed(cache), client)
    run = PhaseRun(0.0)
    origin = time.perf_counter()

    async def ask(call: Call) -> None:
        record = CallRecord(call, started=time.perf_counter() - origin)
        token = _current.set(record)
        try:
            with depends_on(*call.deps):
                message = await chain.ainvoke(call.inputs)
            record.content = str(message.content)
            usage = message.usage_metadata or {}
            record.input_tokens = int(usage.get("input_tokens", 0))
            record.output_tokens = int(usage.get("output_tokens", 0))
        except Exception as exc:  # the user's call raised: counted, the workload goes on
            # An upstream error after max_retries, or a cache that broke the call (SQLiteCache
            # raises IntegrityError when two identical misses write the same row at once).
            record.failed, record.error = True, f"{type(exc).__module__}.{type(exc).__name__}"
        finally:
            _current.reset(token)
            record.ended = time.perf_counter() - origin
            run.records.append(record)

    try:
        await workload.drive(ask, calls, concurrency, progress)
    finally:
        if client is not upstream.client:  # close only what this phase opened
            await client.aclose()
    run.wall_s = time.perf_counter() - origin
    return run


async def reference_answers(
    workload: Workload, calls: list[Call], upstream: Upstream, concurrency: int
) -> dict[Call, str]:
    """The fresh answer to every distinct call, asked with no cache (the judge of "wrong")."""
    import openai

    client = upstream.client or openai.DefaultAsyncHttpxClient()
    chain = _chain(workload, upstream, False, client)
    semaphore = asyncio.Semaphore(concurrency)
    distinct = list(dict.fromkeys(calls))

    async def fresh(call: Call) -> str:
        async with semaphore:
            return str((await chain.ainvoke(call.inputs)).content)

    try:
        answers = await asyncio.gather(*(fresh(call) for call in distinct))
    finally:
        if client is not upstream.client:
            await client.aclose()
    return dict(zip(distinct, answers))
