"""The Executor: takes a task from a consumer, claims it with a RUNNING write, runs it as a Ray task.

The RUNNING write is the claim: if the store rejects it (the task was cancelled, or
another executor took it) the task is skipped. The result or error becomes the
terminal write; if that is rejected (a cancel or timeout won) the result is discarded.
"""
from __future__ import annotations

import asyncio
import logging
import os
import _thread
import random
import threading
import time
import traceback
import uuid
from datetime import timedelta
from typing import Any, Optional

import ray
from ray.exceptions import RayError

from raylane import registry
from raylane.actors.common import REFUSED, STATUS_KEEPER, ActorConfig, GroupCommit
from raylane.actors.fencing import (FENCE_MARGIN_S, HEARTBEAT_EVERY_S, LEASE_TTL_S, LeaseLapsed, LeaseObserver,
                                    worker_fence)
from raylane.errors import QueueUnavailable, StoreUnavailable
from raylane.limits import Limits, clip_text, encode_result
from raylane.models import PackedRecord, TaskMessage, TaskRecord, WriteOutcome, utcnow
from raylane.states import TaskState

log = logging.getLogger("raylane.executor")

SWEEP_INTERVAL_S = 5.0
KILL_GRACE_S = 1.0  # a cancelled or timed-out task that ignores the interrupt this long is killed
REQUEUE_AFTER_S = 300.0  # a PENDING task this old may have lost its queue message
REQUEUE_CHECK_S = 30.0
RETRY_OVERDUE_S = 30.0  # a retry not carried on this long after it was due is carried on by the sweep


Lease = tuple  # (executor handle, its lease's end on its monotonic clock, its node id, what runs)


def _not_started(e: LeaseLapsed) -> dict[str, Any]:
    """The reply of an attempt whose executor's lease could not be confirmed: it did not run."""
    return {"ok": False, "error_type": "WorkerLost", "error": str(e), "traceback": None}


def invoke(name: str, args: list, kwargs: dict, limits: Limits = Limits(), lease: Optional[Lease] = None
           ) -> dict[str, Any]:
    """Run a registered task in this Ray worker; returns ``{"ok": ...}`` with the result or the error.
    A result that cannot be stored (not JSON, too deep, over ``limits.max_result_bytes``) fails
    the task here, where it is made, so it never travels to the executor or the store. With
    ``lease``, the function runs only while the claiming executor's lease holds (see ``fencing``)."""
    if lease is not None:
        try:
            worker_fence().arm(*lease)
        except LeaseLapsed as e:
            return _not_started(e)
        try:
            return invoke(name, args, kwargs, limits)
        finally:
            worker_fence().disarm()
    try:
        defn = registry.load(name)
        result = defn.fn(*args, **kwargs)
        encode_result(result, limits)
        return {"ok": True, "result": result}
    except Exception as e:  # the task's own error is data for its record
        try:
            message = str(e)
        except Exception as str_failed:  # an exception whose __str__ raises is still reported
            message = f"<{type(e).__qualname__} could not be shown: {str_failed!r}>"
        return {"ok": False, "error_type": type(e).__qualname__, "error": clip_text(message),
                "traceback": clip_text(traceback.format_exc())}


_remote_invoke = ray.remote(max_retries=0, retry_exceptions=False)(invoke)

RAN, NOT_STARTED = "ran", "not_started"
FLUSH_S = 0.002  # a group's worker reports ended members at most this long after the previous report
HELD_REPORT_S = 0.05  # replies waiting behind a member running longer than this are sent on their own


_INTERRUPTED = {"ok": False, "error_type": "TaskCancelledError", "error": "interrupted: the task was cancelled",
                "traceback": None}


