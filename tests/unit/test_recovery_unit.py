"""An executor's sweeps (Recovery) on the in-memory store: the claims of its own that it does not
run (``_close_unheld``), and records that do not bear the cluster's seal."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta

from raylane.actors.fencing import LEASE_TTL_S, LeaseObserver
from raylane.actors.recovery import REQUEUE_AFTER_S, UNHELD_AFTER_S, Recovery
from raylane.memory import InMemoryStore
from raylane.models import RetryPolicy, TaskRecord, WriteOutcome, utcnow
from raylane.protocol import UNRECORDED
from raylane.signing import FORGED_RECORD
from raylane.states import TaskState
from tests.contracts import SIGNER, pending

MINE = "Executor/mine"


class _Lease:
    """A live lease, healthy for longer than the sweep asks."""

    incarnation = MINE
    healthy_since = time.monotonic() - LEASE_TTL_S - 1


class _Finisher:
    """Writes ends straight to the store, and notes the retries it is asked for."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.retried: list[str] = []

    async def record(self, record: TaskRecord) -> WriteOutcome:
        [outcome] = self.store.write_many([record])
        return outcome

    async def retry(self, failed: TaskRecord) -> None:
        self.retried.append(failed.id)


def _claimed(age_s: float, owner: str = MINE, retry: RetryPolicy | None = None) -> TaskRecord:
    rec = pending().moved_to(TaskState.RUNNING, worker="w", lease_owner=owner)
    rec = rec.model_copy(update={"updated_at": utcnow() - timedelta(seconds=age_s), "retry": retry or RetryPolicy()})
    return SIGNER.sealed(rec)  # its retry policy is part of what the task was asked


def test_the_sweep_ends_old_claims_of_its_own_that_nothing_runs_and_only_those():
    store = InMemoryStore()
    finisher = _Finisher(store)
    old = UNHELD_AFTER_S + 30
    retried = RetryPolicy(max_retries=2, backoff_s=0.1)
    unrecorded = _claimed(old, retry=retried)  # its closing write failed at the keeper
    left = _claimed(old, retry=retried)  # left behind some other way
    running = _claimed(old)  # runs here
    fresh = _claimed(1.0)  # its claim's answer may be on its way
    theirs = _claimed(old, owner="Executor/other")  # another live executor's
    recs = [unrecorded, left, running, fresh, theirs]
    assert all(o.accepted for o in store.write_many(recs))
    held = {(running.id, 0)}
    recovery = Recovery(store, None, _Lease(), finisher, Counter(), holds=lambda i, a: (i, a) in held, signer=SIGNER)  # type: ignore[arg-type]
    recovery.refused_unrecorded(unrecorded.id, 0)
    # The other executor's lease is alive as far as this sweep can tell: it beats.
    store.heartbeat("Executor/other", 1)

    assert asyncio.run(recovery.sweep()) == 2

    got = store.get_many([r.id for r in recs])
    # The record a refused claim made ends as the keeper closes it: never retried, its submit failed
    assert (got[unrecorded.id].state, got[unrecorded.id].error_type) == (TaskState.FAILED, "NotEnqueued")
    assert got[unrecorded.id].error == UNRECORDED and not got[unrecorded.id].will_retry
    # Any other claim left behind is lost, and retried as its policy says
    assert (got[left.id].state, got[left.id].error_type) == (TaskState.FAILED, "WorkerLost")
    assert got[left.id].will_retry and finisher.retried == [left.id]
    # What runs here, a claim of a moment ago, and another live executor's claim stay RUNNING
    assert {got[r.id].state for r in (running, fresh, theirs)} == {TaskState.RUNNING}


class _Queue:
    """Notes the messages it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def produce_many(self, messages) -> None:
        self.sent += [m.id for m in messages]


def _planted(sealed: bool) -> dict[str, TaskRecord]:
    """A record for each sweep to carry on: sealed as a submit seals it, or planted in the store
    (half with no seal, half with a seal taken from another task's record)."""
    long_ago = utcnow() - timedelta(seconds=REQUEUE_AFTER_S + 60)
    retried = RetryPolicy(max_retries=3, backoff_s=0.0)
    base = pending().model_copy(update={"retry": retried})
    made = {
        "lapsed": base.moved_to(TaskState.RUNNING, worker="w", lease_owner="Executor/gone"),
        "unheld": base.moved_to(TaskState.RUNNING, worker="w", lease_owner=MINE),
        "retry": base.moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED, error_type="E", will_retry=True),
        "stale": base,
        "due": base.moved_to(TaskState.SCHEDULED, not_before=long_ago),
    }
    other = SIGNER.sealed(pending())
    out = {}
    for i, (kind, rec) in enumerate(made.items()):
        rec = rec.model_copy(update={"id": pending().id, "updated_at": long_ago})
        out[kind] = SIGNER.sealed(rec) if sealed else rec.model_copy(update={"seal": other.seal if i % 2 else None})
    return out


def test_the_sweeps_carry_on_only_sealed_records_and_end_planted_ones_unrun():
    store = InMemoryStore()
    finisher = _Finisher(store)
    queue = _Queue()
    sealed, planted = _planted(sealed=True), _planted(sealed=False)
    assert all(o.accepted for o in store.write_many([*sealed.values(), *planted.values()]))
    stats: Counter = Counter()
    recovery = Recovery(store, queue, _Lease(), finisher, stats, holds=lambda i, a: False, signer=SIGNER)  # type: ignore[arg-type]
    now = [0.0]
    recovery._leases = LeaseObserver(clock=lambda: now[0])  # an owner never seen lapses one lease period on
    store.heartbeat("Executor/gone", 1)
    asyncio.run(recovery.sweep())
    now[0] += LEASE_TTL_S + 1
    asyncio.run(recovery.sweep())

    got = store.get_many([r.id for r in planted.values()])
    for kind, rec in planted.items():
        assert (got[rec.id].state, got[rec.id].error_type, got[rec.id].will_retry) == (
            TaskState.FAILED,
            FORGED_RECORD,
            False,
        ), kind
    assert stats["forged"] == len(planted)
    # None of the planted ones was sent or retried; every sealed one was.
    assert not {r.id for r in planted.values()} & set(queue.sent + finisher.retried)
    assert set(queue.sent) == {sealed["stale"].id, sealed["due"].id}
    assert set(finisher.retried) == {sealed["lapsed"].id, sealed["unheld"].id, sealed["retry"].id}
