"""What ``TieredCache(l1=..., l2=...)`` and the CLI accept, and what each means.

A mistyped setting must fail at once with a sentence that says what was
understood, never become something else silently: ``l2="redis:/oops"`` is not
a directory, ``l2="disk"`` is not ``./disk/``, ``l2="redis://"`` is not
localhost database 0. The rules:

* a string that starts like a URL (a scheme of two or more characters, then
  ``:``) must be a valid ``redis://``, ``rediss://`` or ``unix://`` URL;
* a directory is a ``Path``, or a string that is plainly a path (it holds a
  ``/`` or the platform's separator, or starts with ``~`` or ``.``);
* anything else is a tier instance, ``None`` (switched off) or left out.

Pure functions: nothing connects or touches disk. Turning ``l1=``/``l2=``
into tier instances is ``backends/resolve.py``'s job, on these checks.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, urlsplit

from llmcache.errors import ConfigurationError

__all__ = [
    "DEFAULT",
    "REDIS_SCHEMES",
    "Default",
    "check_redis_url",
    "check_ttl",
    "default_directory",
    "looks_like_url",
    "redact",
    "redis_node_name",
]

REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
# Two characters at least, so a Windows drive ("C:\\cache") is a path, not a scheme.
_URL_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")


def looks_like_url(text: str) -> bool:
    """True when ``text`` starts like a URL (a scheme, then ``:``), so it must be a valid one."""
    return _URL_LIKE.match(text) is not None


class Default:
    """Marks an argument left out, where ``None`` means "switched off"."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = Default()


def default_directory() -> Path:
    """``$LLMCACHE_DIR``, else ``~/.cache/llmcache``."""
    return Path(os.environ.get("LLMCACHE_DIR") or "~/.cache/llmcache").expanduser()


def check_ttl(ttl: object, what: str = "ttl") -> float | None:
    """A positive, finite number of seconds, or None. ``True`` is not a number of seconds."""
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise ConfigurationError(f"{what} must be a positive number of seconds or None: {ttl!r}")
    return float(ttl)


def check_redis_url(url: str, what: str = "url") -> str:
    """``url`` if it is a usable Redis URL; else ConfigurationError saying what was read."""
    if not isinstance(url, str):
        raise ConfigurationError(f"{what} must be a Redis URL string, got {type(url).__name__}")
    match = _URL_LIKE.match(url)
    if match is None:
        raise ConfigurationError(
            f"{what}={url!r} is not a URL: a Redis URL is redis://host:6379/0,"
            " rediss://host:6380/0 or unix:///path/to/redis.sock"
        )
    scheme = match.group(1).lower()
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            f"{what}={url!r} is a {scheme}: URL; a Redis URL starts with redis://, rediss:// "
            "or unix://"
        )
    if not url[match.end() :].startswith("//"):
        raise ConfigurationError(
            f"{what}={url!r} reads as scheme {scheme!r} without '//': write {scheme}://host:6379/0"
            if scheme != "unix"
            else f"{what}={url!r} reads as scheme 'unix' without '//': write unix:///path/to/sock"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigurationError(f"{what}={url!r} is not a valid URL: {exc}") from exc
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"{what}={url!r} names no socket path (unix:///path/to/sock)")
        return url
    _check_host(url, what, parts, port)
    return url


def _check_host(url: str, what: str, parts: SplitResult, port: int | None) -> None:
    if not parts.hostname:
        raise ConfigurationError(
            f"{what}={url!r} names no host; localhost is written out: redis://localhost:6379/0"
        )
    if port == 0:
        raise ConfigurationError(f"{what}={url!r} has port 0")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigurationError(
            f"{what}={url!r}: the path is the database number (redis://host:6379/0),"
            f" not {database!r}"
        )


def redis_node_name(url: str) -> str:
    """``host:port`` of a Redis URL (the seed node's name on a cluster)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def redact(url: str) -> str:
    """The URL without its password, fit to print."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
