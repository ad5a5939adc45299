"""The exceptions llmcache raises, all under one root.

    LLMCacheError                 every error this package raises
    ├── ConfigurationError        bad arguments: a namespace, a TTL, a size, a URL
    ├── SerializationError        a value that cannot be encoded, or stored bytes that are
    │   │                         damaged (checksum, truncation, garbage, bounds)
    │   └── IntegrityError        a stored value this process cannot verify: HMAC or key
    │                             id mismatch, signed but no secret here, another format
    └── TierError                 a backend failed (wraps the driver's exception)

The cache itself never lets a TierError or a SerializationError reach a
LangChain call: the layering turns them into misses (invariant 1). They exist
for direct users of a tier and for the counters in ``stats()``.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "IntegrityError",
    "LLMCacheError",
    "SerializationError",
    "TierError",
]


class LLMCacheError(Exception):
    """The root of every exception raised by llmcache."""


class ConfigurationError(LLMCacheError, ValueError):
    """An argument or setting is invalid."""


class SerializationError(LLMCacheError):
    """A value cannot be encoded, or stored bytes cannot be decoded."""


class IntegrityError(SerializationError):
    """A stored value this process cannot verify (HMAC, key id, secret or format version)."""


class TierError(LLMCacheError):
    """A storage backend failed; the driver's exception is the ``__cause__``."""
