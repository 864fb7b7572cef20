"""Retries: a retry waits out its backoff SCHEDULED, off the queue, a retry left half done by a
stopped executor is carried on by the sweep, and retry_on matches subclasses."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import ray
from conftest import sealed, wait_until

import raylane
from raylane.actors.deploy import actor_stats
from raylane.models import MAX_BACKOFF_S, RetryPolicy, TaskMessage, TaskRecord, new_task_id, utcnow
from raylane.states import TaskState


@raylane.task(name="test.retry.fail_first", max_retries=2, retry_backoff=12, retry_backoff_max=12)
def fail_first(marker_dir: str) -> int:
    """Fail the first run, succeed afterwards; count runs in a file."""
    runs = Path(marker_dir, "runs")
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    if n == 1:
        raise ConnectionError("first run fails")
    return n


@raylane.task(name="test.retry.count")
def count(marker_dir: str) -> int:
    runs = Path(marker_dir, "runs")
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    return n


def test_a_retry_waits_scheduled_and_off_the_queue(rl, tmp_path):
    """During its backoff the next attempt is SCHEDULED with its start time, and no consumer holds
    its message; it starts once due."""
    h = fail_first.submit(str(tmp_path))
    rec = wait_until(lambda: (r := h.record()).attempt == 1 and r, timeout=60, what="the retry to be scheduled")
    assert rec.state is TaskState.SCHEDULED and rec.not_before is not None
    assert rec.attempts[0].error_type == "ConnectionError"
    assert rec.not_before > utcnow() + timedelta(seconds=3)
    # No consumer holds a message while the retry waits: the window is free for other work.
    assert all(s["in_flight"] == 0 for n, s in actor_stats("raylane").items() if n.startswith("QueueConsumer"))
    other = tmp_path / "other"
    other.mkdir()
    assert count.submit(str(other)).result(timeout=30) == 1
    done = h.wait(timeout=60)
    assert done.state is TaskState.SUCCEEDED and done.attempt == 1 and done.result == 2
    assert done.started_at >= rec.not_before


def test_backoff_is_capped():
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=1, backoff_max_s=MAX_BACKOFF_S + 1)
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=1, backoff_s=MAX_BACKOFF_S + 1)


def _keeper():
    return ray.get_actor("StatusKeeper", namespace="raylane")


def _write(record: TaskRecord) -> None:
    [outcome] = ray.get(_keeper().write.remote([record]))
    assert outcome.accepted, outcome


def _pending(tmp_path: Path) -> TaskRecord:
    msg = TaskMessage(
        id=new_task_id(),
        name="test.retry.count",
        queue="default",
        args=[str(tmp_path)],
        created_at=utcnow(),
        retry=RetryPolicy(max_retries=2, backoff_s=0.1, backoff_max_s=0.1),
    )
    return TaskRecord.pending(sealed(msg))


def test_a_half_done_retry_is_carried_on(rl, tmp_path):
    """Given an attempt recorded FAILED with a retry to follow, whose executor stopped before it
    wrote the next attempt (nothing else was written, and no message sent), the sweep writes the
    next attempt and sends it: the task runs and ends once."""
    long_ago = utcnow() - timedelta(minutes=5)
    failed = (
        _pending(tmp_path)
        .moved_to(TaskState.RUNNING)
        .moved_to(TaskState.FAILED, error_type="ConnectionError", error="lost before the retry", will_retry=True)
    )
    _write(failed.model_copy(update={"updated_at": long_ago}))
    done = rl.wait(failed.id, timeout=120)
    assert (done.state, done.attempt, done.result) == (TaskState.SUCCEEDED, 1, 1)
    assert done.attempts[0].error_type == "ConnectionError"
    assert done.seal == failed.seal  # the next attempt carries the task's seal on


def test_an_overdue_scheduled_attempt_is_sent(rl, tmp_path):
    """Given a SCHEDULED attempt long past due whose message was never sent (its executor stopped
    during the backoff), the sweep sends it, keeping its start time, and the task runs."""
    nxt = _pending(tmp_path).model_copy(
        update={"state": TaskState.SCHEDULED, "not_before": utcnow() - timedelta(minutes=2)}
    )
    _write(nxt)
    done = rl.wait(nxt.id, timeout=120)
    assert (done.state, done.attempt, done.result) == (TaskState.SUCCEEDED, 0, 1)


@raylane.task(name="test.retry.refused_once", max_retries=2, retry_on=[ConnectionError], retry_backoff=0.1)
def refused_once(marker_dir: str) -> int:
    """Raise a subclass of ConnectionError on the first run; count runs in a file."""
    runs = Path(marker_dir, "runs")
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    if n == 1:
        raise ConnectionRefusedError("the first run is refused")
    return n


@raylane.task(name="test.retry.bad_value", max_retries=2, retry_on=[ConnectionError], retry_backoff=0.1)
def bad_value() -> None:
    """Raise an error retry_on does not name, nor a base of it."""
    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "not text")


def test_retry_on_matches_subclasses_and_the_error_tells_its_classes(rl, tmp_path):
    handle = refused_once.submit(str(tmp_path))
    assert handle.result(timeout=60) == 2  # ConnectionRefusedError is a ConnectionError: retried
    assert [a.error_type for a in handle.record().attempts] == ["ConnectionRefusedError"]

    with pytest.raises(raylane.TaskFailed) as caught:
        bad_value.submit().result(timeout=60)
    err = caught.value
    assert err.error_type == "UnicodeDecodeError" and raylane.get(err.task_id).attempt == 0  # not retried
    assert err.matches(ValueError) and err.matches(UnicodeError) and not err.matches(ConnectionError)
    assert err.error_types[:3] == ["builtins:UnicodeDecodeError", "builtins:UnicodeError", "builtins:ValueError"]
    # (UnicodeDecodeError cannot be made from a message alone: as_original gives None for it.)
    assert err.as_original() is None
