"""The worker's fence on a clock of its own: it ends the worker when its executor's lease is not
confirmed in time, and only then. Ray's calls are replaced by an executor whose answers take
a set time to come back."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from raylane.actors import fencing
from raylane.actors.fencing import FENCE_CHECK_S, FENCE_MARGIN_S, WorkerFence


@dataclass
class _Answer:
    ready_at: float
    remaining: float


class _SlowExecutor:
    """An executor whose lease holds ``lease_s`` from its last heartbeat, answering ``latency_s``
    after each question (never, if ``latency_s`` is None)."""

    def __init__(self, clock, latency_s: float | None, lease_s: float = 8.0):
        self.clock, self.latency_s, self.lease_s = clock, latency_s, lease_s
        self.last_beat: float | None = None  # None: renewed all the time
        self.asked: list[float] = []
        self.lease_remaining = self  # ``executor.lease_remaining.remote()``

    def remote(self) -> _Answer:
        now = self.clock()
        self.asked.append(now)
        remaining = self.lease_s if self.last_beat is None else self.last_beat + self.lease_s - now
        return _Answer(float("inf") if self.latency_s is None else now + self.latency_s, remaining)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    class _Context:
        def get_node_id(self) -> str:
            return "node-a"

    clock = _Clock()
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=0: ([r for r in refs if r.ready_at <= clock()], []))
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref.remaining)
    return clock


def _run(fence: WorkerFence, clock: _Clock, seconds: float, exits: list[int]) -> None:
    for _ in range(round(seconds / FENCE_CHECK_S)):
        clock.now += FENCE_CHECK_S
        fence.check()
        if exits:
            return


def test_a_lease_near_its_end_at_launch_is_confirmed_before_it_runs_out(fake_ray):
    # The task waited for a worker: the lease known at launch leaves 1.3 s before the margin,
    # and the executor, busy, takes 0.5 s to answer. Its lease holds: the worker must live on.
    clock, exits = fake_ray, []
    executor = _SlowExecutor(clock, latency_s=0.5)
    fence = WorkerFence(clock=clock, exit_process=exits.append, watch=False)
    fence.arm(executor, clock() + FENCE_MARGIN_S + 1.3, "node-a", "attempt 0 of task t")
    _run(fence, clock, 30.0, exits)
    assert exits == []
    assert len(executor.asked) >= 25  # and it went on asking, about once a second


def test_an_executor_that_never_answers_ends_the_worker_by_the_deadline(fake_ray):
    clock, exits = fake_ray, []
    executor = _SlowExecutor(clock, latency_s=None)
    fence = WorkerFence(clock=clock, exit_process=exits.append, watch=False)
    armed = clock()
    fence.arm(executor, armed + FENCE_MARGIN_S + 5.0, "node-a", "attempt 0 of task t")
    _run(fence, clock, 30.0, exits)
    assert exits == [fencing.FENCED_EXIT_CODE]
    assert armed + 5.0 <= clock() <= armed + 5.0 + FENCE_CHECK_S + 1e-9


def test_a_lease_that_stops_being_renewed_ends_the_worker(fake_ray):
    # The executor answers, but its heartbeats stop: the worker ends the margin before the lease
    # could lapse, and no later.
    clock, exits = fake_ray, []
    executor = _SlowExecutor(clock, latency_s=0.1)
    fence = WorkerFence(clock=clock, exit_process=exits.append, watch=False)
    fence.arm(executor, clock() + 10.0, "node-a", "attempt 0 of task t")
    _run(fence, clock, 5.0, exits)
    executor.last_beat = stopped = clock()  # its last heartbeat: the lease ends 8 s from now
    _run(fence, clock, 30.0, exits)
    assert exits == [fencing.FENCED_EXIT_CODE]
    assert stopped + 8.0 - FENCE_MARGIN_S - FENCE_CHECK_S - 1e-9 <= clock() <= stopped + 8.0 - FENCE_MARGIN_S + 1e-9
