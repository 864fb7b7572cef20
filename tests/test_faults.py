"""Faults injected mid-run; a history checker then verifies that no task was lost or ran twice.

For every scenario: each submitted task ends in exactly one final state within a deadline,
its document's ``_version`` matches that state and never decreased while it was watched,
and its function ran at most once per attempt.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray
from conftest import restart_keeper, sealed, wait_until

import raylane
from raylane.actors.deploy import actor_stats
from raylane.actors.executor import WARM_PER_CPU
from raylane.states import TaskState


@raylane.task(name="test.fault.work", max_retries=3, retry_backoff=0.2, timeout=60)
def work(runs_dir: str, key: int, seconds: float) -> int:
    """Log this run (pid) under ``key``, then work for a while."""
    with open(Path(runs_dir, f"{key}.runs"), "a") as f:
        f.write(f"{os.getpid()}\n")
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        Path(runs_dir, f"{key}.stopped").touch()  # a cancel or timeout interrupted it
        raise
    return key


@raylane.task(name="test.fault.flow_step", max_retries=3, retry_backoff=0.2, timeout=60)
def flow_step(x: int, runs_dir: str, key: str, seconds: float) -> int:
    """A workflow's step: log this run under ``key``, work a while, and pass ``x + 1`` on."""
    with open(Path(runs_dir, f"{key}.runs"), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return x + 1


def _workflow(folder: Path) -> raylane.WorkflowHandle:
    """A chain of two steps, a group of three, and a chord's callback: 5 when all ran. Its steps
    log their runs in ``folder`` (made here)."""
    folder.mkdir(exist_ok=True)
    d = str(folder)
    return raylane.chain(
        flow_step.s(0, d, "a", 1.0),
        flow_step.s(d, "b", 1.0),
        raylane.group([flow_step.s(d, f"g{i}", 1.0) for i in range(3)]),
        total_of.s(),
    ).submit()


@raylane.task(name="test.fault.total_of")
def total_of(xs: list[int]) -> int:
    """The largest of ``xs``, plus two."""
    return max(xs) + 2


def _check_workflow(store, wf: raylane.WorkflowHandle, tmp_path: Path) -> None:
    """The workflow gave its result, and no step ran more than once per attempt."""
    assert wf.result(timeout=180) == 5
    for rec in wf.records():
        assert rec.state is TaskState.SUCCEEDED, (rec.name, rec.state, rec.error)
        if rec.name == flow_step.name:
            key = rec.args[2]
            runs = (tmp_path / f"{key}.runs").read_text().split()
            assert len(runs) <= rec.attempt + 1, (key, runs, rec.attempt)


@dataclass
class VersionWatch:
    """Samples the stored ``_version`` of every task while a scenario runs."""

    store: object
    ids: list[str]
    backwards: list[tuple[str, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                docs = self.store.client.mget(index=self.store.alias, body={"ids": self.ids})["docs"]
            except Exception:  # the store may be briefly unreachable in a scenario
                continue
            for d in docs:
                if d.get("found"):
                    before = self._seen.get(d["_id"], 0)
                    if d["_version"] < before:
                        self.backwards.append((d["_id"], before, d["_version"]))
                    self._seen[d["_id"]] = max(before, d["_version"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def check_history(
    store, handles, runs_dir: Path, watch: VersionWatch, fault_at: float, deadline_s: float = 180
) -> dict:
    """Wait for every task, then check the whole history; ``fault_at`` is when the fault began."""
    records = {h.id: h.wait(timeout=deadline_s) for h in handles}
    recovered_in = time.monotonic() - fault_at
    watch.stop()
    docs = {d["_id"]: d for d in store.client.mget(index=store.alias, body={"ids": list(records)})["docs"]}
    duplicated = 0
    for task_id, rec in records.items():
        assert rec.finished, f"{task_id} not finished: {rec.state}"
        assert docs[task_id]["_version"] == rec.version == rec.attempt * 10 + 3
        runs_file = runs_dir / f"{rec.args[1]}.runs"
        runs = len(runs_file.read_text().split()) if runs_file.exists() else 0
        if runs > rec.attempt + 1:
            duplicated += 1
    assert watch.backwards == []
    summary = {
        "submitted": len(handles),
        "terminal": sum(r.finished for r in records.values()),
        "succeeded": sum(r.state is TaskState.SUCCEEDED for r in records.values()),
        "retries": sum(r.attempt for r in records.values()),
        "lost": len(handles) - sum(r.finished for r in records.values()),
        "duplicated": duplicated,
        "recover_s": round(recovered_in, 1),
    }
    summary["other"] = {
        task_id: f"{r.state.value} attempt {r.attempt}: {r.error_type}: {r.error}"
        for task_id, r in records.items()
        if r.state is not TaskState.SUCCEEDED
    }
    print(f"\nhistory: {summary}")
    assert summary["lost"] == 0 and duplicated == 0
    return summary


def _batch(tmp_path: Path, n: int = 40, seconds: float = 0.5):
    return work.submit_many([(str(tmp_path), i, seconds) for i in range(n)])


def _started(tmp_path: Path) -> int:
    return len(list(tmp_path.glob("*.runs")))


def _running_batch(store, tmp_path: Path, n: int = 40, seconds: float = 0.5, started: int = 5):
    """Submit a batch, watch its versions, and return once ``started`` of its tasks have begun."""
    handles = _batch(tmp_path, n=n, seconds=seconds)
    watch = VersionWatch(store, [h.id for h in handles])
    wait_until(lambda: _started(tmp_path) >= started, what="the batch to start")
    return handles, watch


@pytest.mark.parametrize("actor", ["QueueConsumer-0", "Executor", "StatusKeeper", "RequestHandler"])
def test_actor_killed_mid_run(rl, store, tmp_path, actor):
    # Given a workflow on its way, and a batch that is partly running
    flow = _workflow(tmp_path / "flow")
    handles, watch = _running_batch(store, tmp_path, started=5)
    # When the actor is killed (Ray restarts it)
    fault_at = time.monotonic()
    ray.kill(ray.get_actor(actor, namespace="raylane"), no_restart=False)
    # Then every task still ends exactly once, the workflow gives its result, and new work is accepted
    summary = check_history(store, handles, tmp_path, watch, fault_at)
    assert summary["succeeded"] == len(handles), summary["other"]
    _check_workflow(store, flow, tmp_path / "flow")
    assert work.submit(str(tmp_path), 1000, 0.0).result(timeout=60) == 1000
    if actor == "Executor":  # restarted, it warms its node's workers as a deployed one does
        warm = WARM_PER_CPU * int(ray.cluster_resources()["CPU"])
        wait_until(lambda: actor_stats("raylane")["Executor"]["workers_warmed"] == warm, what="the warm-up")
        # The consumer hands its batches over by the restarted executor's socket again.
        consumer = lambda: actor_stats("raylane")["QueueConsumer-0"]  # noqa: E731
        wait_until(lambda: consumer()["hand_over"] == "socket", what="the consumer to reach the new socket")
        before = consumer()["handed_by_socket"]
        assert work.submit(str(tmp_path), 1001, 0.0).result(timeout=60) == 1001
        assert consumer()["handed_by_socket"] > before
    if actor == "StatusKeeper":
        # The executor sends its claims and ends by the restarted keeper's socket again.
        executor = lambda: actor_stats("raylane")["Executor"]  # noqa: E731
        wait_until(lambda: executor()["keeper_sockets"] == 1, what="the executor to reach the new keeper socket")
        before = executor()["written_by_socket"]
        assert work.submit(str(tmp_path), 1001, 0.0).result(timeout=60) == 1001
        assert executor()["written_by_socket"] >= before + 2  # its claim and its end


def test_workers_killed_mid_run(rl, store, tmp_path):
    handles, watch = _running_batch(store, tmp_path, n=30, seconds=2.0, started=3)
    killed = set()
    fault_at = time.monotonic()
    for runs in list(tmp_path.glob("*.runs"))[:3]:
        pid = int(runs.read_text().split()[0])
        try:
            os.kill(pid, 9)
            killed.add(pid)
        except ProcessLookupError:
            pass
    assert killed
    summary = check_history(store, handles, tmp_path, watch, fault_at)
    assert summary["succeeded"] == len(handles) and summary["retries"] >= 1, summary


def test_opensearch_outage_mid_run(rl, store, stack, settings, tmp_path):
    # More tasks than the consumer's in-flight window and the executor's run slots together.
    handles, watch = _running_batch(store, tmp_path, n=150, seconds=0.3, started=5)
    fault_at = time.monotonic()
    try:
        # Given OpenSearch gone for a while mid-run
        assert stack.opensearch.stop(grace_s=10)
        time.sleep(5)  # the outage itself
        # Then a submit is refused with a clear error (its message went to Kafka beside the
        # PENDING write that failed)
        with pytest.raises(raylane.StoreUnavailable):
            work.submit(str(tmp_path), 999, 0.0)
        # And what waits is bounded: the consumer stops polling once its window is full
        stats = actor_stats("raylane")
        assert stats["QueueConsumer-0"]["in_flight"] <= settings.max_in_flight
        assert stats["Executor"]["ray_tasks"] <= stats["Executor"]["max_running"]  # a group holds one slot
    finally:
        stack.up()
    # And once it is back, every task ends exactly once
    summary = check_history(store, handles, tmp_path, watch, fault_at)
    assert summary["succeeded"] == len(handles), summary["other"]

    # And the task whose submit was refused never runs: its claim finds no record, and the
    # record the claim made is closed at once
    def refused_task() -> list:
        rl.refresh()
        found = rl.search(name="test.fault.work", limit=1000)
        return [r for r in found if r.args[:2] == [str(tmp_path), 999]]

    wait_until(lambda: [r.error_type for r in refused_task()] == ["NotEnqueued"], what=lambda: str(refused_task()))
    assert not Path(tmp_path, "999.runs").exists()


def test_an_end_held_up_by_a_stalled_store_beats_its_timeout(rl, stack, tmp_path):
    # Given two tasks running on one executor: one ends first, the other 1 s before its 3.5 s
    # timeout runs out
    import signal

    first = work.submit(str(tmp_path), 1, 1.5)
    wait_until(lambda: (tmp_path / "1.runs").exists(), what="the first task to start")
    second = work.options(timeout=3.5).submit(str(tmp_path), 2, 2.5)
    wait_until(lambda: (tmp_path / "2.runs").exists(), what="the second task to start")
    # When OpenSearch stalls from before the first end until past the second's deadline (within
    # the executor's lease): the first end's write hangs, and the second ends behind it
    pid = stack.opensearch.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(4.5)  # the stall itself
    finally:
        os.kill(pid, signal.SIGCONT)
    # Then both end SUCCEEDED: the second's end was back at its executor before its deadline,
    # waiting behind the first's write, and its keeper, asking there before a TIMED_OUT, left
    # the task to it
    assert first.wait(timeout=60).state is TaskState.SUCCEEDED
    rec = second.wait(timeout=60)
    assert rec.state is TaskState.SUCCEEDED, (rec.state.value, rec.error, rec.hops)


def test_kafka_outage_mid_run(rl, store, stack, tmp_path):
    handles, watch = _running_batch(store, tmp_path, n=40, seconds=0.3, started=5)
    fault_at = time.monotonic()
    try:
        assert stack.kafka.stop(grace_s=10)
        # A submit while Kafka is down fails clearly and leaves no task waiting for a message.
        with pytest.raises(raylane.QueueUnavailable):
            work.submit(str(tmp_path), 999, 0.0)
        rl.refresh()
        failed = rl.search(name="test.fault.work", state="FAILED", limit=1)
        assert failed and failed[0].error_type == "QueueUnavailable" and failed[0].args[1] == 999
    finally:
        stack.up()
    summary = check_history(store, handles, tmp_path, watch, fault_at)
    assert summary["succeeded"] == len(handles), summary["other"]
    assert work.submit(str(tmp_path), 1001, 0.0).result(timeout=90) == 1001


def test_whole_stack_restart_mid_run(rl, store, stack, tmp_path):
    # Given a workflow on its way, and a batch with tasks queued and running
    flow = _workflow(tmp_path / "flow")
    handles, watch = _running_batch(store, tmp_path, n=60, seconds=0.5, started=5)
    # When the whole stack stops and starts again
    fault_at = time.monotonic()
    stack.down(grace_s=10)
    raylane.shutdown()
    stack.up()
    raylane.init()
    # Then queued tasks run, lost running ones are retried, none runs twice per attempt, and the
    # workflow goes on from where it was
    summary = check_history(store, handles, tmp_path, watch, fault_at)
    assert summary["succeeded"] == len(handles), summary["other"]
    _check_workflow(store, flow, tmp_path / "flow")


def test_a_child_left_waiting_after_its_parent_ended_is_started_by_the_sweep(rl, store, tmp_path):
    # Given a workflow whose first task ended, but whose keeper stopped before it started the
    # next one (written here directly: the end, and the child still waiting, a while ago)
    from datetime import timedelta

    from raylane.models import FlowLinks, TaskMessage, TaskRecord, new_task_id, utcnow

    long_ago = utcnow() - timedelta(minutes=1)
    flow_id, parent_id, child_id = new_task_id(), new_task_id(), new_task_id()
    base = dict(queue="default", created_at=long_ago, workflow_id=flow_id)
    parent = sealed(TaskMessage(
        id=parent_id, name=flow_step.name, args=[0, str(tmp_path), "p", 0.0], **base,
        flow=FlowLinks(children=[child_id]),
    ))  # fmt: skip
    child = sealed(TaskMessage(
        id=child_id, name=flow_step.name, args=[str(tmp_path), "c", 0.0], parent_id=parent_id, **base,
        flow=FlowLinks(waiting_on=[parent_id], takes="result"),
    ))  # fmt: skip
    ended = TaskRecord.pending(parent).moved_to(TaskState.RUNNING).moved_to(TaskState.SUCCEEDED, result=41)
    waiting = TaskRecord.pending(child)
    assert waiting.waits_for_parents
    outcomes = store.write_many(
        [r.model_copy(update={"updated_at": long_ago}) for r in (TaskRecord.pending(parent), ended, waiting)]
    )
    assert [o.accepted for o in outcomes] == [True, True, True]
    # Then a keeper's sweep finds the child and starts it, with the parent's result
    record = rl.wait(child_id, timeout=60)
    assert record.state is TaskState.SUCCEEDED and record.result == 42 and record.args[0] == 41


def _work_message(runs_dir, key: int, **options):
    """The message of a fresh ``work`` task (retried up to three times), sealed as a submit seals it."""
    from raylane.models import RetryPolicy, TaskMessage, new_task_id, utcnow

    return sealed(
        TaskMessage(
            id=new_task_id(),
            name="test.fault.work",
            queue="default",
            args=[str(runs_dir), key, 0.0],
            retry=RetryPolicy(max_retries=3, backoff_s=0.2),
            created_at=utcnow(),
            **options,
        )
    )


def test_pending_task_without_message_is_requeued(rl, store, tmp_path):
    # Given a PENDING record whose submit died before producing its message
    from datetime import timedelta

    from raylane.models import TaskMessage, TaskRecord, new_task_id, utcnow

    long_ago = utcnow() - timedelta(minutes=10)
    msg = sealed(
        TaskMessage(
            id=new_task_id(), name="test.fault.work", queue="default", args=[str(tmp_path), 7, 0.0], created_at=long_ago
        )
    )
    orphan = TaskRecord.pending(msg).model_copy(update={"updated_at": long_ago})
    [outcome] = store.write_many([orphan])
    assert outcome.accepted
    # When the executors' sweep finds it, it is queued again and runs once
    record = rl.wait(orphan.id, timeout=120)
    assert record.state is TaskState.SUCCEEDED and record.result == 7 and record.attempt == 0
    assert len((tmp_path / "7.runs").read_text().split()) == 1


def test_a_claim_its_live_executor_does_not_run_is_ended_and_retried(rl, store, settings, tmp_path):
    # Given a RUNNING record claimed by the live executor a while ago, which that executor neither
    # runs nor refused, and whose message is gone. Its lease stays alive, so the sweep for lapsed
    # leases never takes it.
    from datetime import timedelta

    from raylane.models import TaskRecord, utcnow
    from raylane.protocol import EXECUTOR, live_members

    executor = ray.get_actor(live_members(settings.namespace, EXECUTOR)[0], namespace=settings.namespace)
    owner = ray.get(executor.get_stats.remote())["incarnation"]
    msg = _work_message(tmp_path, 10)
    claimed = TaskRecord.pending(msg).moved_to(TaskState.RUNNING, worker="w/1", lease_owner=owner)
    claimed = claimed.model_copy(update={"updated_at": utcnow() - timedelta(minutes=2)})
    [outcome] = store.write_many([claimed])
    assert outcome.accepted
    store.refresh()
    # When that executor's sweep finds it, the attempt is ended as lost and the task runs again, once
    record = rl.wait(claimed.id, timeout=120)
    assert (record.state, record.attempt) == (TaskState.SUCCEEDED, 1), (record.state, record.error)
    assert [a.error_type for a in record.attempts] == ["WorkerLost"]
    assert len((tmp_path / "10.runs").read_text().split()) == 1


def test_timeout_outlives_a_keeper_restart(rl, tmp_path):
    # Given a running task with a short timeout, not yet reached
    h = work.options(timeout=8).submit(str(tmp_path), 9, 60.0)
    wait_until(lambda: (tmp_path / "9.runs").exists(), what="the task to start")
    assert h.status() is TaskState.RUNNING
    # When the StatusKeeper, which watches its deadline, restarts
    restart_keeper()
    # Then the new keeper takes the deadline up from the record: the task ends TIMED_OUT (not
    # retried), and its run is stopped (interrupted in its sleep)
    rec = h.wait(timeout=90)
    assert (rec.state, rec.attempt) == (TaskState.TIMED_OUT, 0), (rec.state, rec.error)
    wait_until(lambda: (tmp_path / "9.stopped").exists(), timeout=20, what="the timed-out run to be stopped")
    assert len((tmp_path / "9.runs").read_text().split()) == 1


def test_lost_task_past_its_timeout_is_retried_not_timed_out(rl, store, tmp_path):
    # Given a RUNNING record whose executor is gone and whose timeout ran out while nothing ran
    # it, as after the whole cluster was down for longer than the timeout
    from datetime import timedelta

    from raylane.models import TaskRecord, utcnow

    msg = _work_message(tmp_path, 8, timeout_s=60)
    claimed = TaskRecord.pending(msg).moved_to(TaskState.RUNNING, worker="gone/1", lease_owner="an-executor-gone")
    claimed = claimed.model_copy(update={"started_at": utcnow() - timedelta(minutes=2)})
    [outcome] = store.write_many([claimed])
    assert outcome.accepted
    store.refresh()  # the restarted keeper finds running tasks by a search
    # When the StatusKeeper restarts and takes up the deadlines of RUNNING tasks (well before the
    # sweep judges the record lost: it was written just now)
    restart_keeper()
    # Then the task is recovered as lost and runs again, instead of ending TIMED_OUT
    record = rl.wait(claimed.id, timeout=120)
    assert (record.state, record.attempt) == (TaskState.SUCCEEDED, 1), (record.state, record.error)
    assert [a.error_type for a in record.attempts] == ["WorkerLost"]
    assert len((tmp_path / "8.runs").read_text().split()) == 1
