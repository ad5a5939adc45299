"""A small circuit breaker any tier can wrap its round trips in.

Closed: calls go through; ``failure_threshold`` consecutive failures open it.
Open: calls are refused at once (``TierError``) for ``cooldown`` seconds, so a
dead server costs nothing instead of a timeout per call.
Half-open: after the cool-down exactly one call (the probe) goes through; its
success closes the breaker, its failure opens it for another cool-down. A
probe that never reports back (its caller was cancelled) is given up after a
cool-down, and another probe is let through.

The clock is injected (``time.monotonic`` by default) so tests move time by
hand; a lock makes it safe to share between threads and event loops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from llmcache.errors import ConfigurationError, TierError

__all__ = ["CircuitBreaker", "State"]

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Counts consecutive failures of one backend and decides whether to ask it."""

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "tier",
    ) -> None:
        if failure_threshold < 1:
            raise ConfigurationError("failure_threshold must be at least 1")
        if cooldown <= 0:
            raise ConfigurationError("cooldown must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # set while open or half-open
        self._probe_since: float | None = None  # set while a probe is out
        self.opened = 0  # how many times it opened: for stats and tests

    @property
    def state(self) -> State:
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: float) -> State:
        if self._opened_at is None:
            return "closed"
        if now - self._opened_at < self.cooldown:
            return "open"
        return "half-open"

    @property
    def failing(self) -> bool:
        """Did the last call reported fail (or is the breaker not closed)?

        A lookup's lease follows its read at once: when that read has just
        failed, the lease would wait out a timeout of its own on the same server.
        """
        with self._lock:
            return self._failures > 0 or self._opened_at is not None

    def allow(self) -> bool:
        """May a call go out now? In half-open, True for the single probe only."""
        with self._lock:
            now = self._clock()
            state = self._state(now)
            if state == "closed":
                return True
            if state == "open":
                return False
            if self._probe_since is not None and now - self._probe_since < self.cooldown:
                return False  # a probe is already out
            self._probe_since = now
            return True

    def check(self) -> None:
        """Raise ``TierError`` unless a call may go out now (see :meth:`allow`)."""
        # Closed (the common case) needs no lock: a failure that opens it at this
        # very moment lets this one call through, as if it had come a moment earlier.
        if self._opened_at is None:
            return
        if not self.allow():
            raise TierError(f"{self.name}: circuit breaker open, not asking the server")

    def success(self) -> None:
        if self._failures == 0 and self._opened_at is None:
            return  # nothing to forget (read without the lock: see check)
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_since = None

    def failure(self) -> None:
        with self._lock:
            now = self._clock()
            self._failures += 1
            probing = self._opened_at is not None
            if probing or self._failures >= self.failure_threshold:
                # A failed probe, or the threshold reached: (re)start the cool-down.
                if not probing:
                    self.opened += 1
                self._opened_at = now
                self._probe_since = None

    def reset(self) -> None:
        """Close the breaker and forget past failures."""
        self.success()

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failures={self._failures}, "
            f"threshold={self.failure_threshold}, cooldown={self.cooldown})"
        )