class _MemberControl:
    """The executor's side of a group's worker, run by two threads beside the members.

    One waits for the executor's signal (the ids cancelled, or none when the group is over):
    from then on no further member starts, and the member running, if it is one of those
    cancelled, is interrupted as ``ray.cancel`` would (``KeyboardInterrupt`` in the main
    thread); the executor hears which member was running, so that it can kill the worker if
    that member ignores the interrupt. The other sends ended members' replies that wait
    unreported behind a long member (the main thread reports only between members), so a
    quick task's end is not held up by a slow sibling."""

    def __init__(self, signal: ray.ObjectRef, executor, group_key: str, limits: Limits):
        self._limits = limits
        self._lock = threading.Lock()
        self._current: Optional[str] = None
        self._started = 0.0
        self._pending: list[tuple[str, str, Optional[dict]]] = []  # ended, not yet reported
        self.cancelled: Optional[frozenset] = None  # None until the signal resolves
        self._over = threading.Event()
        self._sent: list[ray.ObjectRef] = []
        self._executor, self._key = executor, group_key
        threading.Thread(target=self._watch, args=(signal,), daemon=True, name="raylane-group-signal").start()
        self._sender = threading.Thread(target=self._send_held, daemon=True, name="raylane-group-report")
        self._sender.start()

    def _watch(self, signal: ray.ObjectRef) -> None:
        try:
            cancelled = frozenset(ray.get(signal))
        except Exception:  # the executor is gone: start nothing more
            cancelled = frozenset()
        with self._lock:
            self.cancelled = cancelled
            running = self._current
            interrupted = running is not None and running in cancelled
            if interrupted:
                _thread.interrupt_main()
        if cancelled:
            self._executor.group_running.remote(self._key, running, interrupted)

    def _send_held(self) -> None:
        while not self._over.wait(HELD_REPORT_S):
            with self._lock:
                held = self._pending if self._pending and time.monotonic() - self._started >= HELD_REPORT_S else []
                if held:
                    self._pending = []
            if held:
                self._sent.append(self._executor.group_report.remote(self._key, held))

    def take(self) -> list[tuple[str, str, Optional[dict]]]:
        """The replies not yet reported, which the caller now reports."""
        with self._lock:
            out, self._pending = self._pending, []
            return out

    def add(self, item: tuple[str, str, Optional[dict]]) -> None:
        with self._lock:
            self._pending.append(item)

    def close(self) -> None:
        """Stop sending, and wait until the executor has taken what was sent: it must know every
        member that ran before it learns that the group is over."""
        self._over.set()
        self._sender.join()
        try:
            ray.get(self._sent)
        except Exception:  # the executor is gone; its successor recovers the tasks from their records
            pass

    def run(self, task_id: str, name: str, args: list, kwargs: dict) -> Optional[dict]:
        """The member's reply; None if the group was stopped before it started."""
        try:
            with self._lock:
                if self.cancelled is not None:
                    return None
                self._current, self._started = task_id, time.monotonic()
            try:
                return invoke(name, args, kwargs, self._limits)
            finally:
                with self._lock:
                    self._current = None
        except KeyboardInterrupt:
            return _INTERRUPTED


def invoke_group(items: list[tuple[str, str, list, dict]], signal_box: list, executor, group_key: str,
                 limits: Limits = Limits(), lease: Optional[Lease] = None):
    """Run several tasks one after another in this Ray worker, yielding lists of
    ``(task id, RAN, reply)`` as they end: a report at most every ``FLUSH_S`` (each report is a
    message to the executor, so many small tasks share one); replies held behind a member that
    runs longer than ``HELD_REPORT_S`` go to the executor's ``group_report`` instead. Once the
    executor's signal (a reference in ``signal_box``) says members were cancelled, no further
    member starts and the rest are reported ``NOT_STARTED``, for the executor to start again
    without the cancelled ones."""
    [signal] = signal_box
    if lease is not None:
        try:
            worker_fence().arm(*lease)
        except LeaseLapsed as e:
            yield [(task_id, RAN, _not_started(e)) for task_id, *_ in items]
            return
    control = _MemberControl(signal, executor, group_key, limits)
    reported = time.monotonic()
    try:
        for i, (task_id, name, args, kwargs) in enumerate(items):
            if time.monotonic() - reported >= FLUSH_S:
                ended = control.take()
                if ended:
                    yield ended
                reported = time.monotonic()
            try:
                reply = control.run(task_id, name, args, kwargs)
            except KeyboardInterrupt:  # an interrupt meant for this member that landed as it returned
                reply = _INTERRUPTED
            if reply is None:
                for later in items[i:]:
                    control.add((later[0], NOT_STARTED, None))
                break
            control.add((task_id, RAN, reply))
        ended = control.take()
        if ended:
            yield ended
    finally:
        control.close()
        if lease is not None:
            worker_fence().disarm()


_remote_group = ray.remote(max_retries=0, retry_exceptions=False, num_returns="streaming")(invoke_group)
GROUP_MAX = 64  # tasks in one Ray task at most


def groupable(msg: TaskMessage) -> bool:
    """Whether a task may share a Ray task with others of its name: no timeout (its clock starts
    with its RUNNING record, so it must not wait behind others) and at most one CPU, nothing else."""
    r = msg.resources
    return msg.timeout_s is None and 0 < r.num_cpus <= 1 and r.num_gpus == 0 and r.memory_mb is None


