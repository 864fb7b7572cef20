"""A task's life through real Kafka, OpenSearch and Ray: results, versions, cancels, timeouts, failures."""

from __future__ import annotations

import contextlib
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import ray
from conftest import running_anywhere, wait_until

import raylane
from raylane import client
from raylane.actors.deploy import actor_stats
from raylane.actors.executor import WARM_PER_CPU
from raylane.bench.processes import role_of
from raylane.errors import TaskAlreadyFinished, TaskCancelled, TaskFailed, TaskTimedOut, UnknownTaskName
from raylane.models import HOPS, SubmitRequest
from raylane.protocol import find_request_handler, keeper_handles
from raylane.stack import proc
from raylane.states import TaskState, version_of


@raylane.task(name="test.add", timeout=30)
def add(a: int, b: int) -> int:
    return a + b


@raylane.task(name="test.sleep_then_mark", timeout=60)
def sleep_then_mark(seconds: float, marker_dir: str) -> str:
    """Record its pid, sleep, then leave a marker: the side effect a kill must prevent.
    It ignores interrupts, so only a forced kill of its worker stops it."""
    Path(marker_dir, "pid").write_text(str(os.getpid()))
    deadline = time.time() + seconds
    while time.time() < deadline:
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(max(0.0, deadline - time.time()))
    Path(marker_dir, "done").write_text("ran to the end")
    return "finished"


@raylane.task(name="test.boom")
def boom(message: str) -> None:
    raise ValueError(message)


@raylane.task(name="test.short_sleep")
def short_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@raylane.task(name="test.worker_pid")
def worker_pid() -> int:
    return os.getpid()


def _doc_version(store, task_id: str) -> int:
    return store.client.get(index=store.alias, id=task_id)["_version"]


def test_submit_to_result_with_versions(rl, store, unique):
    queue = f"q-{unique}"
    rl.pause(queue)
    h = add.options(queue=queue).submit(2, 3)
    # While the queue is paused the task is PENDING at version 1.
    rec = h.record()
    assert rec.state is TaskState.PENDING and rec.version == 1 == _doc_version(store, h.id)
    rl.resume(queue)
    assert h.result(timeout=60) == 5
    rec = h.record()
    assert rec.state is TaskState.SUCCEEDED and rec.level == 3 and rec.attempt == 0
    assert rec.version == version_of(TaskState.SUCCEEDED, 0) == _doc_version(store, h.id)
    assert rec.started_at and rec.finished_at and rec.created_at <= rec.started_at <= rec.finished_at
    assert rec.args == [2, 3] and rec.result == 5 and rec.queue == queue
    # The record keeps when the attempt passed each hop of its way, in the order of the way.
    hops = [rec.hops[h] for h in HOPS]
    assert hops == sorted(hops) and hops[0] > 0
    run_started = (rec.started_at - rec.created_at).total_seconds()
    assert hops[HOPS.index("handed")] <= run_started <= hops[HOPS.index("claimed")]


def test_a_driver_on_the_actors_node_submits_and_waits_by_socket(rl, store):
    """On the node of the RequestHandler and of the task's keeper, a single submit and the wait
    for its end go over their sockets, with the id, record and typed errors a Ray call gives."""
    conn = client._connection()
    before = conn.by_socket
    handle = add.submit(20, 22)
    assert handle.result(timeout=60) == 42
    assert conn.by_socket - before == 2  # the submit, then the wait
    assert store.get(handle.id).state is TaskState.SUCCEEDED
    with pytest.raises(UnknownTaskName, match=r"no task named 'no\.such\.task'") as e:
        client.submit_requests([SubmitRequest(name="no.such.task")])
    assert e.value.name == "no.such.task"
    assert conn.by_socket - before == 3


def test_a_handlers_writes_go_to_the_keeper_of_its_node_by_socket(rl):
    """The RequestHandler sends a submit's PENDING write to a keeper on its node over that keeper's
    socket, as the executors send their claims and ends."""
    handler = find_request_handler("raylane")
    add.submit(1, 2).result(timeout=60)  # the handler connects to the keeper's socket meanwhile
    wait_until(lambda: ray.get(handler.get_stats.remote())["keeper_sockets"] == 1, timeout=30)
    before = ray.get(handler.get_stats.remote())["written_by_socket"]
    assert add.submit(2, 3).result(timeout=60) == 5
    assert ray.get(handler.get_stats.remote())["written_by_socket"] > before


