"""The round trip's floor as the bench adds it up from the steps it measured alone."""

from __future__ import annotations

import pytest

from raylane.bench.suite import floor_ms


def test_the_claim_and_the_ray_task_overlap_and_the_longer_counts():
    # submit and answer: two messages of the driver's kept socket (0.1 ms each); hand-over and
    # end: two socket messages; the queue; the end's write
    base = 2 * 0.1 + 2 * 0.25 + 3.0 + 5.0
    # the claim (a socket call, a write, a socket message and a Ray message: 7.25 ms) is longer
    # than the Ray task (4 ms)
    claim = 0.5 + 5.0 + 0.25 + 1.0
    assert floor_ms(2.0, 5.0, 3.0, ray_task_ms=4.0, socket_call_ms=0.5, driver_call_ms=0.2) == pytest.approx(
        base + claim
    )
    # a Ray task longer than the claim takes its place
    assert floor_ms(2.0, 5.0, 3.0, ray_task_ms=12.0, socket_call_ms=0.5, driver_call_ms=0.2) == pytest.approx(
        base + 12.0
    )


def test_the_pending_write_is_not_on_the_path():
    # The PENDING write runs beside the queue: only the claim's and the end's writes count.
    slower_writes = floor_ms(2.0, 6.0, 3.0, 4.0, 0.5, 0.2)
    assert slower_writes - floor_ms(2.0, 5.0, 3.0, 4.0, 0.5, 0.2) == pytest.approx(2.0)


def test_the_drivers_calls_count_half_each_way():
    # The submit's request and the wait's answer are on the path; a slower driver call shows in full.
    assert floor_ms(2.0, 5.0, 3.0, 4.0, 0.5, 1.2) - floor_ms(2.0, 5.0, 3.0, 4.0, 0.5, 0.2) == pytest.approx(1.0)
