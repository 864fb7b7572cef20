"""The Celery side of the comparison: one no-op task, a Redis broker and result backend."""

from __future__ import annotations

import os

from celery import Celery

_URL = os.environ.get("RAYLANE_BENCH_REDIS", "redis://127.0.0.1:26390/0")
app = Celery("raylane_bench", broker=_URL, backend=_URL)
app.conf.update(
    worker_prefetch_multiplier=4,
    task_acks_late=False,
    result_expires=600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    """Return the argument: the work is nothing, so the cost measured is the system's."""
    return i
