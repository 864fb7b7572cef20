"""What a StatusKeeper knows of its tasks for the waits it answers, learnt from the writes it saw
accepted: which are open, which ended lately and how, the final records of the newest of
those, and who waits for which.

A keeper is the only writer of its tasks' records, so what it saw accepted is what the store
holds, for as long as it remembers. A wait on a task the keeper knows needs no read of the store:
a task just submitted is open here (its PENDING record came through this keeper), and one that
ended a moment ago has its final record here. Only what the keeper does not know (it restarted
since, or the task is older than what it keeps) is looked up in the store, by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

from raylane.models import PackedRecord
from raylane.protocol import WaitAnswer
from raylane.states import TaskState

# What the book holds at most, about 120 MiB in all when full: beyond it, waits on the oldest
# tasks read the store, as they did before the book.
ENDED_KEPT = 100_000  # ids of ended tasks (with their attempt and state), about 200 bytes each
OPEN_KEPT = 200_000  # ids of open tasks (with their attempt and tenant), about 200 bytes each
FINALS_BYTES = 64 << 20  # final records of the newest ended tasks, by the size of their documents


class Waiter:
    """One caller waiting for terminal records of ``expected`` tasks: woken by the first, it takes
    what else arrives in the next ``gather_s`` too, so a busy keeper answers in batches. Once
    every task it waits for has arrived there is nothing to gather: it answers at once.

    Waits by Ray run on the keeper's ``waits`` event loop, writes (and waits by socket) on its
    default one (each Ray concurrency group has a loop of its own, on a thread of its own):
    ``deliver`` is called from the writes' loop and hands the record over to the waiter's."""

    def __init__(self, gather_s: float, expected: int):
        self.records: list[PackedRecord] = []
        self.arrived = asyncio.Event()
        self.complete = asyncio.Event()
        self.gather_s = gather_s
        self.expected = expected
        self._loop = asyncio.get_running_loop()

    def deliver(self, record: PackedRecord) -> None:
        """Hand ``record`` to the waiter (from any thread)."""
        self._loop.call_soon_threadsafe(self._take_one, record)

    def _take_one(self, record: PackedRecord) -> None:
        self.records.append(record)
        self.arrived.set()
        if len(self.records) >= self.expected:
            self.complete.set()

    async def take(self, timeout_s: float) -> list[PackedRecord]:
        """What arrived by ``timeout_s`` (waiting ``gather_s`` more after the first arrival)."""
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout_s)
        except TimeoutError:
            return self.records
        if self.gather_s > 0 and not self.complete.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.complete.wait(), self.gather_s)
        return self.records


class TaskBook:
    """A keeper's memory of its tasks, bounded: the newest ``open_kept`` open tasks, the newest
    ``ended_kept`` ended ones, and the final records of the newest of those up to ``finals_bytes``.
    Writes are noted from the keeper's writes loop and waits come from its waits loop: one lock
    keeps "seen to end" and "waiting" from missing each other."""

    def __init__(self, ended_kept: int = ENDED_KEPT, open_kept: int = OPEN_KEPT, finals_bytes: int = FINALS_BYTES):
        self._ended_kept = ended_kept
        self._open_kept = open_kept
        self._finals_budget = finals_bytes
        self._open: OrderedDict[str, tuple[int, str | None]] = OrderedDict()  # id -> (attempt, tenant)
        self._ended: OrderedDict[str, tuple[int, TaskState]] = OrderedDict()  # id -> (attempt, state)
        self._finals: OrderedDict[str, PackedRecord] = OrderedDict()
        self._finals_bytes = 0
        self._waiters: dict[str, list[Waiter]] = {}
        self._lock = threading.Lock()

    def opened(self, record: PackedRecord) -> None:
        """An accepted write that leaves its task open (PENDING, SCHEDULED, RUNNING, or an end
        that a retry follows). A newer attempt of a task that had ended opens it again: a wait
        on it is for the new attempt's end."""
        with self._lock:
            ended = self._ended.get(record.id)
            if ended is not None:
                if ended[0] >= record.attempt:
                    return
                del self._ended[record.id]
                self._drop_final(record.id)
            self._open[record.id] = (record.attempt, record.tenant)
            self._open.move_to_end(record.id)
            while len(self._open) > self._open_kept:
                self._open.popitem(last=False)

    def ended(self, record: PackedRecord) -> list[Waiter]:
        """An accepted end of a task's last attempt: remembered, with its record while there is
        room; returns the waiters to hand the record to."""
        with self._lock:
            self._open.pop(record.id, None)
            self._ended[record.id] = (record.attempt, record.state)
            self._ended.move_to_end(record.id)
            while len(self._ended) > self._ended_kept:
                gone, _ = self._ended.popitem(last=False)
                self._drop_final(gone)
            self._drop_final(record.id)
            self._finals[record.id] = record
            self._finals_bytes += len(record.doc)
            while self._finals_bytes > self._finals_budget and self._finals:
                _, old = self._finals.popitem(last=False)
                self._finals_bytes -= len(old.doc)
            return self._waiters.pop(record.id, [])

    def _drop_final(self, task_id: str) -> None:
        old = self._finals.pop(task_id, None)
        if old is not None:
            self._finals_bytes -= len(old.doc)

    def ended_as(self, task_id: str) -> tuple[int, TaskState] | None:
        """The attempt and state a task ended with, if it ended lately."""
        return self._ended.get(task_id)

    def watch(
        self, task_ids: Sequence[str], waiter: Waiter, tenant: str | None, unknown_first: bool
    ) -> WaitAnswer | None:
        """Register ``waiter`` for the ends of ``task_ids``, unless there is something to say at
        once: then what (and nothing is registered). That is so when one of them ended already,
        or, with ``unknown_first``, when one is not known open here as ``tenant``'s task (its
        caller then looks it up in the store, and waits again)."""
        with self._lock:
            ended = [i for i in task_ids if i in self._ended]
            unknown = [i for i in task_ids if not self._open_for(i, tenant)] if unknown_first else []
            unknown = [i for i in unknown if i not in self._ended]
            if ended or unknown:
                held = [self._finals[i] for i in ended if i in self._finals]
                return WaitAnswer(held, [i for i in ended if i not in self._finals], unknown)
            for task_id in task_ids:
                self._waiters.setdefault(task_id, []).append(waiter)
            return None

    def _open_for(self, task_id: str, tenant: str | None) -> bool:
        entry = self._open.get(task_id)
        return entry is not None and (tenant is None or entry[1] == tenant)

    def unwatch(self, task_ids: Sequence[str], waiter: Waiter) -> None:
        """``waiter`` waits no more."""
        with self._lock:
            for task_id in task_ids:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters[:] = [w for w in waiters if w is not waiter]
                    if not waiters:
                        del self._waiters[task_id]

    def waited_for(self) -> int:
        """How many tasks someone waits for."""
        return len(self._waiters)

    def sizes(self) -> dict[str, int]:
        """How much the book holds: open and ended tasks, final records and their bytes."""
        return {
            "open": len(self._open),
            "ended": len(self._ended),
            "finals": len(self._finals),
            "finals_bytes": self._finals_bytes,
        }
