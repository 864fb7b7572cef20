"""The level/version rule, without services."""

from datetime import UTC, datetime

import pytest

from raylane.models import TaskMessage, TaskRecord
from raylane.states import TERMINAL_STATES, TaskState, may_follow, split_version, version_of


def _msg(attempt=0):
    return TaskMessage(
        id="a" * 32, name="demo.add", queue="default", attempt=attempt, args=[1, 2], created_at=datetime.now(UTC)
    )


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
    with pytest.raises(TypeError, match="not JSON serializable"):
        TaskRecord.model_validate(dict(running.model_dump(), result=object()))


def test_a_record_read_from_json_is_not_dumped_again_to_check_its_result(monkeypatch):
    from raylane import models

    doc = TaskRecord.pending(_msg()).moved_to(TaskState.SUCCEEDED, result={"big": list(range(100))}).model_dump_json()

    def no_dump(*_a, **_k):
        raise AssertionError("the result was dumped to check it")

    monkeypatch.setattr(models.json, "dumps", no_dump)
    assert TaskRecord.model_validate_json(doc).result == {"big": list(range(100))}


def test_a_packed_record_leaves_out_its_unset_fields_and_reads_back_the_same():
    import json

    from raylane.models import PackedRecord

    msg = _msg().model_copy(update={"args": [None, {"k": None}], "kwargs": {"x": None}})
    record = TaskRecord.pending(msg).moved_to(TaskState.RUNNING).moved_to(TaskState.SUCCEEDED, result={"a": None})
    doc = json.loads(PackedRecord.of(record).doc)
    # A null field costs the store a field to parse and keep, and indexes nothing.
    assert None not in doc.values(), sorted(k for k, v in doc.items() if v is None)
    assert "memory_mb" not in doc["resources"]
    # The user's own nulls are data, and stay.
    assert (doc["args"], doc["kwargs"], doc["result"]) == ([None, {"k": None}], {"x": None}, {"a": None})
    assert PackedRecord.of(record).unpack() == record


def test_every_field_of_a_record_that_may_be_none_defaults_to_none():
    # Packed records leave out their None fields: a field that could be None but defaulted to
    # something else would read back as that default.
    import types
    import typing

    from pydantic import BaseModel

    def models_in(annotation) -> list[type[BaseModel]]:
        args = typing.get_args(annotation) or (annotation,)
        found = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return found + [m for a in args if typing.get_args(a) for m in models_in(a)]

    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [TaskRecord]
    while todo:
        model = todo.pop()
        seen.add(model)
        for name, field in model.model_fields.items():
            args = typing.get_args(field.annotation)
            if type(None) in args or field.annotation in (typing.Any, types.NoneType):
                assert not field.is_required() and field.default is None, f"{model.__name__}.{name}"
            todo.extend(m for m in models_in(field.annotation) if m not in seen)
    assert len(seen) > 3  # the record and the models it holds were walked


def test_retry_policy():
    from raylane.models import RetryPolicy

    p = RetryPolicy(max_retries=2, retry_on=["KeyError"], backoff_s=1.0, backoff_max_s=3.0)
    assert p.retries(0, "KeyError") and p.retries(1, "KeyError")
    assert not p.retries(2, "KeyError")  # spent
    assert not p.retries(0, "ValueError")  # not listed
    assert RetryPolicy(max_retries=1).retries(0, "Anything")
    assert [p.delay_s(a, 1.0) for a in range(4)] == [1.0, 2.0, 3.0, 3.0]  # exponential, capped
    assert [p.delay_s(a, 0.0) for a in range(4)] == [0.5, 1.0, 1.5, 1.5]  # jitter keeps at least half


def test_a_retry_is_a_new_attempt_with_a_higher_version():
    failed = (
        TaskRecord.pending(_msg())
        .moved_to(TaskState.RUNNING)
        .moved_to(TaskState.FAILED, error_type="KeyError", error="'x'", will_retry=True)
    )
    assert failed.terminal and not failed.finished
    pending, msg = failed.retried(0.5)
    assert (failed.version, pending.version) == (3, 11)
    assert pending.attempt == msg.attempt == 1 and not pending.will_retry
    assert [a.error_type for a in pending.attempts] == ["KeyError"] == [a.error_type for a in msg.attempts]
    assert msg.not_before is not None and msg.not_before > pending.updated_at


def test_an_attempt_that_never_started_is_tried_again_outside_the_retry_budget():
    from raylane.actors.finishing import final_record
    from raylane.models import MAX_NOT_STARTED, NOT_STARTED
    from raylane.protocol import Reply

    running = TaskRecord.pending(_msg()).moved_to(TaskState.RUNNING)  # max_retries=0
    final, _ = final_record(running, Reply.failure(NOT_STARTED, "the lease could not be confirmed"))
    assert final.state is TaskState.FAILED and final.will_retry
    # A failure of its own after that still has no retry left: the budget counts attempts that ran.
    again, _ = final.retried(0.0)
    final, _ = final_record(again.moved_to(TaskState.RUNNING), Reply.failure("KeyError", "'x'"))
    assert not final.will_retry
    # Attempts that never start are tried again a bounded number of times in a row.
    record = running
    for _ in range(MAX_NOT_STARTED):
        record, _ = final_record(record, Reply.failure(NOT_STARTED, "no lease"))
        assert record.will_retry
        record = record.retried(0.0)[0].moved_to(TaskState.RUNNING)
    final, _ = final_record(record, Reply.failure(NOT_STARTED, "no lease"))
    assert not final.will_retry
