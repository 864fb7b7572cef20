"""Per-key request limits of the HTTP API: a rate (token bucket) and a cap on concurrent waits.

One tenant must not be able to starve the others: each API token gets its own bucket and its
own share of waits, and what is over is answered 429 with the seconds to wait (``Retry-After``)
instead of being queued. The state lives in the API's process; it is small and bounded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
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


class _Accepted:
    """What a tenant's submits were granted lately: (when, how many), oldest first, with their
    sum kept, so that an admit drops only what aged out (a busy tenant admits thousands a second)."""

    __slots__ = ("grants", "total")

    def __init__(self) -> None:
        self.grants: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, when: float, n: int) -> None:
        self.grants.append((when, n))
        self.total += n

    def drop_until(self, when: float) -> None:
        """Forget the grants made at ``when`` or before."""
        while self.grants and self.grants[0][0] <= when:
            self.total -= self.grants.popleft()[1]


class OpenTaskQuota:
    """A cap on each tenant's unfinished tasks (PENDING, SCHEDULED and RUNNING): a submit that
    would go over it is refused (``OverLimit``, HTTP 429) with nothing written, so one tenant
    cannot fill the queues for all. The count comes from the store, at most ``max_age_s`` old,
    plus what this process accepted that the count may not show: the store's search sees a
    write only after its next refresh, so what was accepted in the ``unseen_s`` before a count
    began is added to it (counted twice, at worst, for that long: the cap errs on the safe
    side). Several API replicas may together let a burst of up to one count's age past the cap,
    never more."""

    def __init__(
        self,
        default_limit: int,
        count: Callable[[str], Awaitable[int]],
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        unseen_s: float = 3.0,  # the store refreshes every second; a busy node refreshes late
    ):
        self.default_limit, self._count, self.max_age_s, self._clock = default_limit, count, max_age_s, clock
        self.unseen_s = max(unseen_s, max_age_s)  # what was accepted since the count is always added
        self._seen: dict[str, tuple[int, float]] = {}  # tenant -> (the store's count, when it was asked)
        self._accepted: dict[str, _Accepted] = {}  # tenant -> its grants of the last unseen_s

    async def admit(self, tenant: str, n: int, limit: int | None = None) -> None:
        """Count ``n`` new tasks of ``tenant`` against its quota (``limit``, else the default);
        raises ``OverLimit`` if they do not fit."""
        cap = limit or self.default_limit
        now = self._clock()
        seen = self._seen.get(tenant)
        if seen is None or now - seen[1] > self.max_age_s:
            seen = self._seen[tenant] = (await self._count(tenant), now)
        # Those accepted since the count, and those accepted shortly before it, which it may miss.
        accepted = self._accepted.setdefault(tenant, _Accepted())
        accepted.drop_until(seen[1] - self.unseen_s)
        open_now = seen[0] + accepted.total
        if open_now + n > cap:
            raise OverLimit(
                f"tenant {tenant!r} has {open_now} unfinished tasks; its quota is {cap} (asked for {n} more)",
                self.max_age_s,
            )
        accepted.add(now, n)
