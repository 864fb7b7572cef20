"""Fencing: a task attempt runs at most once, even when its executor freezes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import ray
from conftest import wait_until

import raylane
from raylane.states import TaskState


@raylane.task(name="test.fence.scribe", max_retries=3, retry_backoff=0.1)
def scribe(path: str, seconds: float) -> int:
    """Append this worker's pid and the time to ``path`` every 0.2 s for ``seconds``."""
    pid = os.getpid()
    end = time.time() + seconds
    while time.time() < end:
        with open(path, "a") as f:
            f.write(f"{pid} {time.time():.3f}\n")
        time.sleep(0.2)
    return pid


def _lines(path: Path) -> list[tuple[int, float]]:
    return [(int(p), float(t)) for p, t in (line.split() for line in path.read_text().splitlines() if line.strip())]


@raylane.task(name="test.fence.hold")
def hold(path: str, seconds: float) -> None:
    """Hold a CPU for ``seconds``, marking when it began (with its worker's pid) and when it is done."""
    Path(f"{path}.began").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(path).touch()  # its CPU is free an instant later


@raylane.task(name="test.fence.busy")
def busy(seconds: float) -> int:
    """Hold the GIL for ``seconds`` in one C call, as a long sort or a big regex does, and return
    the worker's pid. ``ctypes.PyDLL`` calls keep the GIL, unlike ``CDLL`` ones."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1e6))
    return os.getpid()


def _ray_task_state(task_id: str) -> str | None:
    from ray.util.state import list_tasks

    found = list_tasks(filters=[("name", "=", f"raylane:test.fence.scribe:{task_id}")], limit=5)
    return found[0].state if found else None


def _held_no_more(path: Path) -> bool:
    """Whether the ``hold`` task at ``path`` holds its CPU no more: it is done, or its worker is gone."""
    if path.exists():
        return True
    try:
        os.kill(int(Path(f"{path}.began").read_text()), 0)
    except ProcessLookupError:
        return True
    except ValueError:  # its pid is being written
        pass
    return False


def test_a_task_cancelled_while_its_executor_is_frozen_never_starts(rl, store, tmp_path):
    """Given every CPU taken and a task whose claim is accepted waiting for one, its executor
    frozen and the task cancelled (the kill waits at the frozen executor), when the CPUs free
    and the executor thaws, the function never starts: its claim's answer is older than the cancel."""
    cpus = int(ray.cluster_resources()["CPU"])
    held = [tmp_path / f"held-{i}" for i in range(cpus)]
    # Tasks of the same executor, each alone in a Ray task of one CPU: Ray may queue the next
    # task of that executor at one of their workers, where it starts as soon as they end.
    blockers = [hold.options(soft_timeout=60).submit(str(p), 4.0) for p in held]
    wait_until(
        lambda: all(Path(f"{p}.began").exists() for p in held),
        timeout=60,
        what=lambda: f"the CPUs to be taken: {sorted(x.name for x in tmp_path.iterdir())}",
    )
    path = tmp_path / "scribe.log"
    h = scribe.submit(str(path), 1.0)
    wait_until(lambda: h.record().state is TaskState.RUNNING, timeout=30, what="the claim to be accepted")
    executor_pid = int(h.record().worker.split("/")[1])
    os.kill(executor_pid, signal.SIGSTOP)
    try:
        assert h.cancel().state is TaskState.CANCELLED
        # A blocker that began just before the freeze may not have heard its executor confirm
        # the lease: its fence then ends its worker instead of letting it finish. Either way its
        # CPU is free once it is done or its worker is gone.
        wait_until(
            lambda: all(_held_no_more(p) for p in held),
            timeout=30,
            what=lambda: f"the CPUs to free: {sorted(x.name for x in tmp_path.iterdir())}",
        )
    finally:
        os.kill(executor_pid, signal.SIGCONT)
    wait_until(lambda: _ray_task_state(h.id) in ("FINISHED", "FAILED"), timeout=30, what="the task's Ray task to end")
    assert not path.exists(), "the function started after the cancel was accepted"
    assert h.record().state is TaskState.CANCELLED
    for b in blockers:
        b.wait(timeout=60)


