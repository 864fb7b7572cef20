"""Retention: `raylane.purge` and `raylane purge` delete the records of tasks finished before the
cutoff, keep the rest (unfinished ones, a failed attempt whose retry follows, recent ends), and
counts agree with what is left."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

import raylane
from raylane.errors import InvalidTaskInput
from raylane.models import TaskMessage, TaskRecord, new_task_id, utcnow
from raylane.states import TaskState


def _record(name: str, state: TaskState, days_ago: float, **changes) -> TaskRecord:
    at = utcnow() - timedelta(days=days_ago)
    pending = TaskRecord.pending(TaskMessage(id=new_task_id(), name=name, queue="default", created_at=at))
    return pending.moved_to(TaskState.RUNNING, started_at=at).moved_to(state, finished_at=at, **changes)


def test_purge_deletes_old_ends_and_keeps_the_rest(rl, store, unique):
    name = f"test.retention.{unique}"
    old = {s: _record(name, s, 10) for s in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)}
    # (A failed attempt whose retry follows is not finished; the keepers' recovery may start
    # that retry meanwhile, which changes its state but not whether it is kept.)
    kept = [_record(name, TaskState.SUCCEEDED, 1), _record(name, TaskState.FAILED, 10, will_retry=True)]
    assert all(o.accepted for o in store.write_many([*old.values(), *kept]))
    raylane.refresh()
    assert sum(raylane.counts(name=name).values()) == 5

    assert raylane.purge("7d", state="FAILED") >= 1
    assert raylane.get(old[TaskState.SUCCEEDED].id).state is TaskState.SUCCEEDED
    with pytest.raises(raylane.TaskNotFound):
        raylane.get(old[TaskState.FAILED].id)

    out = subprocess.run(
        [sys.executable, "-m", "raylane.cli", "purge", "--older-than", "7d", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and json.loads(out.stdout)["deleted"] >= 2, out.stderr[-2000:]
    for rec in old.values():
        with pytest.raises(raylane.TaskNotFound):
            raylane.get(rec.id)
    assert [raylane.get(k.id).id for k in kept] == [k.id for k in kept]
    raylane.refresh()
    assert sum(raylane.counts(name=name).values()) == len(kept)


def test_purge_refuses_what_it_cannot_mean(rl):
    for bad in ("7x", "0d", -5, 0):
        with pytest.raises(InvalidTaskInput):
            raylane.purge(bad)
    with pytest.raises(InvalidTaskInput, match="not a terminal state"):
        raylane.purge("7d", state="RUNNING")
    out = subprocess.run(
        [sys.executable, "-m", "raylane.cli", "purge", "--older-than", "7d", "--state", "PENDING"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice" in out.stderr
