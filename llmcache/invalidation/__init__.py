"""Dependency-versioned invalidation: ``depends_on``, ``invalidate``, the version stores.

* ``versions.py``: the model (versions, snapshots, ``depends_on``), the
  ``VersionStore`` protocol and the one-process store.
* ``disk.py``: the store the processes of one host share, beside a DiskTier.
* ``redis.py``: the store every host shares, on a RedisTier's server (imported
  only when a Redis tier is configured: redis is an optional extra).

Imports run one way: the stores import ``versions``, never the reverse.
"""

from llmcache.invalidation.disk import DiskVersions
from llmcache.invalidation.versions import (
    DependencyRules,
    MemoryVersions,
    PendingSnapshots,
    VersionStore,
    current_dependencies,
    depends_on,
    new_version,
    validate_dependency,
)

__all__ = [
    "DependencyRules",
    "DiskVersions",
    "MemoryVersions",
    "PendingSnapshots",
    "VersionStore",
    "current_dependencies",
    "depends_on",
    "new_version",
    "validate_dependency",
]
