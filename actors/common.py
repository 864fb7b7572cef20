"""What the actors share besides their protocol (``raylane.protocol``): group commit, background
tasks, and the tuning of a control actor's collector."""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

# Allocations (less deallocations) between two young collections in a control actor: enough
# that the objects of a batch in flight (messages, records, outcomes, for a thousand tasks) are
# mostly gone by the next one, rather than promoted and scanned again by each older collection.
YOUNG_COLLECTION_EVERY = 20_000


def settle_collector() -> None:
    """Tune this process's garbage collector for a control actor, once it has started.

    Python collects its youngest objects every 700 allocations, and every so often scans all the
    objects the process holds. A Ray actor's modules and clients are about a hundred thousand
    objects, a full scan of them tens of milliseconds; and a control actor makes and drops a
    few dozen objects per task (messages, records, outcomes), thousands of tasks a second. So
    what the actor holds once started is kept out of the scans for good (``gc.freeze``: it
    lives as long as the process), and young collections run less often, when the objects of a
    batch in flight are mostly gone. Reference cycles made later are still collected."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_EVERY), middle, old)


class GroupCommit:
    """Coalesces concurrent calls into batches: one ``flush(batch)`` in flight at a time, and
    items that arrive meanwhile form the next batch. Batches grow with load; an idle caller
    is flushed at once."""

    def __init__(self, flush: Callable[[list], Awaitable[list]], max_batch: int = 1000):
        self._flush = flush
        self._max_batch = max_batch
        # Calls not yet flushed whole, oldest first, each with the index of its first item not yet
        # taken. One future per call, not per item: a call brings hundreds of items at once.
        self._pending: deque[tuple[_Call, int]] = deque()
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def submit_many(self, items: list) -> list:
        """Results of ``flush`` for ``items``, in order; a failed flush raises in every caller of that batch."""
        if not items:
            return []
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.create_task(self._run())
        call = _Call(items, asyncio.get_running_loop().create_future())
        self._pending.append((call, 0))
        self._wakeup.set()
        return await call.future

    def _take(self) -> list[tuple[_Call, int, int]]:
        """The next batch: up to ``max_batch`` items, as (call, first, end) slices of the oldest calls."""
        batch: list[tuple[_Call, int, int]] = []
        room = self._max_batch
        while self._pending and room:
            call, first = self._pending[0]
            end = min(len(call.items), first + room)
            batch.append((call, first, end))
            room -= end - first
            if end == len(call.items):
                self._pending.popleft()
            else:
                self._pending[0] = (call, end)
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._take()
                try:
                    results = await self._flush([item for call, first, end in batch for item in call.items[first:end]])
                except Exception as e:  # every caller of the batch learns of the failure
                    for call, _, _ in batch:
                        if not call.future.done():
                            call.future.set_exception(e)
                    continue
                at = 0
                for call, first, end in batch:
                    call.results[first:end] = results[at : at + end - first]
                    at += end - first
                    call.left -= end - first
                    if not call.left and not call.future.done():
                        call.future.set_result(call.results)


class _Call:
    """One ``submit_many`` call: its items, their results so far, and how many are still to come."""

    __slots__ = ("future", "items", "left", "results")

    def __init__(self, items: list, future: asyncio.Future) -> None:
        self.items = items
        self.future = future
        self.results: list = [None] * len(items)
        self.left = len(items)


class Background:
    """Tasks an actor starts and does not await: each is kept until it ends (the event loop holds
    only weak references, so an unkept task may be collected while it still holds a run slot),
    and an error it ends with is logged rather than lost."""

    def __init__(self, log: logging.Logger) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._log = log

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run ``coro`` in the background."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("background task failed", exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)


class PrioritySlots:
    """A semaphore whose waiters are served highest ``priority`` first, then in arrival order:
    an executor's run slots, so that a priority-9 task waiting for a slot starts before every
    waiting task of lower priority. Without priorities it behaves as ``asyncio.Semaphore``."""

    def __init__(self, value: int):
        self._free = value
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._arrival = 0

    def locked(self) -> bool:
        """Whether an ``acquire`` would wait."""
        return self._free == 0 or any(not f.done() for _, _, f in self._waiters)

    async def acquire(self, priority: int = 0) -> None:
        """Take a slot, waiting behind every waiter of higher or equal priority that came first."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._arrival += 1
        heapq.heappush(self._waiters, (-priority, self._arrival, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter by priority, else to the pool."""
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1
