"""The StatusKeeper: the single path of every status write, and the keeper of running tasks' deadlines.

Writes from all actors are batched into OpenSearch bulk requests; each writer learns
whether its write was accepted or rejected. For running tasks it watches deadlines and
has the Executor kill the Ray task of a task that timed out or was cancelled while running.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray

from raylane.actors.channel import ChannelAddress, ChannelServer
from raylane.actors.common import Background, GroupCommit, settle_collector
from raylane.actors.fencing import HEARTBEAT_EVERY_S, LeaseObserver
from raylane.actors.gates import Gates
from raylane.actors.keepers import Keepers, keeper_methods
from raylane.actors.metrics import KeeperMetrics
from raylane.actors.scheduler import Scheduler
from raylane.actors.taskbook import TaskBook, WaitAnswer, Waiter
from raylane.actors.workflows import Flows
from raylane.errors import StoreUnavailable
from raylane.models import PackedRecord, TaskMessage, TaskRecord, WriteOutcome, utcnow
from raylane.protocol import EXECUTOR, UNRECORDED, WAITS, ActorConfig, keeper_of, live_members
from raylane.queue import TaskQueue
from raylane.retrying import backoff_s
from raylane.signing import ended_as_forged
from raylane.states import TaskState
from raylane.store import TaskQuery

log = logging.getLogger("raylane.status_keeper")

_PURGE_FIRST_S = 60.0  # after a start, before the first purge (the cluster is busy coming up)
_PURGE_EVERY_S = 24 * 3600.0
CREATED = 201  # the store's status for a write that made its document
_CLOSE_TRIES = 10
# How long a claim that made its task's record waits for that task's PENDING write, which was
# sent before the task's message but may arrive after its claim.
_OVERTAKEN_GRACE_S = 2.0
_KILL_STATES = (TaskState.CANCELLED, TaskState.TIMED_OUT)
# Before a TIMED_OUT, the task's executor is asked whether it holds the task's end, not yet
# written; one that does not answer within this long (frozen) is taken to hold none.
_ASK_HELD_S = 1.0
_HELD_LOOK_S = 0.5  # how soon a deadline whose end is held is looked at again
_HELD_AT_MOST_S = 120.0  # how long a held end keeps its task from a TIMED_OUT, at most


def _executor_name(owner: str | None) -> str | None:
    """The name of the executor whose incarnation ``owner`` (a lease owner, "name/incarnation")
    is; None if it names none."""
    return owner.rsplit("/", 1)[0] if owner and "/" in owner else None


@dataclass
class _Running:
    record: PackedRecord
    deadline: float | None  # monotonic
    began: float | None = None  # epoch seconds, when a group's worker said this member began
    held_since: float | None = None  # monotonic, when its executor first said it held its end


class StatusKeeper:
    """Batches versioned status writes and enforces timeouts and cancels of running tasks."""

    def __init__(self, config: ActorConfig, index: int = 0, max_batch: int = 1000):
        self.config = config
        self.index = index  # this keeper owns the tasks whose keeper_of(id) is index
        self.store = config.store()
        self.store.ensure_schema()
        self._writes = GroupCommit(self._flush, max_batch)
        self._deadline_task: asyncio.Task | None = None
        self._scheduler_task: asyncio.Task | None = None
        self._purge_task: asyncio.Task | None = None
        self._router: Keepers | None = None
        self._signer = config.signer()
        # This keeper fires the ticks of its share of the schedules.
        self._scheduler = Scheduler(self.store, self._routed_write, self._signer, shard=(index, config.keepers))
        # ... and moves on the workflows of the tasks whose ends it writes.
        self._flows = Flows(self.store, self._routed_write, self._send, self._signer, shard=(index, config.keepers))
        self._flows_task: asyncio.Task | None = None
        self._moving_on: set[asyncio.Task] = set()
        # (deadline, task id) of running tasks, soonest first; an entry whose task has since
        # ended or moved its deadline is skipped when it comes up.
        self._deadlines: list[tuple[float, str]] = []
        # SCHEDULED tasks this keeper owns, and when (monotonic) each is due: their messages are
        # sent from here then.
        self._scheduled: dict[str, TaskRecord] = {}
        self._due: list[tuple[float, str]] = []
        self._gates = Gates()  # limited tasks of the keys this keeper counts
        self._producer: TaskQueue | None = None
        # The send of due tasks under way: it runs beside the deadline loop, since a send that
        # waits on Kafka (up to its produce timeout) must not hold back the timeouts of others.
        self._releasing: asyncio.Task | None = None
        self._background = Background(log)  # keeps it, and logs what it fails with
        self._resumed = False
        self._running: dict[str, _Running] = {}
        self._book = TaskBook()  # open and ended tasks, and their waiters
        self._executors: dict[str, Any] = {}  # handles by name, looked up as kills need them
        self._leases = LeaseObserver()
        self._observed = 0.0
        self._observing: asyncio.Task | None = None  # the look at the heartbeats under way, if one is
        self._reported = 0.0
        self.stats = {
            "writes": 0,
            "accepted": 0,
            "rejected": 0,
            "bulk_requests": 0,
            "timeouts": 0,
            "ends_awaited": 0,  # deadline looks put off: the executor held the end
            "kills": 0,
            "released": 0,
            "purged": 0,
            "unrecorded": 0,  # claims refused because their task had no record
            "overtaken": 0,  # first PENDING writes that came after their task's claim (it ran)
            "forged": 0,  # SCHEDULED records found at a start without the cluster's seal, ended
        }
        self.metrics = KeeperMetrics()
        # The executors of this node send claims and ends by socket, and drivers their waits (see
        # raylane.actors.channel); it is made when first asked for.
        self._channel: ChannelServer | None = None
        # Task ids whose claim made their record, while this keeper waits for their PENDING write.
        self._made_by_claim: dict[str, asyncio.Event] = {}
        settle_collector()

    async def local_channel(self) -> ChannelAddress | None:
        """Where the executors of this keeper's node send claims and writes by socket, and its
        drivers their waits, with the token they present; None if the socket cannot be made here
        (they call this actor)."""
        if self._channel is None:
            node = ray.get_runtime_context().get_node_id()
            self._channel = ChannelServer(keeper_methods(self), node, f"StatusKeeper-{self.index}")
        return await self._channel.listen()

    def _ensure_loops(self) -> None:
        if self._deadline_task is None or self._deadline_task.done():
            self._deadline_task = asyncio.create_task(self._deadline_loop())
        if self._scheduler_task is None or self._scheduler_task.done():
            self._scheduler_task = asyncio.create_task(self._scheduler.loop())
        if self._flows_task is None or self._flows_task.done():
            self._flows_task = asyncio.create_task(self._flows.loop())
        # One keeper purges for all: a purge deletes by query across the whole index.
        if self.config.retention_s and self.index == 0 and (self._purge_task is None or self._purge_task.done()):
            self._purge_task = asyncio.create_task(self._purge_loop(self.config.retention_s))

    async def _purge_loop(self, retention_s: float) -> None:
        """Delete the records of tasks finished more than ``retention_s`` ago, daily."""
        await asyncio.sleep(_PURGE_FIRST_S)
        while True:
            try:
                before = utcnow() - timedelta(seconds=retention_s)
                self.stats["purged"] += await asyncio.to_thread(self.store.purge, before)
            except Exception as e:  # the store is away: the next day's purge takes these too
                log.warning("purging finished records failed: %r", e)
            await asyncio.sleep(_PURGE_EVERY_S)

    async def _routed_write(self, records: Sequence[TaskRecord]) -> list[WriteOutcome]:
        # A tick's task, or a workflow's next one, may belong to another keeper: the router sends
        # each record to its owner.
        if self._router is None:
            self._router = Keepers(self.config.namespace, self.config.keepers)
        return await self._router.write(records)

    async def _send(self, messages: list[TaskMessage]) -> None:
        if self._producer is None:
            self._producer = self.config.queue()
        await asyncio.to_thread(self._producer.produce_many, messages)

    def _move_on(self, record: PackedRecord) -> None:
        """Move the workflow of ``record`` (an accepted end) on, beside the writes."""

        async def move_on() -> None:
            try:
                await self._flows.ended(record.unpack())
            except Exception as e:  # an outage: the sweep moves its children on later
                self._flows.stats["errors"] += 1
                log.warning("moving on the workflow of task %s failed: %r", record.id, e)

        task = asyncio.get_running_loop().create_task(move_on())
        self._moving_on.add(task)
        task.add_done_callback(self._moving_on.discard)

    async def ensure_running(self) -> int:
        """Start the deadline loop (idempotent). The first call after a (re)start also takes up the
        deadlines of tasks already RUNNING, from their records. Returns the tasks being watched."""
        self._ensure_loops()
        if not self._resumed:
            # The producer that sends due tasks is made now: making it (and learning the topics)
            # at the first due task would delay that task by about a second.
            await asyncio.to_thread(self._warm_producer)
            # Claims written just before a crash may not be searchable yet.
            await asyncio.to_thread(self.store.refresh)
            records = await asyncio.to_thread(self._records_in, TaskState.RUNNING)
            now_wall, now = utcnow(), time.monotonic()
            for r in records:
                if r.id not in self._running and keeper_of(r.id, self.config.keepers) == self.index:
                    deadline = None
                    if r.timeout_s and r.started_at:
                        # A grouped member keeps its allowance to wait for its turn, as at its claim.
                        since_claim = (r.started_at - now_wall).total_seconds()
                        deadline = now + since_claim + (r.group_wait_s or 0.0) + r.timeout_s
                    packed = PackedRecord.of(r)
                    self._watch(_Running(packed, deadline))
                    self._book.opened(packed)
                    if r.limited:
                        self._gates.holding(r)  # before any waiting task is let through
            scheduled = [
                r
                for r in await asyncio.to_thread(self._records_in, TaskState.SCHEDULED)
                if keeper_of(r.id, self.config.keepers) == self.index
            ]
            # Only those the cluster sealed: one planted in the store is ended, its message never sent.
            sealed, forged = self._signer.split(scheduled)
            if forged:
                log.warning("ending %d SCHEDULED record(s) that do not bear this cluster's seal", len(forged))
                self.stats["forged"] += sum(o.accepted for o in await self.write([ended_as_forged(r) for r in forged]))
            for rec in sealed:
                if rec.id not in self._scheduled:
                    self._schedule(rec)
            self._resumed = True
        return len(self._running)

    def _warm_producer(self) -> None:
        try:
            if self._producer is None:
                self._producer = self.config.queue()
            self._producer.ensure_queue(self.config.default_queue)
            self._producer.produce_many([])
        except Exception as e:  # Kafka is away: the first due task makes it instead
            log.warning("could not prepare the producer of due tasks: %r", e)

    def _records_in(self, state: TaskState) -> list[TaskRecord]:
        """Every record in ``state``, page by page (no cap: a keeper must watch all of its tasks)."""
        out: list[TaskRecord] = []
        after = None
        while True:
            page, after = self.store.search(TaskQuery(state=[state]), 1000, after)
            out.extend(page)
            if after is None or not page:
                return out

    # ----- writes
    async def write(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """Versioned writes of whole records (packed or not); one outcome per record, in order."""
        self._ensure_loops()
        packed = [PackedRecord.of(r) for r in records]
        outcomes = await self._writes.submit_many(packed)
        return self._overtaken(packed, outcomes) if self._made_by_claim else outcomes

    def _overtaken(self, packed: list[PackedRecord], outcomes: list[WriteOutcome]) -> list[WriteOutcome]:
        """``outcomes``, with a first PENDING write that lost to its own task's claim, which made the
        record moments before (see ``_refuse_unrecorded``), counted as accepted: the task is on
        record, and runs."""
        out = list(outcomes)
        for i, (p, o) in enumerate(zip(packed, outcomes, strict=True)):
            overtaken = self._made_by_claim.get(p.id)
            if overtaken is None or o.accepted or o.reason != "conflict":
                continue
            if p.state is TaskState.PENDING and p.attempt == 0:
                overtaken.set()
                self.stats["overtaken"] += 1
                out[i] = o._replace(accepted=True, reason=None, status=200)
        return out

    async def _flush(self, records: list[PackedRecord]) -> list[WriteOutcome]:
        began = time.perf_counter()
        try:
            outcomes = await self.store.write_many_async(records)
        except StoreUnavailable:
            raise
        except Exception as e:  # report anything else as the store failing, so writers retry
            log.exception("bulk write failed")
            raise StoreUnavailable(f"bulk write failed: {e!r}") from e
        self.stats["bulk_requests"] += 1
        self.metrics.flushed(records, outcomes, time.perf_counter() - began)
        for record, outcome in zip(records, outcomes, strict=False):
            self.stats["writes"] += 1
            self.stats["accepted" if outcome.accepted else "rejected"] += 1
            if outcome.accepted:
                self._track_schedule(record)
                running = self._running.get(record.id)
                if running is not None and running.record.attempt < record.attempt:
                    # A newer attempt is on record: the older one must not run on beside it.
                    self._running.pop(record.id, None)
                    self._kill(record.id, running.record.attempt, running.record.lease_owner)
                if not record.terminal or record.will_retry:
                    self._book.opened(record)
            if record.terminal:
                self._after_terminal(record, outcome.accepted)
        return outcomes

    def _after_terminal(self, record: PackedRecord, accepted: bool) -> None:
        running = self._running.get(record.id)
        same_attempt = running is not None and running.record.attempt == record.attempt
        if not accepted:
            # A rejected terminal write from the executor still means its Ray task is over.
            if same_attempt and record.state not in _KILL_STATES:
                self._running.pop(record.id, None)
            return
        if running is not None and same_attempt:
            self._running.pop(record.id, None)
            if record.state in _KILL_STATES:
                self._kill(record.id, owner=running.record.lease_owner)
        self._gates.ended(record.id, record.attempt)
        if record.will_retry:
            return  # not over: a new attempt follows
        if record.in_workflow:
            self._move_on(record)
        for waiter in self._book.ended(record):
            waiter.deliver(record)

    # ----- running tasks
    async def claim(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """Write RUNNING records; watch each accepted task's deadline and cancels from then on."""
        packed = [PackedRecord.of(r) for r in records]
        for owner in {p.lease_owner for p in packed}:
            self._leases.vouch(owner)  # the claiming executor is alive: its tasks' timeouts need no look
        if any(self._gates.is_waiting(p.id) for p in packed):
            return await self._claim_admitted(packed)
        outcomes = await self.write(packed)
        if any(o.accepted and o.status == CREATED for o in outcomes):
            outcomes = await self._refuse_unrecorded(packed, outcomes)
        for running, outcome in zip(packed, outcomes, strict=True):
            if not outcome.accepted:
                continue
            recent = self._book.ended_as(running.id)
            if recent and recent[0] == running.attempt:
                # A cancel or timeout was accepted in the same batch, after the claim.
                if recent[1] in _KILL_STATES:
                    self._kill(running.id, owner=running.lease_owner)
            else:
                deadline = time.monotonic() + running.wait_s + running.timeout_s if running.timeout_s else None
                self._watch(_Running(running, deadline))
        return outcomes

    async def _refuse_unrecorded(self, packed: list[PackedRecord], outcomes: list[WriteOutcome]) -> list[WriteOutcome]:
        """Refuse the claims that made their task's record rather than moved it on: the task had
        no record. Its submit failed after its message was sent (the PENDING write and the produce
        run side by side), or its record was removed; it must not run. (A claim that merely
        overtook its task's PENDING write is not refused: see ``_not_overtaken``.) The records
        made so are closed, FAILED, in one write, so that no RUNNING record is left that nothing
        runs, and a PENDING write still on its way loses to it; the claim's answer names the
        reason, so the message is dead-lettered."""
        made = [i for i, o in enumerate(outcomes) if o.accepted and o.status == CREATED]
        made = await self._not_overtaken([packed[i].id for i in made], made)
        if not made:
            return outcomes
        closed = [
            packed[i].unpack().moved_to(TaskState.FAILED, error_type="NotEnqueued", error=UNRECORDED) for i in made
        ]
        for attempt in range(1, _CLOSE_TRIES + 1):
            try:
                await self.write(closed)
                break
            except StoreUnavailable as e:  # it was just written to: most likely back at once
                log.warning("closing %d unrecorded task(s) failed (try %d): %r", len(closed), attempt, e)
                await asyncio.sleep(backoff_s(attempt, cap_s=2.0))
        else:
            # The claiming executor's sweep closes them later (Recovery._close_unheld).
            log.error("unrecorded tasks left RUNNING, closing them failed: %s", ", ".join(r.id for r in closed))
        self.stats["unrecorded"] += len(made)
        out = list(outcomes)
        for i in made:
            out[i] = WriteOutcome(packed[i].id, packed[i].version, accepted=False, reason=UNRECORDED, status=404)
        return out

    async def _not_overtaken(self, ids: list[str], made: list[int]) -> list[int]:
        """Those of ``made`` (places of claims that made their task's record, ids ``ids``) whose
        PENDING write does not come within ``_OVERTAKEN_GRACE_S``. The PENDING write runs beside
        the produce, so a claim whose message came by fast ways (sockets, an idle queue) may
        reach this keeper before the write does; the write then loses to the claim, which is
        the task's own (``_overtaken``)."""
        events = {task_id: self._made_by_claim.setdefault(task_id, asyncio.Event()) for task_id in ids}
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events.values())), _OVERTAKEN_GRACE_S)
        finally:
            for task_id in ids:
                self._made_by_claim.pop(task_id, None)
        return [i for i, task_id in zip(made, ids, strict=True) if not events[task_id].is_set()]

    def attempt_open(self, task_id: str, attempt: int) -> bool:
        """Whether attempt ``attempt`` of ``task_id`` may still start, as far as this keeper knows:
        False once a terminal write of it (a cancel, a timeout) or a newer attempt was accepted
        here. Answered from memory, never from the store: a keeper that restarted since knows
        nothing of the task and answers True, as the claim's answer did."""
        running = self._running.get(task_id)
        if running is not None:
            return running.record.attempt <= attempt
        ended = self._book.ended_as(task_id)
        return ended is None or ended[0] < attempt

    async def began(
        self, task_id: str, attempt: int, began: float, wait_s: float = 0.0, restarted: bool = False
    ) -> bool:
        """Start the clock of a running task that waited for its turn in a group: it began at
        ``began`` (epoch seconds), or, with ``wait_s``, may wait that much longer from then. Its
        deadline becomes that plus its timeout. ``restarted``: the member starts again elsewhere
        and its clock restarts at ``began``, which is not when it began. False if this attempt is
        not running here, or has no timeout."""
        r = self._running.get(task_id)
        if r is None or r.record.attempt != attempt or not r.record.timeout_s or r.deadline is None:
            return False
        r.began = None if restarted else began  # a TIMED_OUT record says when its member began
        since = max(0.0, time.time() - began)
        self._set_deadline(r, time.monotonic() - since + wait_s + r.record.timeout_s)
        return True

    async def _claim_admitted(self, packed: list[PackedRecord]) -> list[WriteOutcome]:
        """``claim``, where some tasks still wait for their turn under a limit (a message sent
        before a restart, or by a recovery sweep): those are refused unwritten, as a claim that
        lost; their turn comes later, with a message of its own."""
        waiting = [self._gates.is_waiting(p.id) for p in packed]
        admitted = [p for p, w in zip(packed, waiting, strict=True) if not w]
        outcomes = iter(await self.claim(admitted) if admitted else [])
        return [
            WriteOutcome(p.id, p.version, accepted=False, reason="conflict", status=409) if w else next(outcomes)
            for p, w in zip(packed, waiting, strict=True)
        ]

    # ----- scheduled tasks
    def _track_schedule(self, record: PackedRecord) -> None:
        """After an accepted write: a SCHEDULED one is watched until due; any later one of the
        same task (a cancel, a claim) ends that watch."""
        if record.state is TaskState.SCHEDULED:
            self._schedule(record.unpack())
        elif record.id in self._scheduled:
            del self._scheduled[record.id]

    def _schedule(self, rec: TaskRecord) -> None:
        if rec.waits_for_parents:
            return  # started when its parents end, not at a time (see Flows)
        self._scheduled[rec.id] = rec
        wait_s = (rec.not_before - utcnow()).total_seconds() if rec.not_before else 0.0
        heapq.heappush(self._due, (time.monotonic() + max(0.0, wait_s), rec.id))

    async def _release_due(self, now: float) -> None:
        """Send the messages of SCHEDULED tasks that are due (their records stay SCHEDULED until
        claimed; a cancel written meanwhile makes the claim lose)."""
        due: list[TaskRecord] = []
        while self._due and self._due[0][0] <= now:
            _, task_id = heapq.heappop(self._due)
            rec = self._scheduled.pop(task_id, None)
            if rec is None:
                continue
            if rec.limited:
                self._gates.wait(rec)  # its message goes once its turn comes
            else:
                due.append(rec)
        for rec, wait_s in self._gates.admit(now):
            # Under a rate, the message says when its start slot is, and the executor waits for it.
            # (The slot is a monotonic time, now + wait_s; it is put on the wall clock as of this instant.)
            slot = None if wait_s is None else utcnow() + timedelta(seconds=now + wait_s - time.monotonic())
            due.append(rec if slot is None else rec.model_copy(update={"not_before": slot}))
        if not due:
            return
        if self._producer is None:
            self._producer = self.config.queue()
        try:
            await asyncio.to_thread(self._producer.produce_many, [r.message() for r in due])
            self.stats["released"] += len(due)
        except Exception as e:  # Kafka is away: they stay scheduled, and are tried again shortly
            log.warning("sending %d due task(s) failed: %r; will retry", len(due), e)
            now = time.monotonic()  # a failed send may have waited its whole timeout
            for rec in due:
                if rec.limited:
                    # Admitted, but its message did not go: it gives its place back and waits again.
                    heapq.heappush(self._due, (now + 1.0, rec.id))
                    self._scheduled[rec.id] = rec
                    self._gates.ended(rec.id, rec.attempt)
                elif rec.id not in self._scheduled:
                    self._scheduled[rec.id] = rec
                    heapq.heappush(self._due, (now + 1.0, rec.id))

    def _watch(self, r: _Running) -> None:
        self._running[r.record.id] = r
        self._set_deadline(r, r.deadline)

    def _set_deadline(self, r: _Running, deadline: float | None) -> None:
        r.deadline = deadline
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, r.record.id))

    def _expired(self, now: float) -> list[_Running]:
        """Running tasks whose deadline passed, taken off the heap."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, task_id = heapq.heappop(self._deadlines)
            r = self._running.get(task_id)
            if r is not None and r.deadline == deadline:
                out.append(r)
        if len(self._deadlines) > 4 * len(self._running) + 1000:
            # Entries of ended tasks pile up when few deadlines pass: rebuild from the live ones.
            self._deadlines = [(r.deadline, i) for i, r in self._running.items() if r.deadline is not None]
            heapq.heapify(self._deadlines)
        return out

    async def _deadline_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - self._reported >= 1.0:
                self._reported = now
                self.metrics.running(len(self._running))
            if now - self._observed >= HEARTBEAT_EVERY_S and self._deadlines:
                # Executors' leases are judged by their heartbeats seen changing, so they are looked
                # at regularly while a deadline is watched, not only once one passes. Beside the
                # loop: while a stalled store holds the read, deadlines still pass.
                self._observed = now
                if self._observing is None or self._observing.done():
                    self._observing = self._background.spawn(self._observe_heartbeats())
            if ((self._due and self._due[0][0] <= now) or self._gates.waiting) and (
                self._releasing is None or self._releasing.done()
            ):
                self._releasing = self._background.spawn(self._release_due(now))
            expired = self._expired(now)
            if expired:
                # Beside the loop: under load a write waits for the bulk before it, and deadlines
                # that pass meanwhile must not wait for it too.
                self._background.spawn(self._time_out(expired, now))

    async def _observe_heartbeats(self) -> None:
        try:
            self._leases.observe(await asyncio.to_thread(self.store.heartbeats))
        except Exception as e:
            log.warning("reading executors' heartbeats failed: %r", e)

    async def _time_out(self, expired: list[_Running], now: float) -> None:
        """Write TIMED_OUT for tasks past their deadline whose executor is alive. A task whose
        executor's lease lapsed did not run on: it is lost, and the executors' sweep retries it
        (or fails it as WorkerLost), so its deadline is looked at again later instead; after a
        whole-cluster restart this keeper takes up deadlines that ran on while nothing ran."""
        for r in expired:
            r.deadline = None  # one TIMED_OUT write per task
        try:
            # The heartbeats are read only when an owner is not known to be renewing: a read can
            # only add evidence of renewal, never take it back, so it would change no judgement
            # here, and under load it costs the timeout a search (hundreds of milliseconds).
            if not all(self._leases.renewed(r.record.lease_owner) for r in expired):
                self._observed = time.monotonic()
                self._leases.observe(await asyncio.to_thread(self.store.heartbeats))
            records = [r.record.unpack() for r in expired]
            held = await self._ends_held([rec for rec in records if self._leases.renewed(rec.lease_owner)])
            due = []
            for r, rec in zip(expired, records, strict=False):
                if (rec.id, rec.attempt) in held and self._wait_for_end(r):
                    continue
                if self._leases.renewed(rec.lease_owner):
                    due.append(
                        rec.moved_to(
                            TaskState.TIMED_OUT,
                            error_type="TimeoutError",
                            error=f"task ran past its timeout of {rec.timeout_s:g}s and was killed",
                            # started_at is the claim; a member of a group began later, and its
                            # hops say when, as a finished member's do.
                            hops=rec.hops_with(began=r.began),
                        )
                    )
                elif self._leases.lapsed(rec.lease_owner):
                    self._set_deadline(r, now + self._leases.ttl_s / 2)
                    log.info(
                        "task %s is past its timeout, but its executor %s is gone: left to the sweep",
                        rec.id,
                        rec.lease_owner,
                    )
                else:  # not seen renewing yet (this keeper just started): look again shortly
                    self._set_deadline(r, now + HEARTBEAT_EVERY_S / 2)
            if not due:
                return
            outcomes = await self.write(due)
        except Exception as e:  # the deadlines stay watched whatever failed
            if isinstance(e, StoreUnavailable):
                log.warning("could not time out %d task(s): %s; will retry", len(expired), e)
            else:
                log.exception("timing out %d task(s) failed; will retry", len(expired))
            for r in expired:
                self._set_deadline(r, now + 1.0)
            return
        self.stats["timeouts"] += sum(o.accepted for o in outcomes)

    async def _ends_held(self, records: list[TaskRecord]) -> set[tuple[str, int]]:
        """Of ``records``, running tasks past their deadlines, the (id, attempt) of those whose
        executor holds their end, not yet written: it came back before the deadline and waits
        behind other writes (a slow store), so it is what the task's record is to say."""
        by_owner: dict[str, list[tuple[str, int]]] = {}
        for rec in records:
            name = _executor_name(rec.lease_owner)
            if name is not None:
                by_owner.setdefault(name, []).append((rec.id, rec.attempt))

        async def ask(name: str, attempts: list[tuple[str, int]]) -> list[tuple[str, int]]:
            executor = self._executor(name)
            if executor is None:
                return []
            try:
                return await asyncio.wait_for(executor.ends_held.remote(attempts), _ASK_HELD_S)
            except Exception as e:  # a frozen or gone executor holds nothing it can write soon
                log.info("executor %s did not say which ends it holds: %r", name, e)
                return []

        answers = await asyncio.gather(*(ask(name, attempts) for name, attempts in by_owner.items()))
        return {(task_id, attempt) for answer in answers for task_id, attempt in answer}

    def _wait_for_end(self, r: _Running) -> bool:
        """Look at ``r``'s deadline again shortly, since its executor holds its end; False once
        it has held it for ``_HELD_AT_MOST_S`` (its writes keep failing): time it out."""
        now = time.monotonic()
        if r.held_since is None:
            r.held_since = now
        elif now - r.held_since >= _HELD_AT_MOST_S:
            return False
        self.stats["ends_awaited"] += 1
        self._set_deadline(r, now + _HELD_LOOK_S)
        return True

    def _kill(self, task_id: str, attempt: int | None = None, owner: str | None = None) -> None:
        """Have the task's Ray task stopped: by the executor whose incarnation ``owner`` holds its
        lease (it is named in the incarnation), which stops it or, with its claim still in
        flight, does not launch it; by every executor when the owner is not known."""
        self.stats["kills"] += 1
        name = _executor_name(owner)
        target = self._executor(name) if name is not None else None
        if target is not None:
            target.kill.remote(task_id, attempt)
            return
        for name in live_members(self.config.namespace, EXECUTOR):
            executor = self._executor(name)
            if executor is not None:
                executor.kill.remote(task_id, attempt)

    def _executor(self, name: str) -> Any:
        """The handle of executor ``name`` (one of a node that joined after deploy too); None if
        there is no such actor."""
        if name not in self._executors:
            try:
                self._executors[name] = ray.get_actor(name, namespace=self.config.namespace)
            except ValueError:
                return None
        return self._executors[name]

    # ----- waiting
    @ray.method(concurrency_group=WAITS)
    async def wait_any(
        self,
        task_ids: list[str],
        timeout_s: float,
        gather_s: float = 0.02,
        tenant: str | None = None,
        unknown_first: bool = False,
    ) -> WaitAnswer:
        """Terminal records of ``task_ids``, as their terminal writes are accepted: returns once one
        is (taking what else comes in the next ``gather_s``), or with none after ``timeout_s``.

        Tasks this keeper saw end before the call come back at once: with their records while it
        holds them, else by id in ``unread`` (the caller reads the store for them). With
        ``unknown_first``, so do the ids it does not know open as ``tenant``'s tasks, in
        ``unknown``: a task submitted since this keeper started is known to it, so a wait on it
        needs no read of the store.

        Waits have a concurrency group of their own (``WAITS``): any number of held waits never
        takes a place a status write needs."""
        waiter = Waiter(gather_s, len(set(task_ids)))
        at_once = self._book.watch(task_ids, waiter, tenant, unknown_first)
        if at_once is not None:
            return at_once
        try:
            return WaitAnswer(list(await waiter.take(timeout_s)), [], [])
        finally:
            self._book.unwatch(task_ids, waiter)

    async def schedules_changed(self) -> None:
        """A schedule was saved, paused or deleted: the scheduler reads them again at its next pass."""
        self._scheduler.changed()

    async def get_stats(self) -> dict:
        """Counters of writes, rejections, timeouts and kills, plus tasks being watched and the
        ticks its scheduler fired."""
        return dict(
            self.stats,
            running=len(self._running),
            waiters=self._book.waited_for(),
            **{f"book_{k}": v for k, v in self._book.sizes().items()},
            ticks_fired=self._scheduler.stats["fired"],
            scheduler_passes=self._scheduler.stats["passes"],
            scheduler_reads=self._scheduler.stats["reads"],
            **{f"workflow_{k}": v for k, v in self._flows.stats.items()},
            **{f"limited_{k}": v for k, v in self._gates.counts().items()},
            **self.store.bulk_stats(),
        )
