"""The round trip's floor as the bench adds it up from the steps it measured alone."""

from __future__ import annotations

import pytest

from raylane.bench.suite import floor_ms


def test_the_claim_and_the_ray_task_overlap_and_the_longer_counts():
    # submit, hand-over, end and the wait's answer: four socket messages (0.25 ms each); the
    # queue; the end's write
    base = 4 * 0.25 + 3.0 + 5.0
    # the claim (a socket call, a write, the answer on to the worker and the worker's end: 6 ms)
    # is longer than the Ray task (4 ms)
    claim = 0.5 + 5.0 + 0.25 + 0.25
    assert floor_ms(5.0, 3.0, ray_task_ms=4.0, socket_call_ms=0.5) == pytest.approx(base + claim)
    # a Ray task longer than the claim takes its place
    assert floor_ms(5.0, 3.0, ray_task_ms=12.0, socket_call_ms=0.5) == pytest.approx(base + 12.0)


def test_the_pending_write_is_not_on_the_path():
    # The PENDING write runs beside the queue: only the claim's and the end's writes count.
    assert floor_ms(6.0, 3.0, 4.0, 0.5) - floor_ms(5.0, 3.0, 4.0, 0.5) == pytest.approx(2.0)


def test_each_socket_call_counts_half_each_way():
    # Four messages beside the claim, and in it a call and two messages: a socket call slower
    # by 1 ms shows four times over.
    assert floor_ms(5.0, 3.0, 4.0, 1.5) - floor_ms(5.0, 3.0, 4.0, 0.5) == pytest.approx(4.0)
