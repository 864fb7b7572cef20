"""Leases and recovery: an executor's own lease (its heartbeat), and the sweeps that recover the
tasks of executors whose leases lapsed, and PENDING or SCHEDULED tasks whose message was lost.

Lease ages are measured on this process's monotonic clock only (see ``fencing``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from raylane.actors.fencing import HEARTBEAT_EVERY_S, LEASE_TTL_S, LeaseObserver
from raylane.actors.finishing import Finisher
from raylane.errors import StoreUnavailable
from raylane.models import TaskRecord, utcnow
from raylane.protocol import UNRECORDED
from raylane.queue import TaskQueue
from raylane.signing import Signer, ended_as_forged
from raylane.states import TaskState
from raylane.store import StatusStore

log = logging.getLogger("raylane.executor")

SWEEP_INTERVAL_S = 5.0
REQUEUE_AFTER_S = 300.0  # a PENDING task this old may have lost its queue message
REQUEUE_CHECK_S = 30.0  # the default of ``recovery_check_s``: how often the slower searches run
RETRY_OVERDUE_S = 30.0  # a retry not carried on this long after it was due is carried on by the sweep
# A claim of this incarnation written this long ago that it neither runs nor is still deciding on
# was left behind (see ``Recovery._close_unheld``).
UNHELD_AFTER_S = 60.0
_REQUEUED_KEPT = 100_000
_SLOW_HEARTBEAT_S = 1.0
_HEARTBEATS_AT_ONCE = 2


def _lost(rec: TaskRecord, error: str) -> TaskRecord:
    """``rec``'s attempt ended as lost (``WorkerLost``), retried as its policy says."""
    return rec.moved_to(
        TaskState.FAILED, error_type="WorkerLost", error=error, will_retry=rec.retries_after("WorkerLost")
    )


class OwnLease:
    """This executor incarnation's lease: renewed by a heartbeat counter in the store, and held
    until a full lease period after the start of the last heartbeat that succeeded."""

    def __init__(self, store: StatusStore, incarnation: str):
        self._store = store
        self.incarnation = incarnation
        self.until = 0.0  # on this process's monotonic clock
        self._held_since: float | None = None  # since when the lease has held without a break
        self._beat = 0  # the last beat given out; 0 until one was written
        self._last_start = 0.0  # when the last heartbeat began (whether it succeeded or not)
        self.healthy_since: float | None = None  # since when heartbeats succeed without a gap
        # Threads of their own: behind the shared pool's slow calls (sweeps, a retry's produce) a
        # heartbeat would wait, and the workers of a live executor would end themselves. Two, so
        # that a heartbeat that takes longer than the period does not hold back the next.
        self._beats = ThreadPoolExecutor(_HEARTBEATS_AT_ONCE, thread_name_prefix="raylane-heartbeat")

    async def renew(self) -> None:
        """One heartbeat; the lease then holds ``LEASE_TTL_S`` from its start."""
        started = self._last_start = time.monotonic()
        # Until one is written, every beat is the first (1), which the store makes searchable at
        # once: an owner's claims must never be found before its lease.
        beat = self._beat = self._beat + 1 if self.until else 1
        await asyncio.get_running_loop().run_in_executor(self._beats, self._store.heartbeat, self.incarnation, beat)
        done = time.monotonic()
        if self.until < done:  # it had lapsed (or never held): it holds again from now
            self._held_since = done
        self.until = max(self.until, started + LEASE_TTL_S)
        took = done - started
        if took > _SLOW_HEARTBEAT_S:
            # Every second a heartbeat takes is a second less of lease: workers end before it lapses.
            log.warning("a heartbeat took %.1fs; the lease holds %.1fs more", took, self.remaining())

    def remaining(self) -> float:
        """Seconds the lease still holds (negative once lapsed)."""
        return self.until - time.monotonic()

    def held_for(self) -> float:
        """Seconds the lease has held without a break, up to now (0 if it does not hold now)."""
        now = time.monotonic()
        if self._held_since is None or self.until <= now:
            return 0.0
        return now - self._held_since

    async def heartbeat_loop(self) -> None:
        """Renew every ``HEARTBEAT_EVERY_S`` from the start of the last heartbeat, as the lease is
        counted, forever; a heartbeat still under way does not hold back the next (up to
        ``_HEARTBEATS_AT_ONCE`` at once). A failed renewal starts the healthy period anew."""
        under_way: set[asyncio.Task] = set()
        while True:
            await asyncio.sleep(max(0.0, self._last_start + HEARTBEAT_EVERY_S - time.monotonic()))
            if len(under_way) >= _HEARTBEATS_AT_ONCE:
                await asyncio.wait(under_way, return_when=asyncio.FIRST_COMPLETED)
            beat = asyncio.create_task(self._renew_logged())
            under_way.add(beat)
            beat.add_done_callback(under_way.discard)

    async def _renew_logged(self) -> None:
        try:
            await self.renew()
            if self.healthy_since is None:
                self.healthy_since = time.monotonic()
        except StoreUnavailable as e:
            self.healthy_since = None
            log.warning("heartbeat failed: %s", e)