@pytest.fixture
def second_executor(rl, settings):
    """A second Executor in the deployment, whose sweep recovers the tasks of a lapsed one."""
    from raylane.actors.deploy import _options
    from raylane.actors.executor import Executor
    from raylane.client import _actor_config, _endpoints

    config = _actor_config(settings, _endpoints(settings, start_missing=False))
    name = "Executor-fencing-test"
    actor = ray.remote(Executor).options(**dict(_options(config, name), max_restarts=0)).remote(config)
    ray.get(actor.ensure_running.remote())
    yield actor
    ray.kill(actor, no_restart=True)


def test_frozen_executor_cannot_run_an_attempt_beside_the_next(rl, store, tmp_path, second_executor):
    """Given an executor frozen (SIGSTOP) past its lease while it runs a 20 s task that appends to a
    file, when the other executor's sweep starts attempt 1, nothing from attempt 0 is written after
    attempt 1 starts, and the task still ends once, SUCCEEDED."""
    path = tmp_path / "scribe.log"
    h = scribe.submit(str(path), 20.0)
    wait_until(lambda: path.exists() and len(_lines(path)) >= 3, timeout=60, what="attempt 0 to run")
    running = h.record()
    assert running.state is TaskState.RUNNING and running.attempt == 0
    executor_pid = int(running.worker.split("/")[1])
    os.kill(executor_pid, signal.SIGSTOP)
    try:
        # The second executor's sweep finds the lapsed lease and starts attempt 1.
        wait_until(lambda: h.record().attempt >= 1, timeout=60, what="the sweep to start attempt 1")
        retried = h.record()
    finally:
        os.kill(executor_pid, signal.SIGCONT)
    final = h.wait(timeout=120)
    assert final.state is TaskState.SUCCEEDED and final.attempt >= 1, (final.state, final.error)
    first = retried.attempts[0]
    assert first.error_type == "WorkerLost", first
    lines = _lines(path)
    attempt0_pid = lines[0][0]
    last_of_attempt0 = max(t for p, t in lines if p == attempt0_pid)
    # Attempt 0's writes all come before the sweep recorded it lost, which is before attempt 1 began.
    assert last_of_attempt0 < first.finished_at.timestamp(), (last_of_attempt0, first.finished_at)
    later = [(p, t) for p, t in lines if p != attempt0_pid]
    assert later and min(t for _, t in later) > last_of_attempt0
    # The runs do not overlap: each pid's lines form one unbroken stretch.
    order = [p for p, _ in sorted(lines, key=lambda x: x[1])]
    stretches = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
    assert len(stretches) == len(set(stretches)), stretches


def test_a_newer_attempt_on_record_stops_the_older(rl, store, tmp_path):
    """Once a newer attempt's record is accepted, the older attempt still running is killed
    (here the newer PENDING record is written as a retry elsewhere would write it)."""
    path = tmp_path / "scribe.log"
    h = scribe.submit(str(path), 30.0)
    wait_until(lambda: path.exists() and len(_lines(path)) >= 2, timeout=60, what="attempt 0 to run")
    running = h.record()
    # A newer attempt is recorded (PENDING, attempt 1) through the keeper, as the sweep would.
    keeper = ray.get_actor("StatusKeeper", namespace="raylane")
    lost = running.moved_to(TaskState.FAILED, error_type="WorkerLost", error="test", will_retry=True)
    pending, _msg = lost.retried(0.0)
    [outcome] = ray.get(keeper.write.remote([pending]))
    assert outcome.accepted
    written_at = time.time()
    # Then attempt 0 stops writing (it would go on for half a minute).
    wait_until(lambda: _lines(path)[-1][1] < time.time() - 2.0, timeout=20, what="attempt 0 to stop")
    assert _lines(path)[-1][1] < written_at + 3
    raylane.cancel(h.id)


def test_a_task_holding_the_gil_past_the_lease_runs_on_while_its_executor_is_alive(rl):
    """A worker's fence cannot ask its executor while the task holds the GIL. Once it can, a
    lease that held all along (its executor is well) lets the task go on: the task ends
    SUCCEEDED in its first attempt, not as a worker that ended itself."""
    from raylane.actors.fencing import LEASE_TTL_S

    h = busy.submit(LEASE_TTL_S + 2.0)
    final = h.wait(timeout=120)
    assert final.state is TaskState.SUCCEEDED and final.attempt == 0, (final.state, final.error_type, final.error)
