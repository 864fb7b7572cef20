"""Workflows move on from their tasks' ends (see ``raylane.workflows`` and ``FlowLinks``).

Every task of a workflow is created with the workflow; the ones with parents wait SCHEDULED.
When a task of a workflow ends for good (its terminal write accepted, no retry following),
the StatusKeeper that wrote that end moves the workflow on, here:

- each child whose parents have all ended is started (its message sent, with its parents'
  results among its arguments), or, when a parent did not succeed, cancelled as the workflow's
  ``on_failure`` says; a cancelled child's own end then moves on its children in turn;
- under ``on_failure="cancel"`` a task that did not succeed also cancels every unfinished task
  of its workflow.

Nothing here needs to happen exactly once. Two parents of one child that end together may both
send the child's message: only one claim of it is accepted. A keeper that stops between an end
and its consequences leaves children waiting with all their parents ended; every keeper sweeps
its own such children (``sweep``), at start and then every ``SWEEP_EVERY_S``, and moves them on.
Parents are read by id (real-time), so a parent's accepted end is always seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from raylane.models import TaskMessage, TaskRecord, WriteOutcome, utcnow
from raylane.protocol import keeper_of
from raylane.signing import Signer, ended_as_forged
from raylane.states import TaskState
from raylane.store import StatusStore, TaskQuery

log = logging.getLogger("raylane.workflows")

Write = Callable[[Sequence[TaskRecord]], Awaitable[list[WriteOutcome]]]
Send = Callable[[list[TaskMessage]], Awaitable[None]]

SWEEP_EVERY_S = 10.0
SWEEP_AFTER_S = 10.0  # a child waiting this long after its last write is looked at by the sweep
_PAGE = 500
_SWEPT_AT_MOST = 2000  # the oldest waiting children a sweep looks at
_PARENTS_AT_ONCE = 100
_SENT_KEPT = 100_000


_UNFINISHED = [s for s in TaskState if not s.terminal]


class Flows:
    """Moves the workflows of one StatusKeeper's tasks on (see the module's docstring).

    ``write`` sends records to their own keepers; ``send`` produces messages to their queues.
    A waiting child is read from the store: one that does not bear the cluster's seal is ended
    (``ended_as_forged``), never started."""

    def __init__(self, store: StatusStore, write: Write, send: Send, signer: Signer, shard: tuple[int, int] = (0, 1)):
        self.store = store
        self.write = write
        self.send = send
        self.signer = signer
        self.shard = shard
        self._sent: OrderedDict[str, None] = OrderedDict()  # children this keeper started, bounded
        self.stats = {"started": 0, "cancelled": 0, "forged": 0, "swept": 0, "errors": 0}

    async def ended(self, task: TaskRecord) -> None:
        """``task``, of a workflow, has ended for good: move its workflow on. Raises on an
        outage; the sweep finishes what this did not."""
        flow = task.flow
        if flow is None:
            return
        if task.state is not TaskState.SUCCEEDED and flow.on_failure == "cancel":
            await self._cancel_workflow(task)
        if flow.children:
            found = await asyncio.to_thread(self.store.get_many, flow.children)
            await self.advance([r for r in found.values() if r.waits_for_parents])

    async def advance(self, children: list[TaskRecord]) -> int:
        """Start, or cancel, each of ``children`` whose parents have all ended; the rest wait on.
        Returns how many were moved on."""
        children, forged = self.signer.split(children)
        cancel: list[TaskRecord] = [ended_as_forged(r) for r in forged]
        if forged:
            log.warning("%d waiting task(s) do not bear this cluster's seal; ended, not started", len(forged))
        parents = await self._parents(children) if children else {}
        start: list[TaskMessage] = []
        for child in children:
            assert child.flow is not None
            mine = [parents.get(p) for p in child.flow.waiting_on]
            if any(p is not None and not p.finished for p in mine):
                continue
            # A parent whose record is gone (purged) can give no result: it counts as failed.
            failed = next((p for p in mine if p is None or p.state is not TaskState.SUCCEEDED), None)
            if failed is not None and child.flow.on_failure != "continue":
                cancel.append(self._cancelled(child, failed, child.flow.waiting_on[mine.index(failed)]))
            else:
                results = [p.result if p is not None and p.state is TaskState.SUCCEEDED else None for p in mine]
                # Its parents' results are now among its arguments: the order it carries on is sealed anew.
                start.append(self.signer.sealed(child.with_parents_results(results)))
        if cancel:
            outcomes = await self.write(cancel)
            self.stats["forged"] += sum(o.accepted for o in outcomes[: len(forged)])
            self.stats["cancelled"] += sum(o.accepted for o in outcomes[len(forged) :])
        if start:
            await self.send(start)
            self.stats["started"] += len(start)
            for m in start:
                self._sent[m.id] = None
            while len(self._sent) > _SENT_KEPT:
                self._sent.popitem(last=False)
        return len(start) + len(cancel)

    async def _parents(self, children: list[TaskRecord]) -> dict[str, TaskRecord]:
        """The records of the parents of ``children``. For one child with many parents (a chord's
        callback, whose every parent's end comes here), a chunk at a time, stopping at the first
        chunk with a parent still unfinished: the child cannot start yet, and a chord of n
        parents then costs about n chunks of reads in all, not n times n."""
        ids = list(dict.fromkeys(p for c in children if c.flow for p in c.flow.waiting_on))
        if len(children) > 1 or len(ids) <= _PARENTS_AT_ONCE:
            return await asyncio.to_thread(self.store.get_many, ids)
        found: dict[str, TaskRecord] = {}
        for i in range(0, len(ids), _PARENTS_AT_ONCE):
            chunk = await asyncio.to_thread(self.store.get_many, ids[i : i + _PARENTS_AT_ONCE])
            found.update(chunk)
            if any(not r.finished for r in chunk.values()):
                break
        return found

    @staticmethod
    def _cancelled(child: TaskRecord, parent: TaskRecord | None, parent_id: str) -> TaskRecord:
        if parent is None:
            why = f"its parent {parent_id} has no record"
        else:
            why = f"its parent {parent.id} ({parent.name}) ended {parent.state.value}"
            if parent.error_type:
                why += f": {parent.error_type}"
        return child.moved_to(TaskState.CANCELLED, error_type="ParentFailed", error=f"not started: {why}")

    async def _cancel_workflow(self, failed: TaskRecord) -> None:
        """Cancel every unfinished task of ``failed``'s workflow (``on_failure="cancel"``)."""
        # Tasks created with the workflow may not be searchable yet.
        await asyncio.to_thread(self.store.refresh)
        query = TaskQuery(workflow_id=failed.workflow_id, state=_UNFINISHED)
        after = None
        while True:
            page, after = await asyncio.to_thread(self.store.search, query, _PAGE, after)
            ends = [
                r.moved_to(
                    TaskState.CANCELLED,
                    attempt=r.attempt + 1 if r.will_retry else r.attempt,
                    will_retry=False,
                    error_type="WorkflowFailed",
                    error=f"cancelled: task {failed.id} ({failed.name}) of its workflow ended {failed.state.value}",
                )
                for r in page
                if not r.finished
            ]
            if ends:
                outcomes = await self.write(ends)
                self.stats["cancelled"] += sum(o.accepted for o in outcomes)
            if after is None or not page:
                return

    async def sweep(self, older_than_s: float = SWEEP_AFTER_S) -> int:
        """Move on this keeper's waiting children whose parents have all ended, and that were
        written more than ``older_than_s`` ago (their parents' keepers may have stopped before
        they could). A child this keeper started already is not started again (a duplicate
        message would be harmless, but a child can wait long in a busy queue)."""
        index, shards = self.shard
        before = utcnow() - timedelta(seconds=older_than_s)
        waiting = await asyncio.to_thread(self.store.waiting_for_parents, before, _SWEPT_AT_MOST)
        mine = [r for r in waiting if keeper_of(r.id, shards) == index and r.id not in self._sent]
        moved = 0
        for i in range(0, len(mine), _PAGE):
            moved += await self.advance(mine[i : i + _PAGE])
        self.stats["swept"] += moved
        return moved

    async def loop(self, every_s: float = SWEEP_EVERY_S) -> None:
        """Sweep at once and then every ``every_s`` seconds, for ever."""
        while True:
            try:
                await self.sweep()
            except Exception as e:  # the store or Kafka is away: the next sweep tries again
                self.stats["errors"] += 1
                log.warning("workflow sweep failed: %r", e)
            await asyncio.sleep(every_s)
