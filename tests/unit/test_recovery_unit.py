"""An executor's sweep of the claims of its own that it does not run (Recovery._close_unheld),
on the in-memory store."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta

from raylane.actors.fencing import LEASE_TTL_S
from raylane.actors.recovery import UNHELD_AFTER_S, Recovery
from raylane.memory import InMemoryStore
from raylane.models import RetryPolicy, TaskRecord, WriteOutcome, utcnow
from raylane.protocol import UNRECORDED
from raylane.states import TaskState
from tests.contracts import pending

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
    return rec.model_copy(update={"updated_at": utcnow() - timedelta(seconds=age_s), "retry": retry or RetryPolicy()})


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
    recovery = Recovery(store, None, _Lease(), finisher, Counter(), holds=lambda i, a: (i, a) in held)  # type: ignore[arg-type]
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
