"""Per-key request limits of the HTTP API: a rate (token bucket) and a cap on concurrent waits.

One tenant must not be able to starve the others: each API token gets its own bucket and its
own share of waits, and what is over is answered 429 with the seconds to wait (``Retry-After``)
instead of being queued. The state lives in the API's process; it is small and bounded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class OverLimit(Exception):
    """A request over its key's limit; ``retry_after_s`` says when one would be allowed."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """``retry_after_s`` as an HTTP ``Retry-After`` value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second on average, bursts of up to ``burst``.
    Keys idle long enough to have a full bucket are forgotten, so memory stays bounded."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate, self.burst, self.max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def take(self, key: str) -> None:
        """Spend one request of ``key``'s allowance; raises ``OverLimit`` if there is none left."""
        now = self._clock()
        tokens, when = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise OverLimit(f"over {self.rate:g} requests/s for this token", (1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # the least recently seen key: its bucket has refilled longest


class ConcurrencyLimiter:
    """At most ``limit`` operations at once per key."""

    def __init__(self, limit: int, retry_after_s: float = 1.0):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit, self.retry_after_s = limit, retry_after_s
        self._held: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str, what: str = "operations") -> Iterator[None]:
        """One of ``key``'s places for the duration of the block; raises ``OverLimit`` if all are taken."""
        held = self._held.get(key, 0)
        if held >= self.limit:
            raise OverLimit(f"at most {self.limit} concurrent {what} per token", self.retry_after_s)
        self._held[key] = held + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]

    def held(self, key: str) -> int:
        """How many places ``key`` holds now."""
        return self._held.get(key, 0)
