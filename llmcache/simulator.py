"""A local OpenAI-compatible chat-completions server for tests, demos and benchmarks.

It speaks real HTTP on loopback, so the real ``langchain_openai.ChatOpenAI`` client can be
pointed at it (``base_url=sim.base_url, api_key="sim"``) without an API key. Answers are
deterministic per request; latency, errors and rate limits can be injected, in-process or
from another process over HTTP (``remote_stats`` / ``remote_control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import secrets
import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from llmcache._simulator_responses import (
    completion_body,
    last_user_text,
    plan_answer,
    stream_chunks,
)

__all__ = ["Simulator", "SimulatorConfig", "remote_control", "remote_stats", "run_forever"]

_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-nano")
_CONTROL_KEYS = frozenset(
    {"fail_next", "status", "match", "rate_limit_next", "retry_after", "cut_next"}
    | {"latency_ms", "latency_sigma", "per_token_ms", "reset"}
)
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass
class SimulatorConfig:
    """Timing and content knobs of a :class:`Simulator`."""

    latency_ms: float = 0.0  # median time before the first byte
    latency_sigma: float = 0.0  # lognormal spread of that latency (0 = fixed)
    per_token_ms: float = 0.0  # extra time per completion token (also spaces SSE chunks)
    seed: int = 0
    completion_tokens: int = 24  # approx length of generated answers
    # False sends "Connection: close": needed when one simulator outlives several event loops
    # (pytest-asyncio per-test loops), because ChatOpenAI caches one async httpx client per
    # base_url and a pooled connection from a closed loop fails with "Event loop is closed".
    keep_alive: bool = True


@dataclass
class _Fault:
    status: int
    remaining: int
    match: str | None
    retry_after: float | None = None  # set for rate limits only
    cut: bool = False  # a streamed answer broken off half-way, not an error status


def _error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    kind, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _close_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.force_close()
    return response


class Simulator:
    """An OpenAI-compatible chat-completions server on loopback.

    Use ``with Simulator() as sim`` (server thread with its own loop) or
    ``async with Simulator() as sim`` (runs in the caller's loop).
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = dataclasses.replace(config) if config else SimulatorConfig()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._by_prompt: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._faults: list[_Fault] = []
        self._latency_rng = random.Random(self.config.seed)
        self._fingerprint = f"fp_sim{self.config.seed & 0xFFFFFF:06x}"
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; valid once started."""
        if self._port is None:
            raise RuntimeError("Simulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/v1"

    async def start_async(self) -> Simulator:
        """Start serving in the running event loop."""
        if self._runner is not None:
            raise RuntimeError("Simulator already started")
        app = web.Application(middlewares=[] if self.config.keep_alive else [_close_connection])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_post("/_sim/control", self._control)
        # handler_cancellation: a client that gives up (timeout) should not keep a sleep alive.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop_async(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def start(self) -> Simulator:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("Simulator already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
            ready.set()
            try:
                if not errors:
                    loop.run_forever()
                    loop.run_until_complete(self.stop_async())
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

        thread = threading.Thread(target=serve, name="llmcache-simulator", daemon=True)
        thread.start()
        ready.wait()
        if errors:
            thread.join()
            raise errors[0]
        self._thread, self._loop = thread, loop
        return self

    def stop(self) -> None:
        """Stop the server thread started by :meth:`start` (idempotent)."""
        thread, loop = self._thread, self._loop
        self._thread = self._loop = None
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Simulator:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    # -- counters and fault injection (thread-safe) -------------------------------------------

    @property
    def requests(self) -> int:
        """Chat-completion requests received, including failed ones."""
        with self._lock:
            return self._requests

    def requests_for(self, text: str) -> int:
        """Requests whose last user message contains ``text``."""
        with self._lock:
            return sum(n for prompt, n in self._by_prompt.items() if text in prompt)

    def stats(self) -> dict[str, Any]:
        """Counters as served by ``GET /_sim/stats``."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_prompt": dict(self._by_prompt),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "pending_faults": sum(f.remaining for f in self._faults),
            }

    def reset_counters(self) -> None:
        """Zero the request counters (pending faults are kept)."""
        with self._lock:
            self._requests = 0
            self._by_prompt.clear()
            self._max_in_flight = self._in_flight

    def clear_faults(self) -> None:
        """Drop pending ``fail_next`` / ``rate_limit_next`` faults."""
        with self._lock:
            self._faults.clear()

    def fail_next(self, n: int = 1, *, status: int = 500, match: str | None = None) -> None:
        """Answer the next ``n`` (matching) requests with an OpenAI-shaped error."""
        with self._lock:
            if n > 0:
                self._faults.append(_Fault(status=status, remaining=n, match=match))

    def rate_limit_next(
        self, n: int = 1, *, retry_after: float = 0.05, match: str | None = None
    ) -> None:
        """Answer the next ``n`` (matching) requests with 429 and a Retry-After header."""
        with self._lock:
            if n > 0:
                self._faults.append(_Fault(429, n, match, retry_after=retry_after))

    def cut_next(self, n: int = 1, *, match: str | None = None) -> None:
        """Break off the next ``n`` (matching) streamed answers half-way: the connection drops.

        A plain (not streamed) request that takes one is answered whole.
        """
        with self._lock:
            if n > 0:
                self._faults.append(_Fault(200, n, match, cut=True))

    def set_latency(
        self, latency_ms: float, sigma: float = 0.0, *, per_token_ms: float | None = None
    ) -> None:
        """Change the time-to-first-byte (and optionally per-token) latency."""
        with self._lock:
            self.config.latency_ms, self.config.latency_sigma = latency_ms, sigma
            if per_token_ms is not None:
                self.config.per_token_ms = per_token_ms

    def control(self, command: dict[str, Any]) -> None:
        """Apply a ``POST /_sim/control`` command (``reset`` also clears pending faults)."""
        unknown = set(command) - _CONTROL_KEYS
        if unknown:
            raise ValueError(f"unknown control keys: {sorted(unknown)}")
        if command.get("reset"):
            self.reset_counters()
            self.clear_faults()
        match = command.get("match")
        if command.get("fail_next"):
            self.fail_next(
                int(command["fail_next"]), status=int(command.get("status", 500)), match=match
            )
        if command.get("cut_next"):
            self.cut_next(int(command["cut_next"]), match=match)
        if command.get("rate_limit_next"):
            retry_after = float(command.get("retry_after", 0.05))
            self.rate_limit_next(
                int(command["rate_limit_next"]), retry_after=retry_after, match=match
            )
        if "latency_ms" in command or "latency_sigma" in command or "per_token_ms" in command:
            per_token = command.get("per_token_ms")
            self.set_latency(
                float(command.get("latency_ms", self.config.latency_ms)),
                float(command.get("latency_sigma", self.config.latency_sigma)),
                per_token_ms=None if per_token is None else float(per_token),
            )

    def _admit(self, prompt: str) -> tuple[_Fault | None, float, float]:
        """Count a request and take its fault (if any) and delays, atomically."""
        with self._lock:
            self._requests += 1
            self._by_prompt[prompt] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            fault = next((f for f in self._faults if f.match is None or f.match in prompt), None)
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            cfg = self.config
            latency = cfg.latency_ms
            if latency > 0 and cfg.latency_sigma > 0:
                latency = self._latency_rng.lognormvariate(math.log(latency), cfg.latency_sigma)
            return fault, latency / 1000, cfg.per_token_ms / 1000

    # -- HTTP handlers -----------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
        except ValueError:  # JSONDecodeError and bad UTF-8 are both ValueErrors
            body = None
        prompt = last_user_text(body) if isinstance(body, dict) else ""
        fault, latency, per_token = self._admit(prompt)
        try:
            if latency > 0:
                await asyncio.sleep(latency)
            if fault is not None and not fault.cut:
                return self._fault_response(fault)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return _error_response(400, "Request body must be JSON with a 'messages' list.")
            if not body["messages"]:
                return _error_response(400, "'messages' must not be empty.")
            return await self._answer(request, body, per_token, cut=fault is not None)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _fault_response(self, fault: _Fault) -> web.Response:
        if fault.retry_after is None:
            return _error_response(fault.status, f"Simulated error {fault.status}.")
        headers = {
            "Retry-After": f"{fault.retry_after:g}",
            "retry-after-ms": f"{fault.retry_after * 1000:g}",
        }
        return _error_response(429, "Rate limit reached (simulated).", headers)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], per_token: float, *, cut: bool = False
    ) -> web.StreamResponse:
        answer = plan_answer(body, self.config.seed, self.config.completion_tokens)
        id_, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        headers = {"x-request-id": f"req_{secrets.token_hex(16)}"}
        if not body.get("stream"):
            if per_token > 0:
                await asyncio.sleep(per_token * answer.completion_tokens)
            return web.json_response(
                completion_body(answer, id_=id_, created=created, fingerprint=self._fingerprint),
                headers=headers,
            )
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        chunks = list(
            stream_chunks(
                answer,
                id_=id_,
                created=created,
                fingerprint=self._fingerprint,
                include_usage=include_usage,
            )
        )
        try:
            for sent, (chunk, tokens) in enumerate(chunks):
                if cut and sent == len(chunks) // 2 and request.transport is not None:
                    request.transport.close()  # the connection drops mid-answer, no [DONE]
                    return response
                if per_token > 0 and tokens:
                    await asyncio.sleep(per_token * tokens)
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:  # the client went away mid-stream; nothing left to do
            pass
        return response

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "llmcache-simulator"}
            for m in _MODELS
        ]
        return web.json_response({"object": "list", "data": data})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control(self, request: web.Request) -> web.Response:
        try:
            command = await request.json()
            if not isinstance(command, dict):
                raise ValueError("control body must be a JSON object")
            self.control(command)
        except (ValueError, TypeError) as exc:
            return _error_response(400, str(exc))
        return web.json_response({"ok": True})


# -- other processes --------------------------------------------------------------------------


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def remote_stats(base_url: str) -> dict[str, Any]:
    """Counters of a simulator, possibly in another process (``GET /_sim/stats``)."""
    with urllib.request.urlopen(f"{_root(base_url)}/_sim/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def remote_control(base_url: str, **command: Any) -> None:
    """Send a control command, e.g. ``remote_control(url, fail_next=2, match="soup")``."""
    request = urllib.request.Request(
        f"{_root(base_url)}/_sim/control",
        data=json.dumps(command).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


async def _serve_until_signalled(config: SimulatorConfig, host: str, port: int) -> None:
    async with Simulator(config, host=host, port=port) as sim:
        print(f"listening on {sim.base_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows / outside the main thread; Ctrl-C still interrupts.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def run_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, printing ``listening on http://HOST:PORT/v1`` first."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signalled(config, host, port))
