"""The level/version rule, without services."""
from datetime import datetime, timezone

import pytest

from raylane.models import TaskMessage, TaskRecord
from raylane.states import TERMINAL_STATES, TaskState, may_follow, split_version, version_of


def _msg(attempt=0):
    return TaskMessage(id="a" * 32, name="demo.add", queue="default", attempt=attempt, args=[1, 2],
                       created_at=datetime.now(timezone.utc))


def test_levels_and_versions():
    assert [version_of(s, 0) for s in (TaskState.PENDING, TaskState.RUNNING, TaskState.SUCCEEDED)] == [1, 2, 3]
    assert version_of(TaskState.SCHEDULED, 0) == version_of(TaskState.PENDING, 0)
    assert {version_of(s, 2) for s in TERMINAL_STATES} == {23}
    assert split_version(23) == (2, 3)


def test_forward_only_and_one_terminal_per_attempt():
    assert may_follow(1, TaskState.RUNNING, 0)
    assert not may_follow(3, TaskState.RUNNING, 0)  # late RUNNING after CANCELLED
    assert not may_follow(3, TaskState.SUCCEEDED, 0)  # second terminal write of an attempt
    assert may_follow(3, TaskState.PENDING, 1)  # a retry is a new attempt


def test_negative_attempt_is_rejected():
    with pytest.raises(ValueError):
        version_of(TaskState.PENDING, -1)


def test_record_moves_carry_the_version():
    pending = TaskRecord.pending(_msg())
    running = pending.moved_to(TaskState.RUNNING)
    done = running.moved_to(TaskState.SUCCEEDED, result=3)
    assert (pending.version, running.version, done.version) == (1, 2, 3)
    assert running.started_at is not None and done.finished_at is not None
    retry = done.moved_to(TaskState.PENDING, attempt=1)
    assert retry.version == 11 and retry.level == 1


def test_result_must_be_json():
    running = TaskRecord.pending(_msg()).moved_to(TaskState.RUNNING)
    with pytest.raises(Exception):
        TaskRecord.model_validate(dict(running.model_dump(), result=object()))
