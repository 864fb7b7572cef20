"""The Ray tasks an executor runs: launching them (alone or in groups), collecting their ends,
and stopping them on a cancel or a timeout.

Each launched unit holds one of the executor's run slots until it ends: a task alone, or a
group of tasks that share one Ray task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raylane.actors.channel import ChannelAddress
from raylane.actors.common import Background, PrioritySlots
from raylane.actors.fencing import FENCE_MARGIN_S
from raylane.actors.finishing import Finisher
from raylane.actors.grouping import (
    GROUP_MAX,
    LOANS_PER_CPU,
    Group,
    MemberTimes,
    chunks,
    first_grant,
    group_size,
    move_after,
    started_when_dead,
    wait_allowance,
)
from raylane.actors.keepers import Gate, Keepers
from raylane.actors.recovery import OwnLease
from raylane.actors.worker import NOT_CLAIMED, MemberEnd, remote_group, remote_invoke
from raylane.limits import Limits, clip_text
from raylane.models import TaskMessage, TaskRecord
from raylane.protocol import Reply
from raylane.states import TaskState
from raylane.text import without_colours

log = logging.getLogger("raylane.executor")

KILL_GRACE_S = 1.0  # a cancelled or timed-out task that ignores the interrupt this long is killed
_KILLS_KEPT = 10_000


class Runs:
    """The lone Ray tasks and the groups of one executor, by task id."""

    def __init__(
        self,
        *,
        actor,
        node_id: str,
        lease: OwnLease,
        limits: Limits,
        slots: PrioritySlots,
        cpus: int,
        node_cpus: int,
        finisher: Finisher,
        keepers: Keepers,
        stats: Counter,
        background: Background,
    ):
        self._actor = actor  # the executor's own handle, which the workers call back
        self._node_id = node_id
        self._lease = lease
        self._limits = limits
        self._slots = slots
        self._cpus = cpus
        self._finisher = finisher
        self._keepers = keepers
        self._stats = stats
        self._background = background
        self._refs: dict[str, ray.ObjectRef] = {}
        self._attempt_of: dict[str, int] = {}  # task id -> attempt of the lone Ray task running it
        self._groups: dict[str, Group] = {}  # task id -> the group running it
        # Gated attempts whose Ray tasks run, each with the future its worker's ``task_end``
        # resolves: whichever comes first, that or the Ray task's return, settles the attempt.
        self._told: dict[tuple[str, int], asyncio.Future] = {}
        self._group_by_key: dict[str, Group] = {}  # Group.key -> that group, while it runs
        # Members claimed here that wait for a run slot between two Ray tasks (their group was
        # stopped, or they were moved out of it): task id -> attempt. A kill for one is noted,
        # and it is not started.
        self._between: dict[str, int] = {}
        self._kill_requested: dict[str, bool] = {}  # insertion-ordered, bounded
        # (id, attempt) of lone Ray tasks started ahead of their claim whose executor has not yet
        # judged the claim: their workers hold the function back, and they run only if judged ours.
        self._undecided: set[tuple[str, int]] = set()
        # (id, attempt) of those Ray tasks -> whether their claim was accepted, as the executor
        # judges it, for workers whose claim went by a keeper's channel (they ask for it; see
        # ``worker.invoke``). Kept until the Ray task ends.
        self._answers: dict[tuple[str, int], asyncio.Future] = {}
        self.channel: ChannelAddress | None = None  # the executor's socket, once it listens
        self._member_times = MemberTimes()  # sizes each group's first grant
        self._loans_max = LOANS_PER_CPU * node_cpus
        self._on_loan = 0  # groups running here on CPUs lent by blocked members (see ``grouping``)
        # Groups whose blocked member lends a CPU that no group uses now, by key: the next group
        # launched runs on it. A lender leaves it when its loan is taken back (``_recall``).
        self._idle_lenders: dict[str, Group] = {}

    def running_now(self) -> int:
        """Tasks running here: lone Ray tasks, tasks in groups, and claimed tasks waiting for a
        run slot between two Ray tasks."""
        return len(self._refs) + len(self._groups) + len(self._between)

    def running_of(self, task_ids: list[str]) -> list[str]:
        """Those of ``task_ids`` running here (as ``running_now`` counts them)."""
        return [t for t in task_ids if t in self._refs or t in self._groups or t in self._between]

    def ray_tasks_now(self) -> int:
        """Ray tasks running here, each holding one run slot: lone tasks, and groups."""
        return len(self._refs) + len({id(g) for g in self._groups.values()})

    def kill_requested(self, task_id: str) -> bool:
        """Whether a kill of ``task_id`` came before it was launched (and forget it)."""
        return self._kill_requested.pop(task_id, None) is not None

    def _lease_for(self, what: str) -> tuple:
        return (self._actor, self._lease.until, self._node_id, what)

    # --- launching ------------------------------------------------------------------------------

    def launch(
        self, members: list[tuple[TaskMessage, TaskRecord]], grouped: bool = False, lender: Group | None = None
    ) -> None:
        """Start claimed tasks in one run slot (already taken): alone, or as a group (``grouped``:
        even one task, whose clock then starts when its worker says it began); with ``lender``, as
        a group on the CPU of that group's blocked member."""
        if len(members) == 1 and not grouped:
            self._launch_one(*members[0])
        else:
            group = Group(members)
            lender = lender or self._idle_lender()
            if lender is not None:
                group.on_loan = True
                group.lender = lender
                lender.borrowers.append(group)
                self._on_loan += 1
                self._stats["lent"] += 1
            self._group_by_key[group.key] = group
            for msg, _ in members:  # registered at once, so a kill arriving before it starts finds it
                self._groups[msg.id] = group
            self._background.spawn(self._run_group(group))

    def launch_gated(self, msg: TaskMessage, running: TaskRecord, gate: Gate, answer: asyncio.Future) -> asyncio.Future:
        """Start ``msg``'s task alone in a run slot (already taken) while its claim is in flight: the
        worker runs the function only once the claim is accepted (``gate``, or ``answer``, which
        the executor resolves with whether it was). Returns the future the executor resolves once
        it has judged the claim: with the RUNNING record if the task is this executor's to run,
        with None if not."""
        decided: asyncio.Future = asyncio.get_running_loop().create_future()
        key = (msg.id, msg.attempt)
        self._undecided.add(key)
        decided.add_done_callback(lambda _: self._undecided.discard(key))
        self._answers[key] = answer
        ref = self._submit(msg, gate)
        if isinstance(ref, Exception):
            self._background.spawn(self._fail_gated(key, ref, decided))
        else:
            self._background.spawn(self._finish_gated(msg, ref, decided))
        return decided

    async def claim_answer(self, task_id: str, attempt: int) -> bool:
        """Whether the claim of ``task_id``'s attempt, started ahead of it, was accepted: what its
        worker waits for. False for an attempt not started so here (its worker, if any, does
        not run the function, and the executor decides what follows)."""
        answer = self._answers.get((task_id, attempt))
        return answer is not None and bool(await asyncio.shield(answer))

    async def _fail_gated(self, key: tuple[str, int], error: Exception, decided: asyncio.Future) -> None:
        # Ray refused the task: if the claim is ours, the task fails as a refused launch does.
        try:
            claimed = await decided
            if claimed is not None:
                await self._record_launch_failure(claimed, error)
        finally:
            self._answers.pop(key, None)
            self._slots.release()

    async def task_end(self, task_id: str, attempt: int, reply: Reply) -> None:
        """How a gated attempt running here ended, as its worker tells it the moment it is known;
        an attempt not awaited here (settled already, or not this incarnation's) is ignored."""
        told = self._told.get((task_id, attempt))
        if told is not None and not told.done():
            told.set_result(reply)

    async def _first_reply(self, msg: TaskMessage, ref: ray.ObjectRef) -> Reply:
        """The reply of a gated attempt: its worker's ``task_end``, or its Ray task's return,
        whichever comes first. The return is still awaited, in the background, for its bookkeeping."""
        key = (msg.id, msg.attempt)
        told = self._told[key] = asyncio.get_running_loop().create_future()
        returned = self._background.spawn(self._reply(msg.id, ref))
        try:
            await asyncio.wait({told, returned}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._told.pop(key, None)
        if told.done():
            return told.result()
        told.cancel()
        return returned.result()

    async def _finish_gated(self, msg: TaskMessage, ref: ray.ObjectRef, decided: asyncio.Future) -> None:
        reply = await self._first_reply(msg, ref)
        self._answers.pop((msg.id, msg.attempt), None)  # its worker asked already, if it ever will
        claimed = await decided
        if claimed is None:  # not this executor's: its worker did not start the function
            self._slots.release()
            return
        if reply == NOT_CLAIMED:
            # Judged ours after all (an earlier claim of this executor whose answer was lost):
            # it starts now, in the same slot.
            self._launch_one(msg, claimed)
            return
        await self._settle(claimed, reply)

    def _submit(self, msg: TaskMessage, gate: Gate | None = None) -> ray.ObjectRef | Exception:
        """Start the Ray task of ``msg`` and track it; the error if Ray refused it."""
        r = msg.resources
        opts: dict[str, Any] = {"name": f"raylane:{msg.name}:{msg.id}", "num_cpus": r.num_cpus, "num_gpus": r.num_gpus}
        if r.memory_mb:
            opts["memory"] = r.memory_mb * 1024 * 1024
        try:
            lease = self._lease_for(f"attempt {msg.attempt} of task {msg.id}")
            ref = remote_invoke.options(**opts).remote(
                (
                    msg.name,
                    msg.args,
                    msg.kwargs,
                    self._limits,
                    lease,
                    msg.soft_timeout_s,
                    (self._actor, msg.id, msg.attempt),
                    gate,
                    self.channel if gate is not None else None,
                )
            )
        except Exception as e:  # e.g. resources Ray refuses
            return e
        self._refs[msg.id] = ref
        self._attempt_of[msg.id] = msg.attempt
        return ref

    def _launch_one(self, msg: TaskMessage, running: TaskRecord) -> None:
        ref = self._submit(msg)
        if isinstance(ref, Exception):  # the claimed task fails, it is not left RUNNING
            self._background.spawn(self._fail_launch(running, ref))
            return
        self._background.spawn(self._finish(running, ref))

    async def _fail_launch(self, running: TaskRecord, error: Exception) -> None:
        try:
            await self._record_launch_failure(running, error)
        finally:
            self._slots.release()

    async def _record_launch_failure(self, running: TaskRecord, error: Exception) -> None:
        failed = running.moved_to(
            TaskState.FAILED, error_type=type(error).__name__, error=f"Ray refused to start the task: {error}"
        )
        outcome = await self._finisher.record(failed)
        self._stats["failed" if outcome.accepted else "discarded_results"] += 1

    async def _reply(self, task_id: str, ref: ray.ObjectRef) -> Reply:
        """The reply of the Ray task ``ref`` of ``task_id``, or the failure it ended with."""
        try:
            reply = await ref
        except (RayError, asyncio.CancelledError) as e:
            reply = self._lost(e)
        finally:
            # Only if still this run's: one settled by its worker's word may have been tried
            # again, and that next attempt launched here, before this return came.
            if self._refs.get(task_id) is ref:
                del self._refs[task_id]
                self._attempt_of.pop(task_id, None)
        return reply

    def _lost(self, e: BaseException) -> Reply:
        """The reply of a run whose worker ended without one. It was killed by a cancel or timeout
        (whose terminal write already won), or it died: with this incarnation's lease lapsed, it
        ended itself (fenced), and is lost as a sweep elsewhere would record it."""
        said = clip_text(without_colours(str(e)))
        if time.monotonic() >= self._lease.until - FENCE_MARGIN_S:
            return Reply.lost("WorkerLost", f"the lease of this executor lapsed and the worker ended itself: {said}")
        return Reply.lost(type(e).__name__, f"Ray task ended abnormally: {said}")

    async def _finish(self, running: TaskRecord, ref: ray.ObjectRef) -> None:
        await self._settle(running, await self._reply(running.id, ref))

    async def _settle(self, running: TaskRecord, reply: Reply) -> None:
        """Record the end of a lone task from its reply, then free its run slot."""
        try:
            await self._finisher.settle_many([(running, reply)])
        finally:
            self._slots.release()  # a grouped task's slot is its group's, freed when the group ends

    # --- groups ---------------------------------------------------------------------------------

    async def _run_group(self, group: Group) -> None:
        msgs = [m for m, _ in group.members]
        first = msgs[0]
        self._stats["groups"] += 1
        self._stats["grouped"] += len(msgs)
        items = [(m.id, m.attempt, m.name, m.args, m.kwargs, m.timeout_s) for m in msgs]
        opts: dict[str, Any] = {"num_cpus": first.resources.num_cpus}
        if group.on_loan:  # the CPU is a blocked member's, on this node
            opts = {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(self._node_id, soft=True)}
        try:
            lease = self._lease_for(f"a group of {len(msgs)} tasks from {first.id}")
            mean_s = self._member_times.mean(first.name)
            name = f"raylane:{first.name}:group-of-{len(msgs)}:{first.id}"
            group.gen = remote_group.options(name=name, **opts).remote(
                (
                    items,
                    self._actor,
                    group.key,
                    self._limits,
                    lease,
                    first_grant(mean_s),
                    self.channel,
                    move_after(mean_s),
                )
            )
        except Exception as e:  # Ray refused to start it: each member fails as a lone launch would
            self._group_over(group)
            self._group_by_key.pop(group.key, None)
            for m in msgs:
                self._groups.pop(m.id, None)
            for _, running in group.members:
                self._background.spawn(self._record_launch_failure(running, e))
            self._slots.release()
            return
        crash: BaseException | None = None
        try:
            async for ref in group.gen:
                self._stats["group_reports"] += 1
                self._take_report(group, await ref)
        except (Exception, asyncio.CancelledError) as e:
            # The worker died or was killed (or its report could not be read): the member it ran
            # ends as a lone task would, the rest run again.
            crash = e
            if not isinstance(e, asyncio.CancelledError):
                # Read while the members are still held here: a recovery sweep meanwhile must not
                # close the claims of those that never started, which run again.
                group.note_started(await started_when_dead(group.key))
        finally:
            group.signal.set()  # lets the pending group_signal call return
            self._group_over(group)
            self._group_by_key.pop(group.key, None)
            for m in msgs:
                if self._groups.get(m.id) is group:  # a member moved on belongs to its new group
                    del self._groups[m.id]
            self._slots.release()
            self._loan_over(group)
        await self._after_group(group, crash)

    def _loan_over(self, group: Group) -> None:
        """``group``, which ran on a loan, is over: while its lender's member is still blocked, the
        CPU goes on to the members of a group that waits for a CPU of its own."""
        lender, group.lender = group.lender, None
        if lender is not None and group in lender.borrowers:
            lender.borrowers.remove(group)
            if lender.lending is not None and not lender.borrowers:
                self._lend_on(lender)

    def _lend_on(self, lender: Group) -> None:
        """Give the CPU ``lender``'s blocked member lends, which no group uses, to the members of
        the oldest group whose worker has not asked for leave yet (its Ray task waits for a CPU,
        most likely behind blocked members): they move to a group on the loan, and the Ray task
        they leave, once it starts, gets leave for none and ends. Without such a group, the
        next group launched here takes the loan."""
        for group in self._group_by_key.values():
            if (
                group is not lender
                and not group.on_loan
                and group.granted == 0
                and group.kept > 0
                and not group.reported
                and not group.signal.is_set()
            ):
                self._stats["loans_passed_on"] += 1
                self._move_on(group, 0, lender=lender)
                return
        self._idle_lenders[lender.key] = lender

    def _idle_lender(self) -> Group | None:
        """A group whose blocked member lends a CPU no group uses, if this executor may lend one
        more; None otherwise."""
        if self._on_loan >= self._loans_max or not self._idle_lenders:
            return None
        return self._idle_lenders.popitem()[1]

    def _group_over(self, group: Group) -> None:
        """A group's Ray task ended (or never started): the CPU it lent is taken back, the one it
        borrowed returned."""
        self._recall(group)
        if group.on_loan:
            group.on_loan = False
            self._on_loan -= 1

    async def _after_group(self, group: Group, crash: BaseException | None) -> None:
        """Settle the members a group did not report. If its worker died, those it had leave to
        start, and had started by its count where this node holds it (read in ``_run_group``),
        may have run: each ends as a lone task whose worker died would. The rest never started
        and run again, still claimed here, unless a cancel came for them meanwhile."""
        unknown = set(group.possibly_started()) if crash is not None else set()
        again = []
        for msg, running in group.members:
            if msg.id in group.ran or msg.id in group.moved:
                continue
            if msg.id in unknown:
                assert crash is not None
                self._background.spawn(self._finisher.settle_many([(running, self._lost(crash))]))
            elif msg.id in group.cancelled:
                self._stats["skipped"] += 1  # cancelled before it started; its CANCELLED record is written
            else:
                again.append((msg, running))
        await self._start_again(again)

    async def _start_again(
        self, members: list[tuple[TaskMessage, TaskRecord]], moved: bool = False, lender: Group | None = None
    ) -> None:
        """Start claimed members that never started in new Ray tasks, each unit once it has a run
        slot; those a kill came for meanwhile (a cancel or timeout already written) are not.

        Members of a stopped group start with their clocks restarted. Members ``moved`` from a
        group that still runs keep the deadline their claim gave them, which allows for the
        wait behind every sibling, and run as groups (even alone), so that each one's clock
        starts when its worker says it began, however long the new Ray task waits for a CPU.
        With ``lender``, the first of those groups takes as many as a group may and runs on the
        CPU of ``lender``'s blocked member, if it still lends it and this executor may lend one
        more by then."""
        for msg, _ in members:
            self._between[msg.id] = msg.attempt
        units = chunks(members, group_size(len(members), self._cpus))
        if lender is not None:  # one CPU waits for them, the blocked member's: as many as a group takes
            rest = members[GROUP_MAX:]
            units = [members[:GROUP_MAX], *chunks(rest, group_size(len(rest), self._cpus))]
        for chunk in units:
            await self._slots.acquire(chunk[0][0].priority)
            for msg, _ in chunk:
                self._between.pop(msg.id, None)
            kept = [(msg, running) for msg, running in chunk if not self.kill_requested(msg.id)]
            self._stats["skipped"] += len(chunk) - len(kept)
            chunk = kept
            if not chunk:
                self._slots.release()
                continue
            if moved:
                lent = lender if lender is not None and lender.lending and self._on_loan < self._loans_max else None
                if lender is not None and lender.lending and lent is None:
                    self._idle_lenders[lender.key] = lender  # no loan free now: a later group takes it
                self.launch(chunk, grouped=True, lender=lent)
                lender = None
                continue
            self._stats["restarted_unstarted"] += len(chunk)
            self._restart_clocks(chunk)
            self.launch(chunk)

    def _restart_clocks(self, members: list[tuple[TaskMessage, TaskRecord]]) -> None:
        """Members claimed for one group that start again in another (or alone) from now: their
        keepers' deadlines count from now, with the wait their new places allow."""
        timeouts = [m.timeout_s for m, _ in members]
        if any(t is None for t in timeouts):
            return
        now = time.time()
        for i, (msg, _) in enumerate(members):
            wait_s = wait_allowance(timeouts, i) if len(members) > 1 else 0.0
            self._keepers.of(msg.id).began.remote(msg.id, msg.attempt, now, wait_s, restarted=True)

    def holds(self, task_id: str, attempt: int) -> bool:
        """Whether attempt ``attempt`` of ``task_id`` runs here: alone, in a group, or claimed and
        waiting for a run slot between two groups. A Ray task started ahead of a claim not yet
        judged does not count: whether it runs is what that judgement decides."""
        if self._between.get(task_id) == attempt:
            return True
        return self.running_attempt(task_id) == attempt and (task_id, attempt) not in self._undecided

    def running_attempt(self, task_id: str) -> int | None:
        """The attempt of ``task_id`` running here, alone or in a group; None if none is."""
        group = self._groups.get(task_id)
        return group.attempt_of(task_id) if group is not None else self._attempt_of.get(task_id)

    def group_began(self, key: str, member: str, began: float) -> None:
        """Timed member ``member`` of the group ``key`` began at ``began`` and still runs:
        its keeper times it out from then (the claim's deadline allowed for its wait)."""
        group = self._group_by_key.get(key)
        if group is not None and member in group.index and member not in group.reported:
            self._keepers.of(member).began.remote(member, group.attempt_of(member), began)

    def group_long(self, key: str, member: str, started: int, blocked: bool = False) -> None:
        """Member ``member`` of the group ``key`` has run long (``grouping.move_after``), and its worker,
        having started ``started`` members, gave back its leave to start any more: the members
        after it move to new Ray tasks, unless the group is over or stopping, or the member has
        ended meanwhile (then the worker asks for leave again, and gets it). ``blocked``: the
        member waits in a call, and the first of those Ray tasks may run on its CPU."""
        group = self._group_by_key.get(key)
        if group is None or group.signal.is_set() or member in group.reported:
            return
        if blocked:  # whether a loan is free is judged where the CPU is taken (``_start_again``)
            group.lending = member
        self._move_on(group, started, lender=group if group.lending else None)

    def group_busy(self, key: str, member: str) -> None:
        """Member ``member`` of the group ``key``, said blocked, uses its CPU again: the groups
        that borrowed it start no member past their grants; the rest move on to Ray tasks of
        their own."""
        group = self._group_by_key.get(key)
        if group is not None and group.lending == member:
            self._recall(group)

    def _recall(self, lender: Group) -> None:
        """Take back the CPU ``lender``'s member lent (it ended, or works again): see ``group_busy``."""
        lender.lending = None
        self._idle_lenders.pop(lender.key, None)
        borrowers, lender.borrowers = lender.borrowers, []
        for group in borrowers:
            if group.key in self._group_by_key and not group.signal.is_set():
                self._move_on(group, group.granted)

    def _move_on(self, group: Group, started: int, lender: Group | None = None) -> None:
        """Move the members of ``group`` from index ``started`` on that its worker has no leave to
        start to new Ray tasks (see ``Group.take_waiting``)."""
        waiting = group.take_waiting(started)
        if not waiting:
            if lender is group:  # no sibling waits behind the blocked member: another group may use its CPU
                self._lend_on(lender)
            elif lender is not None:
                self._idle_lenders[lender.key] = lender
            return
        for msg, _ in waiting:
            if self._groups.get(msg.id) is group:
                del self._groups[msg.id]
        self._stats["moved_waiting"] += len(waiting)
        self._background.spawn(self._start_again(waiting, moved=True, lender=lender))

    def group_advance(self, key: str, ends: list[MemberEnd], upto: int) -> int:
        """The worker of the group ``key`` reports ``ends`` and asks leave to start its
        members before index ``upto``. Noted before the answer, so that if the worker dies, its
        executor knows which members may have run. Returns the index before which members may
        start, which may be short of ``upto`` (members were moved on), 0 if the group is
        stopped or over here."""
        self._stats["group_grants"] += 1
        group = self._group_by_key.get(key)
        if group is None:
            return 0
        # A request whose socket broke after it was sent comes again by Ray: its ends are taken once.
        self._take_report(group, [e for e in ends if e.task_id not in group.reported])
        if group.signal.is_set():
            return 0
        group.granted = max(group.granted, min(upto, group.kept))
        return group.granted

    def _take_report(self, group: Group, ends: list[MemberEnd]) -> None:
        ended = []
        for end in ends:
            group.reported.add(end.task_id)
            if end.ran and end.reply is not None:
                group.ran.add(end.task_id)
                running = group.members[group.index[end.task_id]][1]
                ended.append((running, end.reply))
                if end.task_id == group.lending:
                    self._recall(group)
                if end.reply.began is not None and end.reply.returned is not None:
                    self._member_times.add(running.name, end.reply.returned - end.reply.began)
        if ended:
            self._background.spawn(self._finisher.settle_many(ended))

    async def group_signal(self, key: str) -> list[str]:
        """Resolves once members of the group ``key`` are cancelled, with their ids (or,
        with none, once the group is over)."""
        group = self._group_by_key.get(key)
        if group is None:
            return []
        await group.signal.wait()
        return sorted(group.cancelled)

    def group_report(self, key: str, ends: list[MemberEnd]) -> None:
        """Members of the group ``key`` that ended while a long one runs."""
        self._stats["group_reports"] += 1
        group = self._group_by_key.get(key)
        if group is not None:
            self._take_report(group, ends)

    def group_running(self, key: str, running: str | None, interrupted: bool, started: int | None = None) -> None:
        """The member the group's worker ran when the signal came (None: between members), whether
        it interrupted it, and how many members it had started (it starts no more)."""
        group = self._group_by_key.get(key)
        if group is not None:
            group.running = running
            group.note_started(started)
            if interrupted and running is not None:
                group.interrupted.add(running)

    # --- stopping -------------------------------------------------------------------------------

    def kill(self, task_id: str, attempt: int | None = None) -> bool:
        """Stop the Ray task of ``task_id`` (see ``Executor.kill``). True if it was running."""
        group = self._groups.get(task_id)
        if group is not None:
            if attempt is not None and group.attempt_of(task_id) != attempt:
                return False
            return self._kill_in_group(group, task_id)
        if task_id in self._between:
            if attempt is None or self._between[task_id] == attempt:
                self._note_kill(task_id)  # waiting for a slot: it will not start
            return False
        if attempt is not None and self._attempt_of.get(task_id) != attempt:
            return False  # not that attempt, or not here: nothing of it to stop
        ref = self._refs.get(task_id)
        if ref is None:
            # Not launched yet (its claim's answer is still on its way): do not launch it.
            self._note_kill(task_id)
            return False
        ready, _ = ray.wait([ref], timeout=0)
        if ready:
            return False  # already over; its final write loses to the cancel or timeout
        # Interrupt the task first. A forced cancel ends the worker process, and if the task
        # finished an instant before, that process may already run another task; so force only
        # a task that is still running after a grace period (one that ignores the interrupt).
        ray.cancel(ref, force=False)
        self._background.spawn(self._force_if_still_running(ref))
        self._stats["killed"] += 1
        return True

    def _note_kill(self, task_id: str) -> None:
        self._kill_requested[task_id] = True
        while len(self._kill_requested) > _KILLS_KEPT:
            self._kill_requested.pop(next(iter(self._kill_requested)))

    def _kill_in_group(self, group: Group, task_id: str) -> bool:
        """Stop a grouped task: the group starts no further member (those still waiting are started
        again elsewhere), and if this one is the member in progress, its worker interrupts it at
        once; one that is still running after ``KILL_GRACE_S`` is killed with its worker."""
        if task_id in group.reported:
            return False  # already over
        group.cancelled.add(task_id)
        group.signal.set()
        self._background.spawn(self._stop_group_member(group, task_id))
        self._stats["killed"] += 1
        return True

    async def _stop_group_member(self, group: Group, task_id: str) -> None:
        # A member runs on only if it was the one running when the signal reached the worker;
        # a cancel that came after the signal is the executor's to interrupt.
        for _ in range(2):  # interrupt (unless the worker did), then kill
            await asyncio.sleep(KILL_GRACE_S)
            if (
                self._groups.get(task_id) is not group
                or task_id in group.reported
                or group.running != task_id
                or group.gen is None
            ):
                return
            if task_id in group.interrupted:
                ray.cancel(group.gen, force=True)
                self._stats["workers_killed"] += 1
                return
            ray.cancel(group.gen, force=False)
            group.interrupted.add(task_id)

    async def _force_if_still_running(self, ref: ray.ObjectRef) -> None:
        await asyncio.sleep(KILL_GRACE_S)
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            ray.cancel(ref, force=True)
            self._stats["workers_killed"] += 1
