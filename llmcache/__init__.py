"""llmcache: a tiered cache for LLM calls, as a LangChain drop-in.

from langchain_core.globals import set_llm_cache
from llmcache import TieredCache
set_llm_cache(TieredCache())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmcache.backends.disk import DiskTier
from llmcache.backends.memory import MemoryTier
from llmcache.errors import (
    ConfigurationError,
    IntegrityError,
    LLMCacheError,
    SerializationError,
    TierError,
)
from llmcache.invalidation import (
    MemoryVersions,
    VersionStore,
    current_dependencies,
    depends_on,
)
from llmcache.invalidation.disk import DiskVersions
from llmcache.stats import CacheStats, TierStats
from llmcache.tiers import Tier

if TYPE_CHECKING:
    from llmcache.backends.redis import RedisTier
    from llmcache.byte_store import TieredByteStore
    from llmcache.langchain_adapter import TieredCache, default_directory
    from llmcache.langgraph_cache import NodeCache
    from llmcache.plain import Cache
    from llmcache.semantic import SemanticTier
    from llmcache.streaming import cached

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheStats",
    "ConfigurationError",
    "DiskTier",
    "DiskVersions",
    "IntegrityError",
    "LLMCacheError",
    "MemoryTier",
    "MemoryVersions",
    "NodeCache",
    "RedisTier",
    "SemanticTier",
    "SerializationError",
    "Tier",
    "TierError",
    "TierStats",
    "TieredByteStore",
    "TieredCache",
    "VersionStore",
    "cached",
    "current_dependencies",
    "default_directory",
    "depends_on",
]


# Imported on first use: RedisTier needs the optional redis package, SemanticTier
# the optional numpy (the semantic extra), the LangChain faces are not needed
# by plain-Python users, and Cache pulls in the engine, which a user of one tier
# does not need.
_LAZY = {
    "Cache": "llmcache.plain",
    "NodeCache": "llmcache.langgraph_cache",  # needs the langgraph extra
    "RedisTier": "llmcache.backends.redis",
    "SemanticTier": "llmcache.semantic",
    "TieredByteStore": "llmcache.byte_store",
    "TieredCache": "llmcache.langchain_adapter",
    "cached": "llmcache.streaming",  # needs LangChain, like TieredCache
    "default_directory": "llmcache.langchain_adapter",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmcache' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
