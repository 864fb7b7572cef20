"""The one backoff of raylane's outage loops: capped exponential delays with jitter.

Every loop that rides out an outage of Kafka, OpenSearch or an actor sleeps ``backoff_s(n)``
before its n-th retry. The jitter keeps many waiters (consumers, executors, clients) from
retrying in step when a service comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_s(
    attempt: int, base_s: float = 0.1, cap_s: float = 2.0, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry ``attempt`` (1 for the first): between half and all of
    ``min(cap_s, base_s * 2**attempt)``."""
    delay = min(cap_s, base_s * 2 ** max(0, min(attempt, 64)))
    return delay / 2 + rand() * delay / 2