class _Group:
    """A Ray task running several claimed tasks in turn."""

    def __init__(self, members: list[tuple[TaskMessage, TaskRecord]]):
        self.members = members
        self.index = {msg.id: i for i, (msg, _) in enumerate(members)}
        self.reported: set[str] = set()  # members whose outcome has arrived
        self.ran: set[str] = set()  # ... of those, the ones that ran
        self.cancelled: set[str] = set()
        self.signal = asyncio.Event()
        self.gen = None
        self.running: Optional[str] = None  # the member its worker ran when the signal came
        self.interrupted: set[str] = set()


def _final_record(running: TaskRecord, reply: dict) -> tuple[TaskRecord, PackedRecord]:
    """The terminal record of a task from its worker's reply, and the record packed. A reply that
    cannot be made into a record fails only its own task, never the batch it came with."""
    try:
        if reply["ok"]:
            final = running.moved_to(TaskState.SUCCEEDED, result=reply["result"])
        else:
            final = running.moved_to(
                TaskState.FAILED, error=reply["error"], error_type=reply["error_type"], traceback=reply["traceback"],
                will_retry=running.retry.retries(running.attempt, reply["error_type"]))
        return final, PackedRecord.of(final)
    except Exception as e:
        final = running.moved_to(TaskState.FAILED, error_type="ResultNotSerializable",
                                 error=clip_text(f"the task's end could not be recorded: {e!r}"))
        return final, PackedRecord.of(final)


def _own_claim(stored: Optional[TaskRecord], mine: TaskRecord) -> bool:
    return (stored is not None and stored.state is TaskState.RUNNING and stored.attempt == mine.attempt
            and stored.lease_owner == mine.lease_owner)


