"""The Executor: takes tasks from a consumer, claims each with a RUNNING write, runs it as a Ray task.

The RUNNING write is the claim: if the store rejects it (the task was cancelled, or
another executor took it) the task is skipped. The result or error becomes the
terminal write; if that is rejected (a cancel or timeout won) the result is discarded.

This module is the actor's front; the work is done by its parts:

- ``worker``: the code that runs in the Ray workers;
- ``grouping``: which tasks share a Ray task;
- ``runs``: launching, tracking and stopping the Ray tasks;
- ``finishing``: terminal records and retries;
- ``recovery``: this executor's lease, and the sweeps for lost tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raylane.actors.channel import ChannelAddress, ChannelServer, Method
from raylane.actors.common import Background, PrioritySlots, settle_collector
from raylane.actors.fencing import FENCE_MARGIN_S, HEARTBEAT_EVERY_S, LEASE_TTL_S
from raylane.actors.finishing import Finisher, own_claim
from raylane.actors.grouping import plan, sweep_counts, wait_allowance
from raylane.actors.handover import START_MANY, serving
from raylane.actors.keepers import Gate, Keepers
from raylane.actors.recovery import OwnLease, Recovery
from raylane.actors.runs import Runs
from raylane.actors.worker import (
    CLAIM_ANSWER,
    GROUP_ADVANCE,
    GROUP_SIGNAL,
    TASK_END,
    MemberEnd,
    asked_advance,
    asked_attempt,
    asked_signal,
    remote_warm,
    told_end,
)
from raylane.models import PackedRecord, Progress, TaskMessage, TaskRecord, WriteOutcome, utcnow
from raylane.progress_reports import FLUSH_EVERY_S
from raylane.protocol import PER_CPU_RUNNING, UNRECORDED, ActorConfig, HandOff, HandOffResult
from raylane.states import TaskState
from raylane.tracing import tracer_for

log = logging.getLogger("raylane.executor")

_LAUNCHED_KEPT = 100_000
_OLD_MESSAGE_S = 3600.0  # a message this old is run only if its task has a record
_WARM_TIMEOUT_S = 120.0  # how long the warm-up of the node's workers may take before it is let go
# Ray workers started per CPU of the node at an executor's start: a node runs at most two groups
# per CPU at once (one on the CPU, one on a loan its blocked member made: grouping.LOANS_PER_CPU).
# A cluster whose idle threshold is short ends those beyond its free CPUs soon after.
WARM_PER_CPU = 2
_STATS = (
    "started",
    "skipped",
    "expired",
    "succeeded",
    "failed",
    "discarded_results",
    "killed",
    "retried",
    "recovered",
    "requeued",
    "groups",
    "grouped",
    "group_grants",  # leave asked by groups' workers: one message each way per grant
    "group_reports",  # reports of ended members from groups' workers, streamed or sent apart
    "restarted_unstarted",
    "kill_requests",
    "workers_killed",  # Ray tasks killed with their worker process: what they ran ignored the interrupt
    "ahead",  # Ray tasks started beside their claim, behind its gate
    "held_back",  # ... whose claim was not accepted: the function did not start
    "workers_warmed",  # worker processes the warm-up at this executor's start held at once: started for it, or idle
    "lent",  # groups started on the CPU of a member blocked in a call (see ``grouping``)
    "loans_passed_on",  # groups waiting for a CPU whose members moved to a loan no group used
    "traced",  # finished tasks whose trace was made for export (RAYLANE_OTLP_ENDPOINT, ..._SAMPLE_RATIO)
)


def _claims(unit: list[TaskRecord]) -> list[PackedRecord]:
    """The claims of the tasks of one unit: a member of a timed group may wait its turn."""
    if len(unit) == 1:
        return [PackedRecord.of(unit[0])]
    timeouts = [r.timeout_s for r in unit]
    return [
        PackedRecord.of(r.model_copy(update={"group_wait_s": wait_allowance(timeouts, i) or None}))
        for i, r in enumerate(unit)
    ]


def _node_cpus(node_id: str) -> int:
    """The CPUs node ``node_id`` offers Ray (none if Ray does not know the node)."""
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return int(node.get("Resources", {}).get("CPU", 0))
    return 0


async def _accepted(gate: Gate) -> bool:
    """Whether the claim behind ``gate`` was accepted, as its worker will find it."""
    answers, place, _, _ = gate
    if not answers:
        return False  # its worker asks the executor, which says no when the call failed
    try:
        return (await answers[0])[place].accepted
    except Exception:  # that keeper's call failed: its worker does not start the function
        return False


class Executor:
    """Runs tasks as Ray tasks named ``raylane:<task name>:<task id>``, at most ``max_running`` Ray tasks
    at once (by default ``PER_CPU_RUNNING`` per CPU of its node). Under load, tasks of one name share Ray tasks
    (``raylane:<task name>:group-of-<n>:<first id>``), each keeping its own record and cancel."""

    def __init__(self, config: ActorConfig):
        self.config = config
        self.stats: Counter = Counter(dict.fromkeys(_STATS, 0))
        node_id = self._node_id = ray.get_runtime_context().get_node_id()
        self._node_cpu_count = _node_cpus(node_id)
        self._max_running = config.max_running or PER_CPU_RUNNING * max(1, self._node_cpu_count)
        self._warming: asyncio.Task | None = None
        self._warm_left = 0  # warm-up tasks not begun yet; each begun one holds its worker until none is left
        self._warm_all_begun = asyncio.Event()
        # Ray restarted this actor (on a new node, say): no deployment will ask it to warm up.
        self._restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._slots = PrioritySlots(self._max_running)
        self._launched: dict[tuple[str, int], bool] = {}  # (id, attempt) launched here; insertion-ordered, bounded
        # (id, attempt) of Ray tasks started ahead of their claim, until its answer: whether it was accepted
        self._gated: dict[tuple[str, int], asyncio.Future] = {}
        # (id, attempt) -> when its message was read and handed here, for its record's hops; bounded
        self._arrivals: dict[tuple[str, int], tuple[float | None, float]] = {}
        self._keepers = Keepers(config.namespace, config.keepers, node=node_id)
        self._store = config.store()
        self._said: dict[str, Progress] = {}  # progress not yet written, by task id
        self._saying: asyncio.Task | None = None
        queue = config.queue()
        self._background = Background(log)
        self._loops: list[asyncio.Task] = []
        self._worker = f"{node_id[:12]}/{os.getpid()}"
        # A new incarnation on every (re)start: RUNNING records name it as their lease owner, and
        # its heartbeat in the store keeps them alive. Tasks of a lapsed owner are recovered.
        # It starts with the actor's name, so that a keeper sends a kill to this executor alone.
        name = ray.get_runtime_context().get_actor_name() or "Executor"
        self._lease = OwnLease(self._store, f"{name}/{uuid.uuid4().hex[:16]}")
        self._finisher = Finisher(
            self._keepers, queue, self.stats, tracer_for(config.otlp_endpoint, config.otlp_sample_ratio)
        )
        # (id, attempt) of the claims on their way to the keepers, until judged
        self._claiming: Counter[tuple[str, int]] = Counter()
        self._recovery = Recovery(
            self._store,
            queue,
            self._lease,
            self._finisher,
            self.stats,
            holds=self._holds,
            signer=config.signer(),
            check_every_s=config.recovery_check_s,
        )
        # The consumers of this node hand tasks over by socket (see raylane.actors.handover).
        self._channel = ChannelServer(
            {
                START_MANY: serving(self.start_many),
                CLAIM_ANSWER: Method(asked_attempt, lambda a: self._runs.claim_answer(*a)),
                TASK_END: Method(told_end, lambda e: self._runs.task_end(*e)),
                GROUP_ADVANCE: Method(asked_advance, lambda a: self.group_advance(*a)),
                GROUP_SIGNAL: Method(asked_signal, self.group_signal),
            },
            node_id,
            self._lease.incarnation,
        )
        self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._runs = Runs(
            actor=ray.get_runtime_context().current_actor,
            node_id=node_id,
            lease=self._lease,
            limits=config.limits(),
            slots=self._slots,
            cpus=self._cpus,
            node_cpus=max(1, self._node_cpu_count),
            finisher=self._finisher,
            keepers=self._keepers,
            stats=self.stats,
            background=self._background,
        )
        settle_collector()

    async def ensure_running(self) -> str:
        """Start the heartbeat and the sweep for lost tasks if not running (idempotent); returns the incarnation."""
        if not self._loops or any(t.done() for t in self._loops):
            for t in self._loops:
                t.cancel()
            await self._lease.renew()
            self._lease.healthy_since = self._lease.healthy_since or time.monotonic()
            self._loops = [
                asyncio.create_task(self._lease.heartbeat_loop()),
                asyncio.create_task(self._recovery.loop()),
            ]
            await self._open_channel()
        if self._restarted:
            await self.warm_workers()
        return self._lease.incarnation

    async def claim_answer(self, task_id: str, attempt: int) -> bool:
        """Whether the claim of ``task_id``'s attempt, whose Ray task started ahead of it, was
        accepted; answered once the keeper has. The worker of a claim sent over a keeper's
        channel waits for this (by this executor's socket when on its node), where it would wait
        for the keeper's reply to a Ray call."""
        return await self._runs.claim_answer(task_id, attempt)

    async def local_channel(self) -> ChannelAddress | None:
        """Where the consumers of this executor's node hand tasks over by socket, with the token
        they present; None if the socket cannot be made here (they use this actor's calls)."""
        await self.ensure_running()
        return await self._open_channel()

    async def _open_channel(self) -> ChannelAddress | None:
        """Listen on this executor's socket (idempotent); its address, which the workers of this
        node also use to ask for their claims' answers."""
        address = await self._channel.listen()
        if address is not None:
            self._runs.channel = address
        return self._runs.channel

    async def warm_workers(self) -> None:
        """Start the warm-up of this node's Ray workers (``WARM_PER_CPU`` per CPU) unless begun,
        and the sweep of counts left on it (``sweep_counts``), and return at once. The deployment
        calls it once every actor is placed: an actor created meanwhile would wait behind these
        workers' starts. An executor Ray restarted starts it itself, in ``ensure_running``."""
        if self._warming is None and self._node_cpu_count:  # a node without CPUs runs no task
            self._warming = asyncio.create_task(self._warm_workers(WARM_PER_CPU * self._node_cpu_count))
            # Counts of members started that an executor ended before it read them (see grouping).
            self._background.spawn(asyncio.to_thread(sweep_counts))

    async def _warm_workers(self, count: int) -> None:
        """Have Ray start ``count`` worker processes on this node before the first tasks come, as a
        prefork pool starts its processes at boot. Ray grants a task its CPU first and then looks
        for an idle worker; with none idle it starts one (over a second of CPU, mostly imports),
        and the CPU stays reserved while the process starts, though a busy worker may take the
        task a moment later. In a first burst, Ray kept starting workers: 3,000 short tasks on 4
        CPUs started 14, of which 8 never ran a task, and ran at 109-126 tasks/s, against
        242-280 with the pool warmed so. Where workers are idle already, Ray uses them."""
        strategy = NodeAffinitySchedulingStrategy(self._node_id, soft=True)
        warm = remote_warm.options(name="raylane:warm-up", scheduling_strategy=strategy)
        self._warm_left = count
        me = ray.get_runtime_context().current_actor
        refs = [warm.remote(me) for _ in range(count)]
        try:
            pids = await asyncio.wait_for(asyncio.gather(*refs), _WARM_TIMEOUT_S)
        except Exception as e:  # only a head start is lost: Ray starts workers on demand
            log.warning("warming %d Ray workers failed: %r", count, e)
            return
        finally:
            self._warm_all_begun.set()  # none waits on after the warm-up ends, however it ended
        self.stats["workers_warmed"] += len(set(pids))

    async def warm_begun(self) -> None:
        """Called by each warm-up task as it begins; returns once all of them have begun. A task
        that returned at once would leave its worker free for the next one, and Ray would start
        fewer processes than asked: it reuses a worker its owner holds before it starts one."""
        self._warm_left -= 1
        if self._warm_left <= 0:
            self._warm_all_begun.set()
        await self._warm_all_begun.wait()

    async def node(self) -> str:
        """The Ray node this executor runs on."""
        return self._node_id

    async def lease_remaining(self) -> float:
        """Seconds this incarnation's lease still holds (negative once lapsed); the workers running
        its tasks ask, and end themselves before it can lapse anywhere else."""
        return self._lease.remaining()

    async def lease_held(self) -> tuple[float, float]:
        """Seconds this incarnation's lease still holds, and seconds it has held without a break:
        a worker that could not ask for a while (its task held the GIL) learns from the second
        whether the lease held through that time."""
        return self._lease.remaining(), self._lease.held_for()

    async def sweep(self, limit: int = 500) -> int:
        """Recover lost tasks now (see ``recovery.Recovery.sweep``); returns how many."""
        return await self._recovery.sweep(limit)

    async def start_many(self, messages: list[bytes], read_at: float | None = None) -> list[HandOffResult]:
        """Claim and launch tasks (their queue messages, JSON, read from the queue at ``read_at``),
        each once a run slot is free (and a retry once its backoff is over); returns once every
        RUNNING write is settled, one ``HandOffResult`` per message."""
        handed = time.time()
        await self.ensure_running()
        if self._lease.remaining() < FENCE_MARGIN_S + HEARTBEAT_EVERY_S:
            # Nothing is claimed under a lease about to lapse: its workers would end at once.
            await self._lease.renew()
        msgs = [TaskMessage.model_validate_json(m) for m in messages]
        for m in msgs:
            self._arrivals[(m.id, m.attempt)] = (read_at, handed)
        while len(self._arrivals) > _LAUNCHED_KEPT:
            self._arrivals.pop(next(iter(self._arrivals)))
        purged = await self._purged(msgs)
        if not purged:
            return await self._start(msgs)
        rest = [i for i in range(len(msgs)) if i not in purged]
        out = [
            HandOffResult(HandOff.REFUSED, "the task has no record (purged after the retention, or never recorded)")
        ] * len(msgs)
        for i, outcome in zip(rest, await self._start([msgs[i] for i in rest]) if rest else [], strict=True):
            out[i] = outcome
        return out

    async def _purged(self, msgs: list[TaskMessage]) -> set[int]:
        """Which of ``msgs`` belong to tasks that have no record. A claim is a versioned write that
        needs no record before it, so it would make such a task anew and run it: one purged after
        the retention, whose message is read again once its offsets expired. Only a message older
        than ``_OLD_MESSAGE_S`` (or the retention, if shorter) can be one, and only its record is
        read, off the hot path."""
        age = min(_OLD_MESSAGE_S, self.config.retention_s or _OLD_MESSAGE_S)
        cutoff = utcnow() - timedelta(seconds=age)
        old = [i for i, m in enumerate(msgs) if m.created_at < cutoff]
        if not old:
            return set()
        found = await asyncio.to_thread(self._store.get_many, [msgs[i].id for i in old])
        return {i for i in old if msgs[i].id not in found}

    async def _start(self, msgs: list[TaskMessage]) -> list[HandOffResult]:
        now = utcnow()
        expired = [i for i, m in enumerate(msgs) if m.expires_at is not None and m.expires_at <= now]
        if expired:
            return await self._start_unexpired(msgs, expired)
        later = [i for i, m in enumerate(msgs) if m.not_before and m.not_before > now]
        if not later:
            return await self._start_ready(msgs)
        waiting = set(later)
        ready = [i for i in range(len(msgs)) if i not in waiting]
        results = await asyncio.gather(
            self._start_ready([msgs[i] for i in ready]), *[self._start_after_backoff(msgs[i]) for i in later]
        )
        out: list[HandOffResult] = [HandOffResult(HandOff.SKIPPED)] * len(msgs)
        for i, outcome in zip(ready, results[0], strict=True):
            out[i] = outcome
        for i, [outcome] in zip(later, results[1:], strict=True):
            out[i] = outcome
        return out

    async def _start_unexpired(self, msgs: list[TaskMessage], expired: list[int]) -> list[HandOffResult]:
        """Cancel the tasks not started by their ``expires_at`` (reason "expired"), start the rest."""
        ends: list[TaskRecord | PackedRecord] = [
            TaskRecord.pending(msgs[i]).moved_to(
                TaskState.CANCELLED, error_type="Expired", error=f"expired: not started by {msgs[i].expires_at}"
            )
            for i in expired
        ]
        await self._finisher.record_many(ends)
        self.stats["expired"] += len(ends)
        gone = set(expired)
        rest = [i for i in range(len(msgs)) if i not in gone]
        out = [HandOffResult(HandOff.SKIPPED)] * len(msgs)
        if rest:
            started = await self._start([msgs[i] for i in rest])
            for i, outcome in zip(rest, started, strict=True):
                out[i] = outcome
        return out

    async def _start_after_backoff(self, msg: TaskMessage) -> list[HandOffResult]:
        # The event loop sleeps on the monotonic clock, the slot is a wall-clock time, and the
        # record's started_at is one too: look at the wall clock again until the slot has come.
        while msg.not_before is not None and (left := (msg.not_before - utcnow()).total_seconds()) > 0:
            await asyncio.sleep(left)
        return await self._start_ready([msg])

    async def _start_ready(self, msgs: list[TaskMessage]) -> list[HandOffResult]:
        outcomes: list[HandOffResult] = [HandOffResult(HandOff.SKIPPED)] * len(msgs)
        # Highest priority first (a stable sort: arrival order within a priority).
        units = sorted(plan(msgs, self._cpus), key=lambda unit: -msgs[unit[0]].priority)
        k = 0
        while k < len(units):
            # Wait for one free slot, then take every other slot free right now: one claim for them all.
            await self._slots.acquire(msgs[units[k][0]].priority)
            batch = [units[k]]
            k += 1
            while k < len(units) and not self._slots.locked():
                await self._slots.acquire(msgs[units[k][0]].priority)
                batch.append(units[k])
                k += 1
            claimed = await self._claim_and_launch([[msgs[i] for i in idx] for idx in batch])
            for idx, outs in zip(batch, claimed, strict=True):
                for i, outcome in zip(idx, outs, strict=True):
                    outcomes[i] = outcome
        return outcomes

    async def _own_claims(self, records: list[PackedRecord], claims: list[WriteOutcome]) -> list[WriteOutcome]:
        """``claims`` (the keepers' answers to ``records``), with the rejected ones that are this
        incarnation's own earlier claims counted as accepted."""
        rejected = [r for r, c in zip(records, claims, strict=True) if not c.accepted]
        if not rejected:
            return claims
        # A gated launch of the same attempt still in flight here may be the one whose claim is
        # stored: its answer comes first, so the attempt is never started twice.
        for r in rejected:
            pending = self._gated.get((r.id, r.attempt))
            if pending is not None:
                await asyncio.shield(pending)
        # A rejected claim normally means cancelled or taken; but if a retried hand-off finds
        # this incarnation's own earlier claim (its answer was lost), the task is ours to run.
        stored = await asyncio.to_thread(self._store.get_many, [r.id for r in rejected])
        return [
            c if c.accepted or not own_claim(stored.get(r.id), r) else c._replace(accepted=True)
            for r, c in zip(records, claims, strict=True)
        ]

    def _started_here(self, msg: TaskMessage) -> bool:
        """Whether this incarnation started ``msg``'s attempt already. The launches it remembers
        (``_launched``, bounded) cover an attempt until its end is written; one that runs past
        them is found among those running here. Its message may be handed over again long after
        (a reader restarted from an offset held back behind it), and its stored claim, this
        incarnation's own, would make it look new."""
        return (msg.id, msg.attempt) in self._launched or self._runs.holds(msg.id, msg.attempt)

    def _holds(self, task_id: str, attempt: int) -> bool:
        """Whether this incarnation runs ``attempt`` of ``task_id``, started it, or is still deciding
        on its claim: a claim of its own it holds in no way was left behind."""
        key = (task_id, attempt)
        return key in self._claiming or key in self._gated or key in self._launched or self._runs.holds(*key)

    def _mark_launched(self, msg: TaskMessage) -> None:
        self._launched[(msg.id, msg.attempt)] = True
        while len(self._launched) > _LAUNCHED_KEPT:
            self._launched.pop(next(iter(self._launched)))
        self.stats["started"] += 1

    async def _claim_and_launch(self, units: list[list[TaskMessage]]) -> list[list[HandOffResult]]:
        """Claim the tasks of ``units`` and start the claimed ones. Each unit holds one run slot
        (taken by the caller): a task alone, or several that share one Ray task.

        A task alone starts its Ray task at once, beside its claim, and its worker runs the
        function only once the claim is accepted (the gate); the Ray task's start and the claim's
        write then take the time of the longer of the two, not of both."""
        keys = Counter((m.id, m.attempt) for unit in units for m in unit)
        self._claiming.update(keys)
        try:
            return await self._claim_and_launch_units(units)
        finally:
            self._claiming -= keys  # keeps only the keys still counted

    async def _claim_and_launch_units(self, units: list[list[TaskMessage]]) -> list[list[HandOffResult]]:
        records = [[self._running(m) for m in unit] for unit in units]
        packed = [claim for unit in records for claim in _claims(unit)]
        gates, answers = self._keepers.claim_gated(packed)
        starts = [0, *itertools.accumulate(len(unit) for unit in units)]
        unit_gates = [gates[i] for i in starts[:-1]]
        decisions = self._launch_ahead(units, records, unit_gates)
        try:
            raw = await answers
        except Exception:
            # One keeper's call failed; another's may have accepted claims whose workers now run.
            ran = {u for u in decisions if await _accepted(unit_gates[u])}
            self._ran_ahead(units, decisions, ran)
            self._give_back(len(units), decisions, {u: records[u][0].with_hops(claimed=time.time()) for u in ran})
            raise
        claimed = time.time()
        # A gated worker runs the function exactly when the keeper accepted its claim: those count
        # as launched before anything else is judged.
        ran = {u for u in decisions if raw[starts[u]].accepted}
        self._ran_ahead(units, decisions, ran)
        try:
            claims = iter(await self._own_claims(packed, raw))
        except BaseException:
            # A gated unit whose worker runs is this executor's; the others are not.
            self._give_back(len(units), decisions, {u: records[u][0].with_hops(claimed=claimed) for u in ran})
            raise
        out = []
        for u, (unit, unit_records) in enumerate(zip(units, records, strict=True)):
            outcomes, launch = self._settle_unit(unit, unit_records, claims, u in ran, claimed)
            out.append(outcomes)
            if u in decisions:
                decisions[u].set_result(launch[0][1] if launch else None)
            elif launch:
                self._runs.launch(launch)
            else:
                self._slots.release()
        return out

    def _launch_ahead(
        self, units: list[list[TaskMessage]], records: list[list[TaskRecord]], gates: list[Gate]
    ) -> dict[int, asyncio.Future]:
        """Start the Ray task of each unit of one task not yet launched here (nor being launched),
        behind the gate of its claim; the executor's decision on each, by unit."""
        decisions: dict[int, asyncio.Future] = {}
        for u, unit in enumerate(units):
            key = (unit[0].id, unit[0].attempt)
            if len(unit) == 1 and not self._started_here(unit[0]) and key not in self._gated:
                self._gated[key] = asyncio.get_running_loop().create_future()
                decisions[u] = self._runs.launch_gated(unit[0], records[u][0], gates[u], self._gated[key])
        self.stats["ahead"] += len(decisions)
        return decisions

    def _ran_ahead(self, units: list[list[TaskMessage]], decisions: dict[int, asyncio.Future], ran: set[int]) -> None:
        """The claims of the units launched ahead are answered: those in ``ran`` run in their workers."""
        for u in decisions:
            msg = units[u][0]
            if u in ran:
                self._mark_launched(msg)
            else:
                self.stats["held_back"] += 1
            self._gated.pop((msg.id, msg.attempt)).set_result(u in ran)

    def _give_back(self, count: int, decisions: dict[int, asyncio.Future], ours: dict[int, TaskRecord]) -> None:
        """After a failed claim of ``count`` units: free the slots of those not launched ahead, and
        decide those that were (``ours``: the ones this executor runs, by unit)."""
        for u in range(count):
            if u in decisions:
                decisions[u].set_result(ours.get(u))  # a slot launched ahead is freed when its Ray task ends
            else:
                self._slots.release()

    def _settle_unit(
        self,
        unit: list[TaskMessage],
        records: list[TaskRecord],
        claims: Iterator[WriteOutcome],
        running_ahead: bool,
        claimed: float,
    ) -> tuple[list[HandOffResult], list[tuple[TaskMessage, TaskRecord]]]:
        """The outcome of each task of ``unit`` from its claim, and those to launch with their
        RUNNING records. ``running_ahead``: the unit's Ray task started ahead of its claim, which
        the keeper accepted, so its worker runs it."""
        outcomes: list[HandOffResult] = []
        launch: list[tuple[TaskMessage, TaskRecord]] = []
        for msg, running in zip(unit, records, strict=True):
            claim = next(claims)
            if running_ahead:
                # A kill noted before this launch was for an earlier run: this one is running.
                self._runs.kill_requested(msg.id)
                outcome = HandOffResult(HandOff.STARTED)
                launch.append((msg, running.with_hops(claimed=claimed)))
            else:
                outcome = self._judge(msg, claim)
                if outcome.outcome is HandOff.STARTED and not self._started_here(msg):
                    self._mark_launched(msg)
                    launch.append((msg, running.with_hops(claimed=claimed)))
            outcomes.append(outcome)
        return outcomes, launch

    def _running(self, msg: TaskMessage) -> TaskRecord:
        """The RUNNING record that claims ``msg``'s task for this executor, with its hops so far."""
        read_at, handed = self._arrivals.pop((msg.id, msg.attempt), (None, None))
        pending = TaskRecord.pending(msg)
        return pending.moved_to(
            TaskState.RUNNING,
            worker=self._worker,
            lease_owner=self._lease.incarnation,
            hops=pending.hops_with(read=read_at, handed=handed),
        )

    def _judge(self, msg: TaskMessage, claim: WriteOutcome) -> HandOffResult:
        if self._started_here(msg):
            return HandOffResult(HandOff.STARTED)  # a repeated hand-off of a task this incarnation already runs
        if not claim.accepted and claim.reason != "conflict":
            if claim.reason == UNRECORDED:
                self._recovery.refused_unrecorded(msg.id, msg.attempt)
            return HandOffResult(HandOff.REFUSED, claim.reason or "unknown error")
        # A kill that arrived before the claim's answer means a cancel was written after it.
        if not claim.accepted or self._runs.kill_requested(msg.id):
            self.stats["skipped"] += 1
            return HandOffResult(HandOff.SKIPPED)
        return HandOffResult(HandOff.STARTED)

    async def group_signal(self, key: str) -> list[str]:
        """Resolves once members of the group ``key`` are cancelled, with their ids (or,
        with none, once the group is over); the group's worker then starts no further member."""
        return await self._runs.group_signal(key)

    async def group_report(self, key: str, ends: list[MemberEnd]) -> None:
        """From the worker of the group ``key``: members that ended while a long one runs."""
        self._runs.group_report(key, ends)

    async def group_advance(self, key: str, ends: list[MemberEnd], upto: int) -> int:
        """From the worker of the group ``key``: members that ended, and a request for leave
        to start its members before index ``upto`` (see ``grouping``). Returns the index before
        which members may start (short of ``upto`` once members were moved on; 0: start no more)."""
        return self._runs.group_advance(key, ends, upto)

    async def group_began(self, key: str, member: str, began: float) -> None:
        """From the worker of the group ``key``: timed member ``member`` began at ``began``
        (epoch seconds) and still runs; its keeper starts its clock from then."""
        self._runs.group_began(key, member, began)

    async def group_long(self, key: str, member: str, started: int, blocked: bool = False) -> None:
        """From the worker of the group ``key``: member ``member`` has run long, and the
        worker, having started ``started`` members, starts no more without asking; those after
        it move to other Ray tasks, on the member's CPU if it is ``blocked`` in a call (see
        ``grouping``)."""
        self._runs.group_long(key, member, started, blocked)

    async def group_busy(self, key: str, member: str) -> None:
        """From the worker of the group ``key``: member ``member``, said blocked, uses its CPU
        again, which this executor takes back (see ``grouping``)."""
        self._runs.group_busy(key, member)

    async def progress(self, task_id: str, attempt: int, fraction: float, message: str | None, at: float) -> None:
        """From the worker of ``task_id``: how far its attempt ``attempt`` has got (see
        ``raylane.progress``). Kept for the store's next bulk write, if that attempt runs here."""
        if self._runs.running_attempt(task_id) != attempt:
            return  # ended meanwhile, or not this executor's: nothing to show
        self._said[task_id] = Progress(task_id, attempt, fraction, message, at)
        if self._saying is None or self._saying.done():
            self._saying = asyncio.create_task(self._write_progress())

    async def _write_progress(self) -> None:
        # One bulk write for every task that said something in the last FLUSH_EVERY_S.
        while self._said:
            await asyncio.sleep(FLUSH_EVERY_S)
            said, self._said = list(self._said.values()), {}
            try:
                await asyncio.to_thread(self._store.put_progress, said)
            except Exception as e:  # progress is worth no retry: the next report says more
                log.warning("keeping the progress of %d task(s) failed: %r", len(said), e)

    async def group_running(self, key: str, running: str | None, interrupted: bool, started: int | None = None) -> None:
        """From the worker of the group ``key``: the member it was running when the signal
        came (None: between members), whether it interrupted it, and how many it had started."""
        self._runs.group_running(key, running, interrupted, started)

    async def kill(self, task_id: str, attempt: int | None = None) -> bool:
        """Stop the Ray task of ``task_id`` (its terminal state, or a newer attempt, is already
        written): interrupt it, and kill its worker with ``ray.cancel(force=True)`` if it still runs
        after ``KILL_GRACE_S``. With ``attempt``, only that attempt is stopped. True if it was running."""
        self.stats["kill_requests"] += 1
        return self._runs.kill(task_id, attempt)

    async def ends_held(self, attempts: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Those of ``attempts`` (task id, attempt) whose end this executor has from its worker
        and has not yet had written (see ``Finisher.held``): a keeper asks before it writes
        TIMED_OUT, since such an end came first."""
        return self._finisher.held(attempts)

    async def running_of(self, task_ids: list[str]) -> list[str]:
        """Those of ``task_ids`` that run here now (alone, in a group, or claimed between two Ray
        tasks): a task killed here is off this list once its Ray task has ended."""
        return self._runs.running_of(task_ids)

    async def get_stats(self) -> dict:
        """Counters: started, skipped (claim rejected), succeeded, failed, discarded results, killed,
        claims and ends sent to keepers by socket (``written_by_socket``); and now: tasks running,
        the Ray tasks they run in (at most ``max_running``), and the keepers reached by socket."""
        return dict(
            self.stats,
            running=self._runs.running_now(),
            ray_tasks=self._runs.ray_tasks_now(),
            incarnation=self._lease.incarnation,
            lease_left_s=round(self._lease.remaining(), 3),
            lease_age_s=round(LEASE_TTL_S - self._lease.remaining(), 3),  # since its last renewal began
            max_running=self._max_running,
            written_by_socket=self._keepers.sent_by_socket,
            keeper_sockets=self._keepers.sockets,
        )
