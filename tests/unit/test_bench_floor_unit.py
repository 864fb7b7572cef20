"""The round trip's floor as the bench adds it up from the steps it measured alone."""

from __future__ import annotations

import pytest

from raylane.bench.suite import floor_ms


def test_the_claim_and_the_ray_task_overlap_and_the_longer_counts():
    # submit, hand-over, end and answer: four messages of half a call; the queue; the end's write
    base = 4 * 1.0 + 3.0 + 5.0
    # the claim (two calls and a write: 9 ms) is longer than the Ray task (4 ms)
    assert floor_ms(actor_call_ms=2.0, status_write_ms=5.0, queue_ms=3.0, ray_task_ms=4.0) == pytest.approx(base + 9.0)
    # a Ray task longer than the claim takes its place
    assert floor_ms(actor_call_ms=2.0, status_write_ms=5.0, queue_ms=3.0, ray_task_ms=12.0) == pytest.approx(
        base + 12.0
    )


def test_the_pending_write_is_not_on_the_path():
    # The PENDING write runs beside the queue: only the claim's and the end's writes count.
    slower_writes = floor_ms(actor_call_ms=2.0, status_write_ms=6.0, queue_ms=3.0, ray_task_ms=4.0)
    assert slower_writes - floor_ms(2.0, 5.0, 3.0, 4.0) == pytest.approx(2.0)
