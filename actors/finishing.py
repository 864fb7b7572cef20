"""Finishing and retries: a task's terminal record from its worker's reply, written through its
StatusKeeper, and the next attempt its retry policy asks for.

A terminal write that the store rejects lost to a cancel or a timeout: its result is
discarded. One the store refuses for its content (a result it cannot hold) becomes a FAILED
record with the store's reason, so no task stays RUNNING for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from datetime import datetime, timedelta

from ray.exceptions import RayError

from raylane.actors.common import GroupCommit
from raylane.actors.keepers import Keepers
from raylane.errors import QueueUnavailable, StoreUnavailable
from raylane.limits import clip_text
from raylane.models import PackedRecord, TaskMessage, TaskRecord, WriteOutcome, utcnow
from raylane.protocol import Reply
from raylane.queue import TaskQueue
from raylane.retrying import backoff_s
from raylane.states import TaskState
from raylane.tracing import TaskTracer

log = logging.getLogger("raylane.executor")


def past_timeout(running: TaskRecord, now: datetime) -> bool:
    """Whether ``running`` is surely past its timeout at ``now``: its clock starts at its claim,
    or at its start slot if later, plus any wait for its turn in a group, as its keeper counts."""
    if not running.timeout_s or running.started_at is None:
        return False
    start = max(running.started_at, running.not_before or running.started_at)
    return now >= start + timedelta(seconds=(running.group_wait_s or 0.0) + running.timeout_s)


def final_record(running: TaskRecord, reply: Reply, now: datetime | None = None) -> tuple[TaskRecord, PackedRecord]:
    """The terminal record of a task from its worker's reply, and the record packed. A reply that
    cannot be made into a record fails only its own task, never the batch it came with. A task
    whose worker ended without a reply once past its timeout ended TIMED_OUT, as its keeper
    would have written, whatever ended the worker first (its lease, say, on a loaded machine)."""
    hops = running.hops_with(began=reply.began, returned=reply.returned)
    if "began" in hops and hops.get("claimed", 0.0) > hops["began"]:
        # A gated worker began the moment its claim was accepted; the executor noted the claim
        # only when it next ran, which may be later. The claim came first.
        hops["claimed"] = hops["began"]
    try:
        if reply.ok:
            final = running.moved_to(TaskState.SUCCEEDED, result=reply.result, hops=hops)
        elif reply.abnormal and past_timeout(running, now or utcnow()):
            final = running.moved_to(
                TaskState.TIMED_OUT,
                hops=hops,
                error_type="TimeoutError",
                error=f"task ran past its timeout of {running.timeout_s:g}s and was killed ({reply.error_type})",
            )
        else:
            final = running.moved_to(
                TaskState.FAILED,
                hops=hops,
                error=reply.error,
                error_type=reply.error_type,
                error_types=list(reply.error_types) or None,
                traceback=reply.traceback,
                will_retry=running.retries_after(reply.error_type, reply.error_types),
            )
        return final, PackedRecord.of(final)
    except Exception as e:
        final = running.moved_to(
            TaskState.FAILED,
            hops=hops,
            error_type="ResultNotSerializable",
            error=clip_text(f"the task's end could not be recorded: {e!r}"),
        )
        return final, PackedRecord.of(final)


def own_claim(stored: TaskRecord | None, mine: TaskRecord | PackedRecord) -> bool:
    """Whether ``stored`` is the RUNNING claim ``mine`` (same attempt and lease owner)."""
    return (
        stored is not None
        and stored.state is TaskState.RUNNING
        and stored.attempt == mine.attempt
        and stored.lease_owner == mine.lease_owner
    )


class Finisher:
    """Writes ends and starts retries for one executor, through the tasks' StatusKeepers.

    Ends are coalesced: while one write is on its way to the keepers, those that come meanwhile
    wait and go as the next batch. Behind a slow write (a busy store) an end may so reach its
    keeper after its task's deadline, which it beat: the keeper asks this executor which ends
    it holds (``held``) before it writes TIMED_OUT, and leaves those to be written."""

    def __init__(self, keepers: Keepers, queue: TaskQueue, stats: Counter, tracer: TaskTracer | None = None):
        self._keepers = keepers
        self._tracer = tracer
        self._queue = queue
        self._finals = GroupCommit(self._write_finals)
        self._stats = stats
        self._held: Counter[tuple[str, int]] = Counter()  # ends received, not yet answered by their keeper

    async def _write_finals(self, records: list[TaskRecord | PackedRecord]) -> list:
        return await self._keepers.write(records)

    def held(self, attempts: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Those of ``attempts`` (task id, attempt) whose end this executor has received from its
        worker and not yet had answered by its keeper: on its way there, or to be sent again."""
        return [(task_id, attempt) for task_id, attempt in attempts if self._held[(task_id, attempt)]]

    async def record(self, record: TaskRecord) -> WriteOutcome:
        """Write one record through the keeper (see ``record_many``)."""
        [outcome] = await self.record_many([record])
        return outcome

    async def record_many(self, records: list[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """Write records through the keeper, riding out a store outage or a keeper restart
        (the tasks keep their run slots meanwhile, so outages apply backpressure)."""
        attempt = 0
        while True:
            try:
                return await self._finals.submit_many(records)
            except (StoreUnavailable, RayError) as e:
                attempt += 1
                if attempt == 1 or attempt % 30 == 0:
                    first = records[0]
                    log.warning(
                        "writing %d record(s) (%s of %s first) failed (try %d): %r",
                        len(records),
                        first.state.value,
                        first.id,
                        attempt,
                        e,
                    )
                await asyncio.sleep(backoff_s(attempt, cap_s=2.0))

    async def settle_many(self, ended: list[tuple[TaskRecord, Reply]]) -> None:
        """Write the ends of tasks from their replies, in one batch, and start the retries their policies ask for."""
        attempts = Counter((running.id, running.attempt) for running, _ in ended)
        self._held += attempts
        try:
            finals = [final_record(running, reply) for running, reply in ended]
            try:
                outcomes = await self.record_many([packed for _, packed in finals])
            finally:
                self._held -= attempts  # keeps only the attempts still counted
            for (final, _), outcome in zip(finals, outcomes, strict=True):
                await self._after_end(final, outcome)
        except Exception:
            log.exception("finishing task(s) %s failed", ", ".join(r.id for r, _ in ended))

    async def _after_end(self, final: TaskRecord, outcome: WriteOutcome) -> None:
        if outcome.refused_for_content:
            # The store will never take this end as it is (a result it cannot hold): the task
            # fails with the store's reason instead of staying RUNNING.
            final = final.moved_to(
                TaskState.FAILED,
                result=None,
                will_retry=False,
                error_type="RecordRefused",
                error=clip_text(f"the status store refused the task's {final.state.value} record: {outcome.reason}"),
                traceback=None,
            )
            outcome = await self.record(final)
        if outcome.accepted and self._tracer is not None:
            try:
                if self._tracer.record(final):
                    self._stats["traced"] += 1
            except Exception:  # a trace is never worth a task's end
                log.exception("tracing task %s failed", final.id)
        if not outcome.accepted:
            self._stats["discarded_results"] += 1
            log.info("task %s: %s discarded, a cancel or timeout was recorded first", final.id, final.state.value)
        elif final.will_retry:
            await self.retry(final)
        else:
            self._stats["succeeded" if final.state is TaskState.SUCCEEDED else "failed"] += 1

    async def retry(self, failed: TaskRecord) -> None:
        """Start the next attempt of a failed task: its record, and at once its message; or, with a
        backoff, a SCHEDULED record whose keeper sends the message when it is due, so that a retry
        waiting out its backoff holds no place in a consumer's window (nor here). Should that
        keeper stop meanwhile, it takes the SCHEDULED record up again when it restarts."""
        nxt, msg = failed.retried(failed.retry.delay_s(failed.attempt, random.random()))
        outcome = await self.record(nxt)
        if not outcome.accepted:
            return  # cancelled meanwhile, or another sweep already took it further
        self._stats["retried"] += 1
        if nxt.state is TaskState.PENDING:
            await self.enqueue(msg)

    async def enqueue(self, msg: TaskMessage) -> None:
        """Produce ``msg``, riding out a Kafka outage."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self._queue.produce_many, [msg])
                return
            except QueueUnavailable as e:
                if attempt % 30 == 0:
                    log.warning("re-queueing %s waits for Kafka: %s", msg.id, e)
                attempt += 1
                await asyncio.sleep(backoff_s(attempt, cap_s=2.0))