def test_a_keepers_writes_go_out_on_its_loops_own_connection(rl):
    """A StatusKeeper makes its bulk writes from its event loop on a kept connection of its own,
    not through the OpenSearch client on a thread: a task's writes are answered there."""
    keepers = keeper_handles("raylane")
    before = [ray.get(k.get_stats.remote()) for k in keepers]
    assert add.submit(3, 4).result(timeout=60) == 7
    after = [ray.get(k.get_stats.remote()) for k in keepers]
    assert sum(a["loop_bulks"] - b["loop_bulks"] for a, b in zip(after, before, strict=True)) >= 2  # claim, end
    assert [a["loop_bulks_not_answered"] for a in after] == [b["loop_bulks_not_answered"] for b in before]


def test_running_state_and_version_observed(rl, store, tmp_path):
    h = sleep_then_mark.submit(1.0, str(tmp_path))
    wait_until(lambda: h.status() is TaskState.RUNNING, what="RUNNING")
    assert _doc_version(store, h.id) == version_of(TaskState.RUNNING, 0)
    assert h.result(timeout=60) == "finished"


def test_builtin_echo(rl):
    assert rl.submit("raylane.echo", 1, "two", three=3).result(timeout=60) == {
        "args": [1, "two"],
        "kwargs": {"three": 3},
    }


def test_cancel_while_pending_never_runs(rl, unique, tmp_path):
    queue = f"q-{unique}"
    rl.pause(queue)
    h = sleep_then_mark.options(queue=queue).submit(0.0, str(tmp_path))
    cancelled = h.cancel()
    assert cancelled.state is TaskState.CANCELLED
    rl.resume(queue)
    # Once resumed, the message is consumed and its RUNNING claim rejected: the executor skips it.
    # Its Ray task was started beside the claim, and its worker held the function back.
    stats = ray.get(ray.get_actor("Executor", namespace="raylane").get_stats.remote())
    before, held_back = stats["skipped"], stats["held_back"]
    marker = add.options(queue=queue).submit(1, 1)
    assert marker.result(timeout=60) == 2  # the queue has moved past the cancelled task
    wait_until(
        lambda: ray.get(ray.get_actor("Executor", namespace="raylane").get_stats.remote())["skipped"] > before,
        what="the executor to skip the cancelled task",
    )
    assert not (tmp_path / "pid").exists() and not (tmp_path / "done").exists()
    assert ray.get(ray.get_actor("Executor", namespace="raylane").get_stats.remote())["held_back"] > held_back
    assert h.record().state is TaskState.CANCELLED
    with pytest.raises(TaskCancelled):
        h.result(timeout=5)


def test_cancel_while_running_kills_it(rl, tmp_path):
    h = sleep_then_mark.submit(4.0, str(tmp_path))
    pid = int(wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), what="task start"))
    assert h.status() is TaskState.RUNNING
    rec = h.cancel()
    assert rec.state is TaskState.CANCELLED
    # The Ray worker running it is killed.
    wait_until(lambda: not proc.pid_alive(pid), timeout=20, what="the task's worker to be killed")
    assert not (tmp_path / "done").exists()
    assert h.wait(timeout=10).state is TaskState.CANCELLED
    assert h.record().version == 3


@raylane.task(name="test.sleep_noting_interrupt", timeout=60)
def sleep_noting_interrupt(seconds: float, marker_dir: str) -> str:
    """Sleep in one blocking call; an interrupt that ends it is noted, as a task cleaning up would."""
    Path(marker_dir, "pid").write_text(str(os.getpid()))
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        Path(marker_dir, "interrupted").write_text("cleaned up")
        raise
    return "slept"


