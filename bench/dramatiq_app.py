"""The Dramatiq side of the comparison: one no-op actor, a Redis broker, results kept in Redis."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

_URL = os.environ.get("RAYLANE_BENCH_REDIS", "redis://127.0.0.1:26390/0")
broker = RedisBroker(url=_URL)
broker.add_middleware(Results(backend=RedisBackend(url=_URL), result_ttl=600_000))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", store_results=True, max_retries=0)
def noop(i: int) -> int:
    """Return the argument: the work is nothing, so the cost measured is the system's."""
    return i