class Recovery:
    """The sweeps of one executor. Safe to run from many executors at once: every write is
    versioned, and a duplicate message loses its claim.

    What a sweep finds is a record in the store, which anyone able to write there could have
    planted: it carries on only records that bear the cluster's seal (``Signer.seal``), and ends
    the others FAILED, so that they run nothing and are not found again."""

    def __init__(
        self,
        store: StatusStore,
        queue: TaskQueue,
        lease: OwnLease,
        finisher: Finisher,
        stats: Counter,
        holds: Callable[[str, int], bool],
        signer: Signer,
        check_every_s: float = REQUEUE_CHECK_S,
    ):
        self._store = store
        self._signer = signer
        self._check_every_s = check_every_s
        self._holds = holds
        self._queue = queue
        self._lease = lease
        self._finisher = finisher
        self._stats = stats
        self._leases = LeaseObserver()  # other executors' leases, as this one sees them
        self._last_requeue = 0.0
        self._requeued: dict[tuple[str, int], bool] = {}  # insertion-ordered, bounded
        # (id, attempt) of claims the keeper made the record of and refused; insertion-ordered, bounded
        self._unrecorded: dict[tuple[str, int], bool] = {}

    async def loop(self) -> None:
        """Sweep every ``SWEEP_INTERVAL_S``, forever."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep for lost tasks failed")

    async def sweep(self, limit: int = 500) -> int:
        """Recover RUNNING tasks whose executor's lease lapsed (a new attempt if retries remain,
        else FAILED as lost) and, every ``check_every_s``, this executor's claims that nothing
        runs and PENDING tasks that may have lost their queue message. Returns how many tasks
        this call recovered."""
        healthy = self._lease.healthy_since
        if healthy is None or time.monotonic() - healthy < LEASE_TTL_S:
            # After a store outage every executor's heartbeat looks lapsed; give them a full
            # lease period to renew before judging any task lost.
            return 0
        recovered = await self._recover_lapsed(limit)
        requeued = 0
        if time.monotonic() - self._last_requeue >= self._check_every_s:
            self._last_requeue = time.monotonic()
            # A claim left behind is a minute old at least: a search every 5 s would find no more.
            recovered += await self._close_unheld(limit)
            requeued = await self._requeue_stale(limit)
        self._stats["recovered"] += recovered
        return recovered + requeued

    async def _recover_lapsed(self, limit: int) -> int:
        mine = self._lease.incarnation
        # The owners live at the last sweep only narrow the search; every candidate is judged below.
        candidates = await asyncio.to_thread(self._store.running_not_owned_by, self._leases.live() | {mine}, limit)
        # Read the counters after the candidates: an owner whose claim the search found wrote its
        # first heartbeat before that claim, so it is seen here (and is not judged unseen).
        self._leases.observe(await asyncio.to_thread(self._store.heartbeats))
        orphans = [r for r in candidates if r.lease_owner != mine and self._leases.lapsed(r.lease_owner)]
        gone = self._leases.stale(older_than_s=3600.0)
        if gone:
            await asyncio.to_thread(self._store.delete_heartbeats, gone)
            self._leases.forget(gone)
        orphans = await self._sealed(orphans)
        return await self._end(
            [
                _lost(rec, f"the executor running attempt {rec.attempt} stopped (lease of {rec.lease_owner} lapsed)")
                for rec in orphans
            ]
        )

    async def _sealed(self, found: list[TaskRecord]) -> list[TaskRecord]:
        """The records of ``found`` that bear the cluster's seal; the others are ended here."""
        sealed, forged = self._signer.split(found)
        if forged:
            self._stats["forged"] += len(forged)
            log.warning(
                "ending %d record(s) that do not bear this cluster's seal, without running them: %s (%s)",
                len(forged),
                forged[0].id,
                forged[0].name,
            )
            await self._end([ended_as_forged(r) for r in forged])
        return sealed

    async def _end(self, ended: list[TaskRecord]) -> int:
        """Write the ends of ``ended`` and carry on the retries of those accepted; how many were."""
        accepted = 0
        for rec in ended:
            if (await self._finisher.record(rec)).accepted:
                accepted += 1
                if rec.will_retry:
                    await self._finisher.retry(rec)
        return accepted

    def refused_unrecorded(self, task_id: str, attempt: int) -> None:
        """The keeper refused this incarnation's claim of ``attempt`` of ``task_id``: the claim made
        the task's record (the task had none). Should closing that record have failed, the sweep
        closes it the same way (``_close_unheld``)."""
        self._unrecorded[(task_id, attempt)] = True
        while len(self._unrecorded) > _REQUEUED_KEPT:
            self._unrecorded.pop(next(iter(self._unrecorded)))

    async def _close_unheld(self, limit: int) -> int:
        """End the RUNNING records of this incarnation's claims, older than ``UNHELD_AFTER_S``,
        that it neither runs nor is deciding on. Its lease stays alive, so ``_recover_lapsed``
        never takes them; nothing else would end them. One is left so when the keeper refused a
        claim that made its task's record and could not close that record (the store turned the
        closing write away every time): it ends FAILED as the keeper would have closed it, never
        retried (its submit failed). Any other is ended as lost, and retried as its policy says."""
        mine = self._lease.incarnation
        before = utcnow() - timedelta(seconds=UNHELD_AFTER_S)
        candidates = await asyncio.to_thread(self._store.running_owned_by, mine, before, limit)
        # Judged after the search: a claim whose answer came meanwhile is held by now.
        left = await self._sealed([r for r in candidates if not self._holds(r.id, r.attempt)])
        if left:
            log.warning("ending %d claim(s) of this executor that it does not run: %s", len(left), left[0].id)
        return await self._end(
            [
                rec.moved_to(TaskState.FAILED, error_type="NotEnqueued", error=UNRECORDED)
                if (rec.id, rec.attempt) in self._unrecorded
                else _lost(rec, f"attempt {rec.attempt} was claimed by {mine}, which does not run it")
                for rec in left
            ]
        )

    async def _requeue_stale(self, limit: int) -> int:
        """Produce again the message of PENDING tasks that waited past ``REQUEUE_AFTER_S``: their
        submit may have died between the PENDING write and the produce. A duplicate message is
        harmless (its RUNNING claim is rejected), and each task is re-queued at most once per
        executor incarnation, so the cost stays bounded."""
        paused = await asyncio.to_thread(self._store.paused_queues)
        now = utcnow()
        # A retry whose executor stopped between its FAILED record and its next attempt's: finish it.
        overdue = now - timedelta(seconds=RETRY_OVERDUE_S)
        for failed in await self._sealed(await asyncio.to_thread(self._store.unfinished_retries, overdue, limit)):
            await self._finisher.retry(failed)
        before = now - timedelta(seconds=REQUEUE_AFTER_S)
        stale = await asyncio.to_thread(self._store.stale_pending, before, paused, limit)
        # A SCHEDULED retry whose executor stopped during the backoff never had its message sent.
        # (A limited task waiting for its turn is its keeper's to send, not overdue: none is found.)
        stale += await asyncio.to_thread(self._store.overdue_scheduled, overdue, paused, limit)
        stale = await self._sealed([r for r in stale if (r.id, r.attempt) not in self._requeued])
        if stale:
            await asyncio.to_thread(self._queue.produce_many, [r.message() for r in stale])
            for r in stale:
                self._requeued[(r.id, r.attempt)] = True
            while len(self._requeued) > _REQUEUED_KEPT:
                self._requeued.pop(next(iter(self._requeued)))
            self._stats["requeued"] += len(stale)
            log.warning("re-queued %d task(s) PENDING since before %s", len(stale), before.isoformat())
        return len(stale)