def test_the_executor_starts_its_nodes_workers_before_tasks_need_them(rl):
    # At its start the executor has Ray start WARM_PER_CPU workers per CPU of its node, so that
    # a first burst does not wait for worker processes to start (Executor._warm_workers).
    cpus = int(ray.cluster_resources()["CPU"])  # the local stack: one node
    wait_until(
        lambda: actor_stats("raylane")["Executor"]["workers_warmed"] == WARM_PER_CPU * cpus,
        what=lambda: f"the warm-up; the executor's stats: {actor_stats('raylane')['Executor']}",
    )
    ray_processes = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and role_of(int(e.name), {})}
    assert worker_pid.submit().result(timeout=60) in ray_processes  # a worker already started


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_an_interrupt_ends_a_blocking_call_and_spares_the_worker(rl, tmp_path, how):
    # A task blocked in a call (a sleep here; a socket read alike) hears its cancel or timeout at
    # once and can clean up, and its worker process is not killed for it.
    def executor() -> dict:
        return actor_stats("raylane")["Executor"]

    before = executor()["workers_killed"]
    h = sleep_noting_interrupt.options(timeout=1.5 if how == "timeout" else 60).submit(60.0, str(tmp_path))
    wait_until(lambda: (tmp_path / "pid").exists(), what="task start")
    if how == "cancel":
        assert h.cancel().state is TaskState.CANCELLED
    assert h.wait(timeout=60).state is (TaskState.CANCELLED if how == "cancel" else TaskState.TIMED_OUT)
    wait_until(lambda: (tmp_path / "interrupted").exists(), timeout=20, what="the task to hear the interrupt")
    # A worker is killed before its Ray task ends, never after: once none runs, none was.
    wait_until(lambda: not running_anywhere([h]), timeout=30, what="the task's Ray task to end")
    assert executor()["workers_killed"] == before


def test_timeout_kills_and_records_timed_out(rl, tmp_path):
    h = sleep_then_mark.options(timeout=1.5).submit(30.0, str(tmp_path))
    with pytest.raises(TaskTimedOut) as exc:
        h.result(timeout=60)
    assert "1.5s" in str(exc.value)
    rec = h.record()
    assert rec.state is TaskState.TIMED_OUT and rec.version == 3 and "1.5s" in rec.error
    pid = int((tmp_path / "pid").read_text())
    wait_until(lambda: not proc.pid_alive(pid), timeout=20, what="the timed-out worker to be killed")
    assert not (tmp_path / "done").exists()


def test_failure_records_type_message_traceback(rl):
    h = boom.submit("the disk is on fire")
    with pytest.raises(TaskFailed) as exc:
        h.result(timeout=60)
    err = exc.value
    assert err.error_type == "ValueError" and err.message == "the disk is on fire"
    assert "raise ValueError(message)" in err.traceback and "in boom" in err.traceback
    rec = h.record()
    assert rec.state is TaskState.FAILED and rec.error_type == "ValueError" and rec.result is None
    assert rec.traceback == err.traceback


def test_cancel_racing_completion(rl, store):
    """Given 240 short tasks cancelled at random moments, each ends in exactly one terminal state."""
    n = 240
    stats_before = actor_stats("raylane")["Executor"]
    rng = random.Random(7)
    handles = short_sleep.submit_many([rng.choice([0.0, 0.01, 0.03]) for _ in range(n)])
    cancel_won, cancel_lost = set(), {}
    for h in handles:
        time.sleep(rng.choice([0, 0, 0.002, 0.01]))
        try:
            assert h.cancel().state is TaskState.CANCELLED
            cancel_won.add(h.id)
        except TaskAlreadyFinished as e:
            cancel_lost[h.id] = e.state
    assert len(cancel_won) + len(cancel_lost) == n
    records = {h.id: h.wait(timeout=120) for h in handles}
    for task_id, rec in records.items():
        assert rec.terminal and rec.version == 3 == _doc_version(store, task_id)
        assert (rec.result is not None) == (rec.state is TaskState.SUCCEEDED)
        if task_id in cancel_won:
            assert rec.state is TaskState.CANCELLED
        else:
            assert rec.state is TaskState.SUCCEEDED and cancel_lost[task_id] == "SUCCEEDED", (
                f"{task_id}: {rec.state.value} {rec.error_type}: {rec.error}"
            )
    # Every cancel that won was answered to the executor as a rejection: either its RUNNING
    # claim (cancelled while PENDING) or its final write (cancelled while RUNNING).
    rejected = []

    def settled():
        after = actor_stats("raylane")["Executor"]
        rejected.append(
            (after["skipped"] - stats_before["skipped"], after["discarded_results"] - stats_before["discarded_results"])
        )
        return sum(rejected[-1]) == len(cancel_won)

    wait_until(
        settled,
        timeout=60,
        what=lambda: (
            f"the executor to report {len(cancel_won)} rejected writes (skipped, discarded so far: {rejected[-1]})"
        ),
    )
    assert cancel_won and cancel_lost, "the race should produce both outcomes"