class Executor:
    """Runs tasks as Ray tasks named ``raylane:<task name>:<task id>``, at most ``max_running`` Ray tasks
    at once. Under load, tasks of one name without a timeout share Ray tasks
    (``raylane:<task name>:group-of-<n>:<first id>``), each keeping its own record and cancel."""

    def __init__(self, config: ActorConfig):
        self.config = config
        self._slots = asyncio.Semaphore(config.max_running)
        self._refs: dict[str, ray.ObjectRef] = {}
        self._groups: dict[str, _Group] = {}  # task id -> the group running it
        self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._self = ray.get_runtime_context().current_actor
        self._kill_requested: dict[str, bool] = {}  # insertion-ordered, bounded
        self._launched: dict[tuple[str, int], bool] = {}  # (id, attempt) launched here; insertion-ordered, bounded
        self._keeper = ray.get_actor(STATUS_KEEPER, namespace=config.namespace)
        self._limits = config.limits()
        self._finals = GroupCommit(self._write_finals)
        self._queue = config.queue()
        # A new incarnation on every (re)start: RUNNING records name it as their lease owner, and
        # its heartbeat in the store keeps them alive. Tasks of a lapsed owner are recovered.
        self._incarnation = uuid.uuid4().hex[:16]
        self._node_id = ray.get_runtime_context().get_node_id()
        self._worker = f"{self._node_id[:12]}/{os.getpid()}"
        # The end of this incarnation's lease on this process's monotonic clock: a full lease
        # period after the start of the last heartbeat that succeeded.
        self._lease_until = 0.0
        self._beat = 0
        self._leases = LeaseObserver()  # other executors' leases, as this one sees them
        self._attempt_of: dict[str, int] = {}  # task id -> attempt of the lone Ray task running it
        self._store = config.store()
        self._loops: list[asyncio.Task] = []
        self._healthy_since: Optional[float] = None  # since when heartbeats succeed without a gap
        self._last_requeue = 0.0
        self._requeued: dict[tuple[str, int], bool] = {}  # insertion-ordered, bounded
        self._background: set[asyncio.Task] = set()  # retries waiting out their backoff
        self.stats = {"started": 0, "skipped": 0, "succeeded": 0, "failed": 0, "discarded_results": 0, "killed": 0,
                      "retried": 0, "recovered": 0, "requeued": 0, "groups": 0, "grouped": 0, "restarted_unstarted": 0}

    async def ensure_running(self) -> str:
        """Start the heartbeat and the sweep for lost tasks if not running (idempotent); returns the incarnation."""
        if not self._loops or any(t.done() for t in self._loops):
            for t in self._loops:
                t.cancel()
            await self._renew_lease()
            self._healthy_since = self._healthy_since or time.monotonic()
            self._loops = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._sweep_loop())]
        return self._incarnation

    async def _renew_lease(self) -> None:
        started = time.monotonic()
        self._beat += 1
        await asyncio.to_thread(self._store.heartbeat, self._incarnation, self._beat)
        self._lease_until = max(self._lease_until, started + LEASE_TTL_S)

    async def lease_remaining(self) -> float:
        """Seconds this incarnation's lease still holds (negative once lapsed); the workers running
        its tasks ask, and end themselves before it can lapse anywhere else."""
        return self._lease_until - time.monotonic()

    def _lease_for(self, what: str) -> tuple:
        return (self._self, self._lease_until, self._node_id, what)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                await self._renew_lease()
                if self._healthy_since is None:
                    self._healthy_since = time.monotonic()
            except StoreUnavailable as e:
                self._healthy_since = None
                log.warning("heartbeat failed: %s", e)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep for lost tasks failed")

    async def sweep(self, limit: int = 500) -> int:
        """Recover RUNNING tasks whose executor's lease lapsed (a new attempt if retries remain,
        else FAILED as lost) and, every ``REQUEUE_CHECK_S``, PENDING tasks that may have lost
        their queue message. Safe to run from many executors at once (versioned writes, and
        duplicate messages lose their claim). Returns how many tasks this call recovered."""
        if self._healthy_since is None or time.monotonic() - self._healthy_since < LEASE_TTL_S:
            # After a store outage every executor's heartbeat looks lapsed; give them a full
            # lease period to renew before judging any task lost.
            return 0
        # The owners live at the last sweep only narrow the search; every candidate is judged below.
        candidates = await asyncio.to_thread(self._store.running_not_owned_by,
                                             self._leases.live() | {self._incarnation}, limit)
        # Read the counters after the candidates: an owner whose claim the search found wrote its
        # first heartbeat before that claim, so it is seen here (and is not judged unseen).
        self._leases.observe(await asyncio.to_thread(self._store.heartbeats))
        orphans = [r for r in candidates if r.lease_owner != self._incarnation and self._leases.lapsed(r.lease_owner)]
        gone = self._leases.stale(older_than_s=3600.0)
        if gone:
            await asyncio.to_thread(self._store.delete_heartbeats, gone)
            self._leases.forget(gone)
        recovered = 0
        for rec in orphans:
            lost = rec.moved_to(TaskState.FAILED, error_type="WorkerLost",
                                error=f"the executor running attempt {rec.attempt} stopped (lease of {rec.lease_owner} lapsed)",
                                will_retry=rec.retry.retries(rec.attempt, "WorkerLost"))
            outcome = await self._record(lost)
            if outcome.accepted:
                recovered += 1
                if lost.will_retry:
                    await self._retry(lost)
        self.stats["recovered"] += recovered
        if time.monotonic() - self._last_requeue >= REQUEUE_CHECK_S:
            self._last_requeue = time.monotonic()
            recovered += await self._requeue_stale_pending(limit)
        return recovered

    async def _requeue_stale_pending(self, limit: int) -> int:
        """Produce again the message of PENDING tasks that waited past ``REQUEUE_AFTER_S``: their
        submit may have died between the PENDING write and the produce. A duplicate message is
        harmless (its RUNNING claim is rejected), and each task is re-queued at most once per
        executor incarnation, so the cost stays bounded."""
        paused = await asyncio.to_thread(self._store.paused_queues)
        now = utcnow()
        # A retry whose executor stopped between its FAILED record and its next attempt's: finish it.
        for failed in await asyncio.to_thread(self._store.unfinished_retries,
                                              now - timedelta(seconds=RETRY_OVERDUE_S), limit):
            await self._retry(failed)
        before = now - timedelta(seconds=REQUEUE_AFTER_S)
        stale = await asyncio.to_thread(self._store.stale_pending, before, paused, limit)
        # A SCHEDULED retry whose executor stopped during the backoff never had its message sent.
        stale += await asyncio.to_thread(self._store.overdue_scheduled, now - timedelta(seconds=RETRY_OVERDUE_S),
                                         paused, limit)
        stale = [r for r in stale if (r.id, r.attempt) not in self._requeued]
        if stale:
            await asyncio.to_thread(self._queue.produce_many, [r.message() for r in stale])
            for r in stale:
                self._requeued[(r.id, r.attempt)] = True
            while len(self._requeued) > 100_000:
                self._requeued.pop(next(iter(self._requeued)))
            self.stats["requeued"] += len(stale)
            log.warning("re-queued %d task(s) PENDING since before %s", len(stale), before.isoformat())
        return len(stale)

    async def start_many(self, messages: list[bytes]) -> list[str]:
        """Claim and launch tasks (their queue messages, JSON), each once a run slot is free (and a
        retry once its backoff is over); returns once every RUNNING write is settled, one outcome
        per message: "started", "skipped" (the claim lost to a newer version), or ``REFUSED`` and
        the store's reason."""
        await self.ensure_running()
        if self._lease_until - time.monotonic() < FENCE_MARGIN_S + HEARTBEAT_EVERY_S:
            # Nothing is claimed under a lease about to lapse: its workers would end at once.
            await self._renew_lease()
        msgs = [TaskMessage.model_validate_json(m) for m in messages]
        now = utcnow()
        later = [i for i, m in enumerate(msgs) if m.not_before and m.not_before > now]
        if not later:
            return await self._start_ready(msgs)
        ready = [i for i, m in enumerate(msgs) if not (m.not_before and m.not_before > now)]
        results = await asyncio.gather(self._start_ready([msgs[i] for i in ready]),
                                       *[self._start_after_backoff(msgs[i]) for i in later])
        out: list[str] = [""] * len(msgs)
        for i, outcome in zip(ready, results[0]):
            out[i] = outcome
        for i, [outcome] in zip(later, results[1:]):
            out[i] = outcome
        return out

    async def _start_after_backoff(self, msg: TaskMessage) -> list[str]:
        await asyncio.sleep(max(0.0, (msg.not_before - utcnow()).total_seconds()))
        return await self._start_ready([msg])

    async def _start_ready(self, msgs: list[TaskMessage]) -> list[str]:
        outcomes = [""] * len(msgs)
        units = self._plan(msgs)
        k = 0
        while k < len(units):
            # Wait for one free slot, then take every other slot free right now: one claim for them all.
            await self._slots.acquire()
            batch = [units[k]]
            k += 1
            while k < len(units) and not self._slots.locked():
                await self._slots.acquire()
                batch.append(units[k])
                k += 1
            for idx, outs in zip(batch, await self._claim_and_launch([[msgs[i] for i in idx] for idx in batch])):
                for i, outcome in zip(idx, outs):
                    outcomes[i] = outcome
        return outcomes

    def _group_size(self, n: int) -> int:
        # As many Ray tasks as the cluster has CPUs, each with a share of the tasks.
        return min(GROUP_MAX, max(2, -(-n // self._cpus)))

    def _plan(self, msgs: list[TaskMessage]) -> list[list[int]]:
        """How to run ``msgs``, in units that each hold one run slot: groups of tasks of one name
        that may share a Ray task (when several arrive at once, which saves Ray's cost per task),
        and tasks alone; in arrival order."""
        buckets: dict[tuple, list[int]] = {}
        units: list[list[int]] = []
        for i, m in enumerate(msgs):
            if groupable(m):
                buckets.setdefault((m.name, m.resources), []).append(i)
            else:
                units.append([i])
        for idx in buckets.values():
            size = self._group_size(len(idx))
            for k in range(0, len(idx), size):
                chunk = idx[k:k + size]
                units.extend([chunk] if len(chunk) > 1 else [[i] for i in chunk])
        return sorted(units)

    async def _claim_and_launch(self, units: list[list[TaskMessage]]) -> list[list[str]]:
        """Claim the tasks of ``units`` with RUNNING writes (one call for all) and start the claimed
        ones. Each unit holds one run slot: a task alone, or several that share one Ray task."""
        records = [[TaskRecord.pending(m).moved_to(TaskState.RUNNING, worker=self._worker,
                                                   lease_owner=self._incarnation) for m in unit] for unit in units]
        flat = [r for unit in records for r in unit]
        try:
            claims = await self._keeper.claim.remote([PackedRecord.of(r) for r in flat])
            rejected = [r.id for r, c in zip(flat, claims) if not c.accepted]
            if rejected:
                # A rejected claim normally means cancelled or taken; but if a retried hand-off finds
                # this incarnation's own earlier claim (its answer was lost), the task is ours to run.
                stored = await asyncio.to_thread(self._store.get_many, rejected)
                claims = [c if c.accepted or not _own_claim(stored.get(r.id), r) else
                          c._replace(accepted=True) for r, c in zip(flat, claims)]
        except BaseException:
            for _ in units:
                self._slots.release()
            raise
        answers = iter(claims)
        out = []
        for unit, unit_records in zip(units, records):
            outcomes: list[str] = []
            launch: list[tuple[TaskMessage, TaskRecord]] = []
            for msg, running in zip(unit, unit_records):
                claim = next(answers)
                if (msg.id, msg.attempt) in self._launched:
                    outcomes.append("started")  # a repeated hand-off of a task this incarnation already runs
                elif not claim.accepted and claim.reason != "conflict":
                    outcomes.append(REFUSED + (claim.reason or "unknown error"))
                # A kill that arrived before the claim's answer means a cancel was written after it.
                elif not claim.accepted or self._kill_requested.pop(msg.id, None) is not None:
                    self.stats["skipped"] += 1
                    outcomes.append("skipped")
                else:
                    self._launched[(msg.id, msg.attempt)] = True
                    while len(self._launched) > 100_000:
                        self._launched.pop(next(iter(self._launched)))
                    self.stats["started"] += 1
                    launch.append((msg, running))
                    outcomes.append("started")
            out.append(outcomes)
            if not launch:
                self._slots.release()
            elif len(launch) == 1:
                self._launch_one(*launch[0])
            else:
                self._start_group(launch)
        return out

    def _start_group(self, members: list[tuple[TaskMessage, TaskRecord]]) -> None:
        group = _Group(members)
        for msg, _ in members:  # registered at once, so a kill arriving before it starts finds it
            self._groups[msg.id] = group
        asyncio.create_task(self._run_group(group))

    def _launch_one(self, msg: TaskMessage, running: TaskRecord) -> None:
        r = msg.resources
        opts: dict[str, Any] = {"name": f"raylane:{msg.name}:{msg.id}", "num_cpus": r.num_cpus, "num_gpus": r.num_gpus}
        if r.memory_mb:
            opts["memory"] = r.memory_mb * 1024 * 1024
        try:
            ref = _remote_invoke.options(**opts).remote(msg.name, msg.args, msg.kwargs, self._limits,
                                                        self._lease_for(f"attempt {msg.attempt} of task {msg.id}"))
        except Exception as e:  # e.g. resources Ray refuses: the claimed task fails, it is not left RUNNING
            asyncio.create_task(self._fail_launch(running, e))
            return
        self._refs[msg.id] = ref
        self._attempt_of[msg.id] = msg.attempt
        asyncio.create_task(self._finish(running, ref))

    def _running_now(self) -> int:
        return len(self._refs) + len(self._groups)  # lone Ray tasks, and tasks in groups

    async def group_signal(self, task_id: str) -> list[str]:
        """Resolves once members of the group of ``task_id`` are cancelled, with their ids (or,
        with none, once the group is over); the group's worker then starts no further member."""
        group = self._groups.get(task_id)
        if group is None:
            return []
        await group.signal.wait()
        return sorted(group.cancelled)

    async def group_report(self, task_id: str, items: list[tuple[str, str, Optional[dict]]]) -> None:
        """From the worker of the group of ``task_id``: members that ended while a long one runs."""
        group = self._groups.get(task_id)
        if group is not None:
            self._take_report(group, items)

    def _take_report(self, group: _Group, items: list[tuple[str, str, Optional[dict]]]) -> None:
        ended = []
        for task_id, kind, reply in items:
            group.reported.add(task_id)
            if kind == RAN:
                group.ran.add(task_id)
                ended.append((group.members[group.index[task_id]][1], reply))
        if ended:
            asyncio.create_task(self._settle_many(ended))

    async def group_running(self, task_id: str, running: Optional[str], interrupted: bool) -> None:
        """From the worker of the group of ``task_id``: the member it was running when the signal
        came (None: between members), and whether it interrupted it."""
        group = self._groups.get(task_id)
        if group is not None:
            group.running = running
            if interrupted:
                group.interrupted.add(running)

    async def _run_group(self, group: _Group) -> None:
        msgs = [m for m, _ in group.members]
        first = msgs[0]
        self.stats["groups"] += 1
        self.stats["grouped"] += len(msgs)
        items = [(m.id, m.name, m.args, m.kwargs) for m in msgs]
        crash: Optional[BaseException] = None
        try:
            signal = self._self.group_signal.remote(first.id)
            group.gen = _remote_group.options(name=f"raylane:{first.name}:group-of-{len(msgs)}:{first.id}",
                                              num_cpus=first.resources.num_cpus).remote(
                items, [signal], self._self, first.id, self._limits,
                self._lease_for(f"a group of {len(msgs)} tasks from {first.id}"))
        except Exception as e:  # Ray refused to start it: each member fails as a lone launch would
            for m in msgs:
                self._groups.pop(m.id, None)
            for _, running in group.members:
                asyncio.create_task(self._record_launch_failure(running, e))
            self._slots.release()
            return
        try:
            async for ref in group.gen:
                self._take_report(group, await ref)
        except (Exception, asyncio.CancelledError) as e:
            # The worker died or was killed (or its report could not be read): the member it ran
            # ends as a lone task would, the rest run again.
            crash = e
        finally:
            group.signal.set()  # lets the pending group_signal call return
            for m in msgs:
                self._groups.pop(m.id, None)
            self._slots.release()
        blamed = None
        if crash is not None:
            # After a signal the worker names the member it ran; otherwise it is taken to be the first
            # one not reported, so if the worker died in a member's first HELD_REPORT_S, one that
            # ended just before may take the blame (and the others not reported run again).
            blamed = group.running if group.running is not None else \
                next((m.id for m, _ in group.members if m.id not in group.reported), None)
        again = []
        for msg, running in group.members:
            if msg.id in group.ran:
                continue
            if msg.id == blamed:
                # The member that was running: it ends as a lone task whose worker died would.
                reply = {"ok": False, "error_type": type(crash).__name__, "error": f"Ray task ended abnormally: {crash}",
                         "traceback": None}
                asyncio.create_task(self._settle_many([(running, reply)]))
            elif msg.id in group.cancelled:
                self.stats["skipped"] += 1  # cancelled before it started; its CANCELLED record is written
            else:
                again.append((msg, running))
        if again:
            # Members the group never started run again; they are still claimed by this executor.
            self.stats["restarted_unstarted"] += len(again)
            size = self._group_size(len(again))
            for k in range(0, len(again), size):
                await self._slots.acquire()
                chunk = again[k:k + size]
                if len(chunk) == 1:
                    self._launch_one(*chunk[0])
                else:
                    self._start_group(chunk)

    async def _fail_launch(self, running: TaskRecord, error: Exception) -> None:
        try:
            await self._record_launch_failure(running, error)
        finally:
            self._slots.release()

    async def _record_launch_failure(self, running: TaskRecord, error: Exception) -> None:
        failed = running.moved_to(TaskState.FAILED, error_type=type(error).__name__,
                                  error=f"Ray refused to start the task: {error}")
        outcome = await self._record(failed)
        self.stats["failed" if outcome.accepted else "discarded_results"] += 1

    async def _write_finals(self, records: list[TaskRecord | PackedRecord]) -> list:
        return await self._keeper.write.remote([PackedRecord.of(r) for r in records])

    async def _finish(self, running: TaskRecord, ref: ray.ObjectRef) -> None:
        try:
            reply = await ref
        except (RayError, asyncio.CancelledError) as e:
            # Killed by a cancel or timeout (whose terminal write already won), or the worker died:
            # with this incarnation's lease lapsed, it ended itself (fenced), and is lost as a sweep
            # elsewhere would record it.
            fenced = time.monotonic() >= self._lease_until - FENCE_MARGIN_S
            reply = {"ok": False, "error_type": "WorkerLost" if fenced else type(e).__name__,
                     "error": ("the lease of this executor lapsed and the worker ended itself: " if fenced
                               else "Ray task ended abnormally: ") + clip_text(str(e)), "traceback": None}
        finally:
            self._refs.pop(running.id, None)
            self._attempt_of.pop(running.id, None)
        await self._settle(running, reply)

    async def _settle(self, running: TaskRecord, reply: dict) -> None:
        """Write a lone task's end from its reply and free its run slot (a grouped task's slot
        is its group's, freed when the group ends)."""
        try:
            await self._settle_many([(running, reply)])
        finally:
            self._slots.release()

    async def _settle_many(self, ended: list[tuple[TaskRecord, dict]]) -> None:
        """Write the ends of tasks from their replies, in one batch, and start the retries their policies ask for."""
        try:
            finals = [_final_record(running, reply) for running, reply in ended]
            outcomes = await self._record_many([packed for _, packed in finals])
            for (final, _), outcome in zip(finals, outcomes):
                if outcome.refused_for_content:
                    # The store will never take this end as it is (a result it cannot hold): the
                    # task fails with the store's reason instead of staying RUNNING.
                    final = final.moved_to(TaskState.FAILED, result=None, will_retry=False, error_type="RecordRefused",
                                           error=clip_text(f"the status store refused the task's {final.state.value} "
                                                           f"record: {outcome.reason}"), traceback=None)
                    outcome = await self._record(final)
                if not outcome.accepted:
                    self.stats["discarded_results"] += 1
                    log.info("task %s: %s discarded, a cancel or timeout was recorded first", final.id,
                             final.state.value)
                elif final.will_retry:
                    await self._retry(final)
                else:
                    self.stats["succeeded" if final.state is TaskState.SUCCEEDED else "failed"] += 1
        except Exception:
            log.exception("finishing task(s) %s failed", ", ".join(r.id for r, _ in ended))

    async def _record(self, record: TaskRecord) -> WriteOutcome:
        """Write one record through the keeper (see ``_record_many``)."""
        [outcome] = await self._record_many([record])
        return outcome

    async def _record_many(self, records: list[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """Write records through the keeper, riding out a store outage or a keeper restart
        (the tasks keep their run slots meanwhile, so outages apply backpressure)."""
        attempt = 0
        while True:
            try:
                return await self._finals.submit_many(records)
            except (StoreUnavailable, RayError) as e:
                attempt += 1
                if attempt == 1 or attempt % 30 == 0:
                    log.warning("writing %d record(s) (%s of %s first) failed (try %d): %r", len(records),
                                records[0].state.value, records[0].id, attempt, e)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))

    async def _retry(self, failed: TaskRecord) -> None:
        """Start the next attempt of a failed task: its record (SCHEDULED during the backoff), then,
        once the backoff is over, its message. The wait happens here, off the queue: a retry
        waiting out its backoff holds no place in a consumer's window. Should this executor stop
        meanwhile, the sweep sends the message of a SCHEDULED attempt that is overdue."""
        nxt, msg = failed.retried(failed.retry.delay_s(failed.attempt, random.random()))
        outcome = await self._record(nxt)
        if not outcome.accepted:
            return  # cancelled meanwhile, or another sweep already took it further
        self.stats["retried"] += 1
        if nxt.not_before is None:
            await self._enqueue(msg)
        else:
            task = asyncio.create_task(self._enqueue_when_due(msg))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _enqueue_when_due(self, msg: TaskMessage) -> None:
        await asyncio.sleep(max(0.0, (msg.not_before - utcnow()).total_seconds()))
        await self._enqueue(msg)

    async def _enqueue(self, msg: TaskMessage) -> None:
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
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))

    async def kill(self, task_id: str, attempt: Optional[int] = None) -> bool:
        """Stop the Ray task of ``task_id`` (its terminal state, or a newer attempt, is already
        written): interrupt it, and kill its worker with ``ray.cancel(force=True)`` if it still runs
        after ``KILL_GRACE_S``. With ``attempt``, only that attempt is stopped. True if it was running."""
        group = self._groups.get(task_id)
        if group is not None:
            if attempt is not None and group.members[group.index[task_id]][0].attempt != attempt:
                return False
            return self._kill_in_group(group, task_id)
        if attempt is not None and self._attempt_of.get(task_id) != attempt:
            return False  # not that attempt, or not here: nothing of it to stop
        ref = self._refs.get(task_id)
        if ref is None:
            # Not launched yet (its claim's answer is still on its way): do not launch it.
            self._kill_requested[task_id] = True
            while len(self._kill_requested) > 10_000:
                self._kill_requested.pop(next(iter(self._kill_requested)))
            return False
        ready, _ = ray.wait([ref], timeout=0)
        if ready:
            return False  # already over; its final write loses to the cancel or timeout
        # Interrupt the task first. A forced cancel ends the worker process, and if the task
        # finished an instant before, that process may already run another task; so force only
        # a task that is still running after a grace period (one that ignores the interrupt).
        ray.cancel(ref, force=False)
        asyncio.create_task(self._force_if_still_running(ref))
        self.stats["killed"] += 1
        return True

    def _kill_in_group(self, group: _Group, task_id: str) -> bool:
        """Stop a grouped task: the group starts no further member (those still waiting are started
        again elsewhere), and if this one is the member in progress, its worker interrupts it at
        once; one that is still running after ``KILL_GRACE_S`` is killed with its worker."""
        if task_id in group.reported:
            return False  # already over
        group.cancelled.add(task_id)
        group.signal.set()
        asyncio.create_task(self._stop_group_member(group, task_id))
        self.stats["killed"] += 1
        return True

    async def _stop_group_member(self, group: _Group, task_id: str) -> None:
        # A member runs on only if it was the one running when the signal reached the worker;
        # a cancel that came after the signal is the executor's to interrupt.
        for _ in range(2):  # interrupt (unless the worker did), then kill
            await asyncio.sleep(KILL_GRACE_S)
            if (self._groups.get(task_id) is not group or task_id in group.reported
                    or group.running != task_id or group.gen is None):
                return
            if task_id in group.interrupted:
                ray.cancel(group.gen, force=True)
                return
            ray.cancel(group.gen, force=False)
            group.interrupted.add(task_id)

    async def _force_if_still_running(self, ref: ray.ObjectRef) -> None:
        await asyncio.sleep(KILL_GRACE_S)
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            ray.cancel(ref, force=True)

    async def get_stats(self) -> dict:
        """Counters: started, skipped (claim rejected), succeeded, failed, discarded results, killed."""
        return dict(self.stats, running=self._running_now())
