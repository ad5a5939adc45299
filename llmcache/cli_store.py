"""The stores the ``llmcache`` commands read: which one the arguments name, what it holds.

A store is a cache directory (``--dir``, or the default one) or a Redis server
(``--url`` and ``--prefix``). Read here: its entries per namespace, counted
without opening it for writing, and the usage every process that used it
reported (``llmcache.fleet``). ``llmcache.cli`` holds the commands, which print
these and change the store through its tier.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcache.config import redact
from llmcache.errors import ConfigurationError, TierError

__all__ = ["Count", "cache_directory", "fleet_usage", "inventory", "open_tier"]

# A stored key is "<namespace>:<sha256 hex>" (after RedisTier's prefix).
_ENTRY_KEY = re.compile(r"([A-Za-z0-9_.\-]{1,64}):[0-9a-f]{64}")


@dataclass
class Count:
    """What a store holds of one namespace."""

    entries: int = 0
    size: int | None = 0  # bytes; None when the store cannot tell cheaply
    expired: int = 0


def fleet_usage(args: argparse.Namespace, namespace: str | None) -> dict[str, dict[str, int]]:
    """What every process that used the store reported (``llmcache.fleet``), per namespace."""
    from llmcache import fleet

    if args.url is None:
        directory = cache_directory(args)
        try:
            return fleet.read_disk(directory, namespace)
        except (OSError, sqlite3.Error) as exc:
            raise TierError(f"cannot read {directory / fleet.STATS_FILE}: {exc}") from exc
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(f"a Redis URL needs the redis extra ({exc})") from exc
    try:
        client = redis.Redis.from_url(args.url, socket_timeout=5, socket_connect_timeout=5)
        with contextlib.closing(client):
            return fleet.read_redis(client, args.prefix, namespace)
    except (redis.RedisError, ValueError) as exc:
        raise TierError(f"cannot read {redact(args.url)}: {exc}") from exc


def open_tier(args: argparse.Namespace) -> Any:
    """A tier over the store the arguments name (the caller closes it)."""
    if args.url is not None:
        try:
            from llmcache.backends.redis import RedisTier
        except ImportError as exc:
            raise ConfigurationError(f"a Redis URL needs the redis extra ({exc})") from exc
        return RedisTier(args.url, prefix=args.prefix)
    from llmcache.backends.disk import DiskTier

    return DiskTier(cache_directory(args))


def cache_directory(args: argparse.Namespace) -> Path:
    """The directory ``--dir`` names, or the default one ($LLMCACHE_DIR or ~/.cache/llmcache)."""
    if args.dir is not None:
        return Path(args.dir).expanduser()
    from llmcache.config import default_directory

    return default_directory()


def _holds_a_store(directory: Path) -> bool:
    """A cache directory has diskcache's database, or a DiskTier's version store."""
    return any(
        (directory / name).is_file() for name in ("cache.db", "versions.sqlite", "stats.sqlite")
    )


def inventory(
    args: argparse.Namespace, namespace: str | None, *, must_exist: bool = False
) -> tuple[str, dict[str, Count]]:
    """(where, counts per namespace) of the store the arguments name.

    A ``--dir`` that holds no cache is an error (a typo must not pass for an
    empty cache, nor have a cache created in it), and so is any directory
    that a command which writes (``must_exist``) is pointed at.
    """
    if args.url is not None:
        where = f"redis {redact(args.url)} prefix {args.prefix!r}"
        return where, _redis_counts(args.url, args.prefix, namespace)
    directory = cache_directory(args)
    if (must_exist or args.dir is not None) and not _holds_a_store(directory):
        given = "--dir" if args.dir is not None else "the default directory ($LLMCACHE_DIR)"
        raise ConfigurationError(f"{given} {directory} holds no llmcache store (no cache.db)")
    return f"disk {directory}", _disk_counts(directory, namespace)


def _disk_counts(directory: Path, namespace: str | None) -> dict[str, Count]:
    """Entries per namespace, read from diskcache's index without opening it for writing.

    DiskTier tags every entry with its namespace, and diskcache keeps the tag, the inline
    value and the file size of every entry in the ``Cache`` table of ``cache.db``. A
    read-only connection never creates a directory or rewrites diskcache's settings.
    """
    database = directory / "cache.db"
    if not database.is_file():
        return {}
    query = (
        "SELECT tag, COUNT(*), SUM(COALESCE(LENGTH(value), 0) + size),"
        " SUM(expire_time IS NOT NULL AND expire_time < ?) FROM Cache"
        + ("" if namespace is None else " WHERE tag = ?")
        + " GROUP BY tag"
    )
    params: tuple[Any, ...] = (time.time(),) if namespace is None else (time.time(), namespace)
    try:
        uri = database.resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as connection:
            rows = connection.execute(query, params).fetchall()
    except (OSError, sqlite3.Error) as exc:
        raise TierError(f"cannot read {database}: {exc}") from exc
    return {
        (tag.decode() if isinstance(tag, bytes) else str(tag)): Count(
            n, int(size or 0), int(old or 0)
        )
        for tag, n, size, old in rows
    }


def _redis_counts(url: str, prefix: str, namespace: str | None) -> dict[str, Count]:
    """Entries per namespace under ``prefix``, by SCAN (never KEYS); sizes are not fetched."""
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(f"a Redis URL needs the redis extra ({exc})") from exc
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    pattern = escaped + ("*" if namespace is None else f"{namespace}:*")
    counts: dict[str, Count] = {}
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        with contextlib.closing(client):
            for key in client.scan_iter(match=pattern, count=1000):
                text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
                match = _ENTRY_KEY.fullmatch(text, len(prefix))
                if match:
                    counts.setdefault(match.group(1), Count(size=None)).entries += 1
    except (redis.RedisError, ValueError) as exc:
        raise TierError(f"cannot read {redact(url)}: {exc}") from exc
    return counts