@raylane.task(name="test.flaky", max_retries=2, retry_backoff=0.05)
def flaky(marker_dir: str, failures: int) -> int:
    """Fail the first ``failures`` attempts, counting runs in a file."""
    runs = Path(marker_dir, "runs")
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    if n <= failures:
        raise KeyError(f"attempt {n} fails")
    return n


@raylane.task(name="test.die_once", max_retries=1, retry_backoff=0.05)
def die_once(marker_dir: str) -> str:
    """The first attempt records its pid and hangs (to be killed -9); the second returns."""
    first = Path(marker_dir, "pid")
    if first.exists():
        return "second attempt"
    first.write_text(str(os.getpid()))
    time.sleep(60)
    return "never"


def test_retry_until_success(rl, store, tmp_path):
    h = flaky.submit(str(tmp_path), 2)
    assert h.result(timeout=60) == 3
    rec = h.record()
    assert rec.state is TaskState.SUCCEEDED and rec.attempt == 2
    assert rec.version == version_of(TaskState.SUCCEEDED, 2) == _doc_version(store, h.id)
    assert [(a.attempt, a.error_type) for a in rec.attempts] == [(0, "KeyError"), (1, "KeyError")]


def test_retries_spent_then_failed(rl, tmp_path):
    h = flaky.options(max_retries=1).submit(str(tmp_path), 5)
    with pytest.raises(TaskFailed):
        h.result(timeout=60)
    rec = h.record()
    assert rec.state is TaskState.FAILED and rec.attempt == 1 and rec.version == 13 and not rec.will_retry
    assert (tmp_path / "runs").read_text() == "2"


def test_no_retry_for_unlisted_errors(rl, tmp_path):
    picky = raylane.task(name="test.picky", max_retries=3, retry_on=[ValueError])(flaky.__wrapped__)
    h = picky.submit(str(tmp_path), 1)
    with pytest.raises(TaskFailed):
        h.result(timeout=60)
    assert h.record().attempt == 0 and (tmp_path / "runs").read_text() == "1"


def test_worker_killed_is_retried(rl, tmp_path):
    h = die_once.submit(str(tmp_path))
    pid = int(wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), what="first attempt"))
    os.kill(pid, 9)
    assert h.result(timeout=60) == "second attempt"
    rec = h.record()
    assert rec.attempt == 1 and rec.attempts[0].error_type == "WorkerCrashedError"


def test_cancel_during_backoff(rl, tmp_path):
    slow = raylane.task(name="test.slow_retry", max_retries=3, retry_backoff=3, retry_backoff_max=3)(flaky.__wrapped__)

    def released() -> int:
        return actor_stats("raylane")["StatusKeeper"]["released"]

    h = slow.submit(str(tmp_path), 3)
    wait_until(lambda: h.record().attempt == 1, what="the retry to be scheduled")
    scheduled = h.record()
    assert scheduled.state is TaskState.SCHEDULED and scheduled.not_before is not None
    before = released()
    rec = h.cancel()
    assert rec.state is TaskState.CANCELLED and rec.attempt == 1
    assert h.wait(timeout=10).state is TaskState.CANCELLED
    # The keeper drops a cancelled retry from its schedule: past its due time no message is sent
    # for it, and it never runs.
    while datetime.now(UTC) < scheduled.not_before + timedelta(seconds=2):
        assert (tmp_path / "runs").read_text() == "1" and h.record().state is TaskState.CANCELLED
        time.sleep(0.2)
    assert released() == before
