"""What the actors share besides their protocol (``raylane.protocol``): group commit and background tasks."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class GroupCommit:
    """Coalesces concurrent calls into batches: one ``flush(batch)`` in flight at a time, and
    items that arrive meanwhile form the next batch. Batches grow with load; an idle caller
    is flushed at once."""

    def __init__(self, flush: Callable[[list], Awaitable[list]], max_batch: int = 1000):
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list = []
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def submit_many(self, items: list) -> list:
        """Results of ``flush`` for ``items``, in order; a failed flush raises in every caller of that batch."""
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=False))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as e:  # every waiter of the batch learns of the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), result in zip(batch, results, strict=False):
                    if not fut.done():
                        fut.set_result(result)


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
