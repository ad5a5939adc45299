"""A pub/sub subscription kept alive by a background thread (version bumps, lease news)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmcache.backends.redis import RedisTier

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


def subscribe_until(
    tier: RedisTier, channel: str, stop: threading.Event, serve: Callable[[Any], None]
) -> None:
    """Subscribe to ``channel`` on a connection of its own and ``serve`` it, until ``stop``.

    ``serve`` reads the subscription's messages until ``stop`` is set or it
    raises (a dead connection, or one it judged silent). Then the connection
    is closed and, unless stopping, a new one made after a backoff that starts
    at 50 ms and doubles to 1 s while the server stays unreachable.
    """
    backoff = _FIRST_BACKOFF
    while not stop.is_set():
        client = None
        try:
            client = tier._new_sync_client()
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(channel)
                backoff = _FIRST_BACKOFF  # reached the server
                serve(pubsub)
            finally:
                pubsub.close()
        except Exception:
            stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
        finally:
            if client is not None:
                client.close()
