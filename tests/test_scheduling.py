"""Delays, eta, expiry, soft timeouts and idempotency keys, through the real stack."""

from __future__ import annotations

import concurrent.futures
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import ray
from conftest import wait_until

import raylane
from raylane.actors.recovery import RETRY_OVERDUE_S
from raylane.states import TaskState


@raylane.task(name="test.sched.mark", timeout=60)
def mark(path: str) -> str:
    with open(path, "a") as f:
        f.write("run\n")
    return "marked"


@raylane.task(name="test.sched.takes_delay")
def takes_delay(delay: float) -> float:
    return delay


@raylane.task(name="test.sched.soft", timeout=30)
def soft(catch: bool) -> str:
    try:
        time.sleep(20)
    except raylane.SoftTimeLimitExceeded:
        if catch:
            return "cleaned up"
        raise
    return "slept"


def _runs(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def test_a_delayed_task_is_scheduled_and_starts_when_due(rl, tmp_path):
    out = tmp_path / "runs"
    h = mark.options(delay=2).submit(str(out))
    rec = h.record()
    assert (rec.state, rec.version) == (TaskState.SCHEDULED, 1) and rec.not_before is not None
    done = h.wait(timeout=60)
    assert done.state is TaskState.SUCCEEDED and _runs(out) == 1
    assert done.started_at >= rec.not_before
    assert (done.started_at - rec.not_before).total_seconds() < 5  # generous: "within a second" when idle


def test_eta_and_delay_given_by_name(rl, tmp_path):
    out = tmp_path / "runs"
    eta = datetime.now(UTC) + timedelta(seconds=2)
    h = mark.options(eta=eta).submit(str(out))
    assert h.record().state is TaskState.SCHEDULED
    assert h.wait(timeout=60).started_at >= eta
    by_name = raylane.submit("test.sched.mark", str(tmp_path / "by-name"), delay=timedelta(seconds=1))
    assert by_name.record().state is TaskState.SCHEDULED
    assert by_name.result(timeout=60) == "marked"
    # A task with a parameter named like an option gets its argument, as always.
    assert raylane.submit("test.sched.takes_delay", delay=7.5).result(timeout=60) == 7.5


def test_a_cancelled_scheduled_task_never_runs(rl, tmp_path):
    out = tmp_path / "runs"
    h = mark.options(delay=2).submit(str(out))
    due = h.record().not_before
    assert h.cancel().state is TaskState.CANCELLED
    # Watched until well past its time: it never runs, and its record stays CANCELLED.
    while datetime.now(UTC) < due + timedelta(seconds=3):
        assert h.record().state is TaskState.CANCELLED and _runs(out) == 0
        time.sleep(0.2)


def test_a_scheduled_task_survives_a_keeper_restart(rl, tmp_path):
    out = tmp_path / "runs"
    h = mark.options(delay=4).submit(str(out))
    assert h.record().state is TaskState.SCHEDULED
    ray.kill(ray.get_actor("StatusKeeper", namespace="raylane"), no_restart=False)
    done = h.wait(timeout=120)
    assert done.state is TaskState.SUCCEEDED and _runs(out) == 1


def test_one_idempotency_key_gives_one_task_and_one_run(rl, tmp_path, unique):
    out = tmp_path / "runs"
    key = f"order-{unique}"
    keyed = mark.options(idempotency_key=key)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(lambda _: keyed.submit(str(out)), range(50)))
    assert len({h.id for h in handles}) == 1
    assert handles[0].result(timeout=60) == "marked"
    assert _runs(out) == 1
    # Later, finished: the same key still answers with the first task, and nothing runs again.
    assert keyed.submit(str(out)).id == handles[0].id
    other = mark.options(idempotency_key=f"{key}-other").submit(str(out))
    assert other.id != handles[0].id and other.result(timeout=60) == "marked"
    assert _runs(out) == 2


