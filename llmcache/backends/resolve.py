"""``TieredCache(l1=..., l2=...)`` arguments turned into tier instances, by ``config``'s rules.

Here, not in ``config``, because building a tier imports its backend: the
backends import ``config``'s checks, and this module imports the backends,
so the imports run one way. Nothing connects or touches disk.
"""

from __future__ import annotations

import os

from llmcache.config import Default, check_redis_url, default_directory, looks_like_url
from llmcache.errors import ConfigurationError
from llmcache.tiers import Tier

__all__ = ["is_redis_tier", "resolve_l1", "resolve_l2"]


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
        if looks_like_url(l2):
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
