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

Pure functions but for the tiers they build; nothing connects or touches disk.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, urlsplit

from llmcache.errors import ConfigurationError
from llmcache.tiers import Tier

__all__ = [
    "DEFAULT",
    "REDIS_SCHEMES",
    "Default",
    "check_redis_url",
    "check_ttl",
    "default_directory",
    "is_redis_tier",
    "resolve_l1",
    "resolve_l2",
]

REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
# Two characters at least, so a Windows drive ("C:\\cache") is a path, not a scheme.
_URL_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")


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


def resolve_l1(l1: object) -> Tier | None:
    """The L1 tier for ``TieredCache(l1=...)``: a MemoryTier when left out."""
    if isinstance(l1, Default):
        from llmcache.backends.memory import MemoryTier

        return MemoryTier()
    if l1 is None:
        return None
    return _tier_instance(l1, "l1", "MemoryTier()")


def resolve_l2(l2: object) -> Tier | None:
    """The L2 for ``TieredCache(l2=...)``: a DiskTier in the default directory when left out."""
    from llmcache.backends.disk import DiskTier

    if isinstance(l2, Default):
        return DiskTier(default_directory())
    if l2 is None:
        return None
    if isinstance(l2, os.PathLike):
        return DiskTier(l2)
    if isinstance(l2, str):
        if _URL_LIKE.match(l2):
            check_redis_url(l2, "l2")
            try:
                from llmcache.backends.redis import RedisTier
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConfigurationError(
                    "a Redis L2 needs the redis extra: pip install 'llmcache[redis]'"
                ) from exc
            return RedisTier(l2)
        if _plainly_a_path(l2):
            return DiskTier(l2)
        raise ConfigurationError(
            f"l2={l2!r} is neither a Redis URL nor a directory path: for a directory named"
            f" {l2!r} pass Path({l2!r}) or './{l2}'; for Redis, 'redis://host:6379/0'"
        )
    return _tier_instance(l2, "l2", "DiskTier(path) or RedisTier(url)")


def is_redis_tier(tier: object) -> bool:
    """True for a RedisTier, without importing redis (an optional extra)."""
    return type(tier).__name__ == "RedisTier" and type(tier).__module__.startswith("llmcache.")


def _plainly_a_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith(("~", "."))
    )


def _tier_instance(value: object, what: str, example: str) -> Tier:
    if isinstance(value, type):
        raise ConfigurationError(
            f"{what} takes a tier instance, not the class {value.__name__}: pass {example}"
        )
    if not isinstance(value, Tier):
        raise ConfigurationError(
            f"{what} must be a tier ({example}), "
            + ("a Redis URL or a directory path, " if what == "l2" else "")
            + f"or None; got {type(value).__name__} {value!r}"
        )
    return value