def test_a_task_not_started_by_its_expiry_is_cancelled_as_expired(rl, tmp_path, unique):
    queue = f"exp-{unique}"
    # The consumers already read the queue, so only the pause keeps the task from them: it holds
    # for every task submitted once pause() has returned.
    assert mark.options(queue=queue).submit(str(tmp_path / "warm")).result(timeout=60) == "marked"
    rl.pause(queue)
    try:
        h = mark.options(queue=queue, expires=1.0).submit(str(tmp_path / "runs"))
        expires_at = h.record().expires_at
        wait_until(lambda: datetime.now(UTC) > expires_at, timeout=10, what="the expiry time")
    finally:
        rl.resume(queue)
    done = h.wait(timeout=60)
    assert done.state is TaskState.CANCELLED and done.error_type == "Expired" and "expired" in done.error
    assert not (tmp_path / "runs").exists()


def test_tasks_due_in_a_queue_whose_topic_was_deleted_make_it_again_and_run(rl, stack, settings, unique):
    """Keepers that sent due tasks to a queue remember its topic; once it is deleted (an operator
    removed the queue), the next due task there makes it again rather than retrying for ever."""
    from kafka import KafkaAdminClient

    from raylane.queue import topic_of

    queue = f"gone-{unique}"
    # Enough tasks that every keeper sends some, and so learns of the topic.
    first = takes_delay.options(queue=queue, delay=0.2).submit_many([(float(i),) for i in range(12)])
    assert [h.result(timeout=60) for h in first] == [float(i) for i in range(12)]
    topic = topic_of(settings.topic_prefix, queue)
    admin = KafkaAdminClient(**stack.endpoints().kafka.client_options())
    try:
        admin.delete_topics([topic])
        wait_until(lambda: topic not in set(admin.list_topics()), timeout=60, what="the topic's deletion")
    finally:
        admin.close()
    again = takes_delay.options(queue=queue, delay=0.2).submit_many([(float(i),) for i in range(12)])
    # A task under a limit is its keeper's alone to send: no sweep would ever send it instead.
    limited = takes_delay.options(queue=queue, delay=0.2, concurrency_key=unique, max_concurrency=2).submit_many(
        [(float(i),) for i in range(6)]
    )
    assert [h.result(timeout=90) for h in again + limited] == [float(i) for i in range(12)] + [
        float(i) for i in range(6)
    ]
    # Their keepers sent them: the executors' sweep sends a forgotten SCHEDULED task only once it
    # is RETRY_OVERDUE_S past due.
    for rec in raylane.wait_all(again + limited, timeout=10):
        assert (rec.started_at - rec.not_before).total_seconds() < RETRY_OVERDUE_S, rec


def test_soft_timeout_raises_inside_the_task_before_the_hard_one(rl):
    caught = soft.options(soft_timeout=1).submit(True)
    uncaught = soft.options(soft_timeout=1).submit(False)
    assert caught.result(timeout=25) == "cleaned up"
    rec = uncaught.wait(timeout=25)
    assert rec.state is TaskState.FAILED and rec.error_type == "SoftTimeLimitExceeded"
    assert (rec.finished_at - rec.started_at).total_seconds() < 10  # long before the 30 s hard timeout


def test_bad_options_are_typed_errors_with_nothing_written(rl, tmp_path):
    with pytest.raises(raylane.InvalidTaskInput):
        mark.options(delay=-1).submit(str(tmp_path / "x"))
    with pytest.raises(raylane.InvalidTaskInput):
        mark.options(idempotency_key="has space").submit(str(tmp_path / "x"))
    with pytest.raises(raylane.InvalidTaskInput, match="expire"):
        mark.options(delay=10, expires=1).submit(str(tmp_path / "x"))


def test_options_over_http(http_api, unique):
    tenant = f"t-{unique}"
    api = http_api.client(http_api.token(tenant))
    url = f"{http_api.url}/api/v1/tasks"
    resp = api.post(url, json={"name": "raylane.echo", "args": [1], "delay_s": 1, "idempotency_key": f"k-{unique}"})
    assert resp.status_code == 201, resp.text
    task_id = resp.json()["id"]
    assert api.get(f"{url}/{task_id}").json()["state"] == "SCHEDULED"
    again = api.post(url, json={"name": "raylane.echo", "args": [1], "idempotency_key": f"k-{unique}"})
    assert again.json()["id"] == task_id
    assert api.get(f"{url}/{task_id}/wait", params={"timeout": 30}).json()["state"] == "SUCCEEDED"
