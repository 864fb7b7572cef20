"""Where a task's time goes and how writes come back, without services: the hops a record keeps,
a keeper's waiter that answers once everything it waits for has arrived, and which refusals of a
write are for now only."""

from __future__ import annotations

import asyncio
import time

import pytest

from raylane.actors.taskbook import Waiter
from raylane.models import HOPS, TaskRecord, WriteOutcome
from raylane.states import TaskState

from contracts import message


def test_hops_are_seconds_after_creation_and_unknown_ones_are_left_out():
    rec = TaskRecord.pending(message())
    created = rec.created_at.timestamp()
    rec = rec.with_hops(read=created + 0.25, handed=None).with_hops(claimed=created + 0.5)
    assert rec.hops == {"read": 0.25, "claimed": 0.5}
    assert set(rec.hops) <= set(HOPS)


def test_a_new_attempt_starts_without_the_hops_of_the_last():
    rec = TaskRecord.pending(message().model_copy(update={"retry": {"max_retries": 2}}))
    running = rec.moved_to(TaskState.RUNNING).with_hops(read=time.time())
    failed = running.moved_to(TaskState.FAILED, will_retry=True)
    assert failed.hops == running.hops
    nxt, _ = failed.retried(0.0)
    assert nxt.attempt == 1 and nxt.hops is None


def test_a_waiter_with_everything_it_waits_for_answers_without_gathering():
    async def scenario() -> list:
        waiter = Waiter(gather_s=60.0, expected=1)
        asyncio.get_running_loop().call_soon(waiter.deliver, TaskRecord.pending(message()))
        return await asyncio.wait_for(waiter.take(timeout_s=60.0), 10.0)

    assert len(asyncio.run(scenario())) == 1


def test_a_waiter_of_several_still_gathers_after_the_first():
    async def scenario() -> list:
        waiter = Waiter(gather_s=0.05, expected=3)
        loop = asyncio.get_running_loop()
        loop.call_soon(waiter.deliver, TaskRecord.pending(message()))
        loop.call_later(0.01, waiter.deliver, TaskRecord.pending(message()))
        return await waiter.take(timeout_s=60.0)

    # The second arrives within the gathering time of the first, and both are answered together.
    assert len(asyncio.run(scenario())) == 2


@pytest.mark.parametrize("expected", [1, 2])
def test_a_waiter_with_nothing_answers_empty_at_its_timeout(expected):
    async def scenario() -> list:
        return await Waiter(gather_s=0.01, expected=expected).take(timeout_s=0.05)

    assert asyncio.run(scenario()) == []


@pytest.mark.parametrize(
    ("status", "reason", "transient", "for_content"),
    [
        (429, "es_rejected_execution_exception: queue full", True, False),
        (503, "unavailable_shards_exception: no shard", True, False),
        (403, "cluster_block_exception: index [x] blocked by: [FORBIDDEN/8/index write (api)]", True, False),
        (
            400,
            "invalid_index_name_exception: Invalid index name [raylane-tasks], already exists as alias",
            True,
            False,
        ),
        (400, "mapper_parsing_exception: bad field", False, True),
        (409, "conflict", False, False),
    ],
)
def test_a_write_turned_away_for_now_is_not_a_refusal_of_its_content(status, reason, transient, for_content):
    outcome = WriteOutcome("t", 1, accepted=False, reason=reason, status=status)
    assert (outcome.transient, outcome.refused_for_content) == (transient, for_content)


class Refused(ConnectionRefusedError):
    """A subclass defined here, two levels below ConnectionError."""


def test_retry_on_matches_the_error_or_any_of_its_bases():
    from raylane.actors.worker import error_types_of
    from raylane.models import RetryPolicy

    policy = RetryPolicy(max_retries=3, retry_on=["builtins.ConnectionError"])
    types = error_types_of(Refused)
    assert types[:3] == (f"{__name__}:Refused", "builtins:ConnectionRefusedError", "builtins:ConnectionError")
    assert policy.retries(0, "Refused", types)
    assert not policy.retries(3, "Refused", types)  # retries spent
    assert not policy.retries(0, "ValueError", error_types_of(ValueError))
    # A policy naming a class by qualname alone, as records made before kept their bases.
    assert RetryPolicy(max_retries=1, retry_on=["ConnectionError"]).retries(0, "Refused", types)
    assert RetryPolicy(max_retries=1, retry_on=["ConnectionError"]).retries(0, "ConnectionError")
    assert not RetryPolicy(max_retries=1, retry_on=["ConnectionError"]).retries(0, "Refused")


def test_a_failed_task_tells_its_original_error():
    from raylane.actors.worker import error_types_of
    from raylane.errors import TaskFailed

    err = TaskFailed("t", "Refused", "no", None, error_types_of(Refused))
    assert err.matches(ConnectionError) and err.matches(OSError, KeyError) and not err.matches(KeyError)
    original = err.as_original()
    assert type(original) is Refused and str(original) == "no" and original.__cause__ is err
    # A class of a module this process never imported is not imported for it.
    unknown = TaskFailed("t", "Boom", "x", None, ["raylane_no_such_module:Boom", "builtins:Exception"])
    assert unknown.as_original() is None and unknown.matches(Exception)
    # A record from before the classes were kept matches by its own name only.
    legacy = TaskFailed("t", "ValueError", "x", None)
    assert legacy.matches(ValueError) and not legacy.matches(Exception)


def _running(timeout_s: float | None, started_s_ago: float) -> TaskRecord:
    from datetime import timedelta

    from raylane.models import utcnow

    rec = TaskRecord.pending(message().model_copy(update={"timeout_s": timeout_s, "retry": {"max_retries": 2}}))
    return rec.moved_to(TaskState.RUNNING, started_at=utcnow() - timedelta(seconds=started_s_ago))


def test_a_worker_lost_past_the_timeout_ends_timed_out_and_before_it_fails():
    from raylane.actors.finishing import final_record
    from raylane.protocol import Reply

    lost = Reply.lost("WorkerLost", "the lease of this executor lapsed and the worker ended itself")
    final, _ = final_record(_running(1.0, started_s_ago=2.5), lost)
    assert (final.state, final.error_type, final.will_retry) == (TaskState.TIMED_OUT, "TimeoutError", False)
    assert "timeout of 1s" in final.error and "WorkerLost" in final.error
    # Before its timeout, or without one, the loss is what it is (and retried, by the task's policy).
    for running in (_running(60.0, started_s_ago=2.5), _running(None, started_s_ago=2.5)):
        final, _ = final_record(running, lost)
        assert (final.state, final.error_type) == (TaskState.FAILED, "WorkerLost")
    # A reply the function gave (it raised, say, past its timeout) is its own end.
    final, _ = final_record(_running(1.0, started_s_ago=2.5), Reply.failure("ValueError", "bad"))
    assert (final.state, final.error_type) == (TaskState.FAILED, "ValueError")


def test_a_claim_noted_after_its_gated_function_began_is_put_before_it():
    from raylane.actors.finishing import final_record
    from raylane.protocol import Reply

    running = _running(None, started_s_ago=0.0)
    created = running.created_at.timestamp()
    running = running.with_hops(read=created + 0.1, handed=created + 0.2, claimed=created + 0.31)
    reply = Reply(True, 5, began=created + 0.3, returned=created + 0.4)
    final, _ = final_record(running, reply)
    assert [final.hops[h] for h in HOPS] == [0.1, 0.2, 0.3, 0.3, 0.4]
