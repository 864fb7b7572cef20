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
    value: object


class _Method:
    """``executor.<method>.remote()``: an answer from ``make`` that comes back ``latency_s`` later
    (never, if ``latency_s`` is None)."""

    def __init__(self, executor: _SlowExecutor, make) -> None:
        self.executor, self.make = executor, make

    def remote(self) -> _Answer:
        ex = self.executor
        now = ex.clock()
        ex.asked.append(now)
        return _Answer(float("inf") if ex.latency_s is None else now + ex.latency_s, self.make(now))


class _SlowExecutor:
    """An executor whose lease holds ``lease_s`` from its last heartbeat, answering ``latency_s``
    after each question (never, if ``latency_s`` is None). Its lease has held without a break
    since ``held_since``."""

    def __init__(self, clock, latency_s: float | None, lease_s: float = 8.0):
        self.clock, self.latency_s, self.lease_s = clock, latency_s, lease_s
        self.last_beat: float | None = None  # None: renewed all the time
        self.held_since = 0.0
        self.asked: list[float] = []
        self.lease_remaining = _Method(self, self._remaining)
        self.lease_held = _Method(self, lambda now: (self._remaining(now), now - self.held_since))

    def _remaining(self, now: float) -> float:
        return self.lease_s if self.last_beat is None else self.last_beat + self.lease_s - now


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

    def get(ref: _Answer, timeout: float | None = None):
        # Waiting for an answer takes the fence's clock on with it.
        if timeout is not None:
            if ref.ready_at > clock() + timeout:
                clock.now += timeout
                raise ray.exceptions.GetTimeoutError("no answer in time")
            clock.now = max(clock(), ref.ready_at)
        return ref.value

    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=0: ([r for r in refs if r.ready_at <= clock()], []))
    monkeypatch.setattr(ray, "get", get)
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


def _starved_past_the_deadline(clock: _Clock, executor: _SlowExecutor, exits: list[int]) -> WorkerFence:
    """A fence armed with 8 s to its deadline, checked for 1 s, then not at all for 12 s: the task
    held the GIL, so its thread could not run."""
    fence = WorkerFence(clock=clock, exit_process=exits.append, watch=False)
    fence.arm(executor, clock() + FENCE_MARGIN_S + 8.0, "node-a", "attempt 0 of task t")
    _run(fence, clock, 1.0, exits)
    clock.now += 12.0
    fence.check()
    return fence


def test_a_task_that_held_the_gil_past_the_deadline_goes_on_if_the_lease_held(fake_ray):
    clock, exits = fake_ray, []
    executor = _SlowExecutor(clock, latency_s=0.1)
    fence = _starved_past_the_deadline(clock, executor, exits)
    assert exits == []
    _run(fence, clock, 20.0, exits)  # and it goes on as before, asking about once a second
    assert exits == []


def test_a_task_that_held_the_gil_ends_if_the_lease_broke_meanwhile(fake_ray):
    # The executor's lease lapsed while the fence could not look, and was renewed since: another
    # attempt may have started in the gap, so this one must end.
    clock, exits = fake_ray, []
    executor = _SlowExecutor(clock, latency_s=0.1)
    executor.held_since = clock() + 11.5  # the lease was known to hold to 10 s from now, not past it
    _starved_past_the_deadline(clock, executor, exits)
    assert exits == [fencing.FENCED_EXIT_CODE]


def test_a_task_that_held_the_gil_ends_if_the_executor_does_not_answer_soon(fake_ray):
    clock, exits = fake_ray, []
    executor = _SlowExecutor(clock, latency_s=None)
    _starved_past_the_deadline(clock, executor, exits)
    assert exits == [fencing.FENCED_EXIT_CODE]
