"""Coalescing: N identical concurrent misses make one upstream call.

* ``coalescer.py``: the registry of in-flight calls in one process (who leads
  a key, who follows, what they are handed).
* ``outcome.py``: what followers wait for, a value set once from any thread
  and awaited in any thread or event loop (or a signal: retry, give up).
* ``leaders.py``: when a lead is over (its thread's or task's frame gone; a
  stream's lead is held until the stream ends).
* ``redis_leases.py``: the reach across processes, leases on a Redis server;
  the engine attaches it, the coalescer sees it only as ``RemoteLeases``.

Imports run one way: ``redis_leases`` imports the coalescer, never the reverse;
both import ``outcome``, which imports nothing of the project.
"""

from llmcache.coalesce.coalescer import (
    COALESCED,
    Coalescer,
    Flight,
    Joined,
    RemoteLeases,
    Wait,
    WaitBound,
)
from llmcache.coalesce.outcome import Outcome

__all__ = [
    "COALESCED",
    "Coalescer",
    "Flight",
    "Joined",
    "Outcome",
    "RemoteLeases",
    "Wait",
    "WaitBound",
]
