"""What the actors share besides their protocol (``raylane.protocol``): group commit and background tasks."""

from __future__ import annotations

import asyncio
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
