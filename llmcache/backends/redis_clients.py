"""Making, describing and closing redis-py clients: what ``RedisTier`` needs of them.

* ``sync_client`` and ``async_client``: a client with short timeouts and no
  client-side retries (a retry against a dead server doubles the wait, and
  the engine answers a failed lookup with the model anyway), from a URL, or
  reaching the server of a client of the other kind that was passed in.
* ``close_sync_client``: close a client and every connection it opened.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.retry
from redis.backoff import NoBackoff

__all__ = ["async_client", "close_sync_client", "sync_client"]

# What a client of one kind needs from a client of the other kind to reach the same server.
_PORTABLE = ("host", "port", "db", "username", "password", "client_name", "protocol",
             "credential_provider", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
             "ssl_ca_certs", "ssl_ca_data", "ssl_check_hostname", "ssl_password")  # fmt: skip


def sync_client(
    url: str | None, *, cluster: bool, options: dict[str, Any], like: Any = None
) -> Any:
    """A redis-py client for ``url``; with no URL, for the server async ``like`` reaches."""
    return _client(_SYNC, url, cluster=cluster, options=options, like=like)


def async_client(
    url: str | None, *, cluster: bool, options: dict[str, Any], like: Any = None
) -> Any:
    """A redis.asyncio client for ``url``; with no URL, for the server sync ``like`` reaches."""
    return _client(_ASYNC, url, cluster=cluster, options=options, like=like)


# Each kind's (client class, cluster class, retry class): the one recipe serves both.
_SYNC = (redis.Redis, redis.cluster.RedisCluster, redis.retry.Retry)
_ASYNC = (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster, redis.asyncio.retry.Retry)


def _client(
    kind: tuple[Any, Any, Any],
    url: str | None,
    *,
    cluster: bool,
    options: dict[str, Any],
    like: Any,
) -> Any:
    single, cluster_class, retry = kind
    options = {"retry": retry(NoBackoff(), 0), **options}
    if url is None:  # only a client of the other kind was given: reach the same server
        return single(**options, **_portable(like))
    if cluster:
        return cluster_class.from_url(url, **options)
    return single.from_url(url, **options)


def close_sync_client(client: Any) -> None:
    """Close a redis-py client and every connection it opened.

    ``RedisCluster.close()`` closes each node's client but not the connection
    pools ``from_url`` gave those clients, so their sockets would stay open
    until garbage collection.
    """
    client.close()
    if isinstance(client, redis.cluster.RedisCluster):
        for node in client.get_nodes():  # type: ignore[no-untyped-call]
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


def _portable(client: Any) -> dict[str, Any]:
    """Connection settings of ``client`` that a client of the other kind can use."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    portable = {name: kwargs[name] for name in _PORTABLE if name in kwargs}
    if "path" in kwargs:
        portable["unix_socket_path"] = kwargs["path"]
    if "SSL" in pool.connection_class.__name__:
        portable["ssl"] = True
    return portable
