"""The StatusKeepers of a deployment, as their callers see them: every record goes to the keeper
that owns its task (``keeper_of``), and answers come back in the order asked.

With ``RAYLANE_KEEPERS`` = K, no single keeper is on every task's path: each writes, times out
and answers waits for about 1/K of the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any

import ray

from raylane.actors.taskbook import WaitAnswer
from raylane.models import PackedRecord, TaskRecord, WriteOutcome
from raylane.protocol import keeper_name, keeper_of

# A claim's answer as a worker waits for it: a keeper's answer to a claim call (its reference,
# alone in a list), the place of the worker's task in it, and that keeper (see ``worker.invoke``).
Gate = tuple[list, int, Any]


class Keepers:
    """Routes writes, claims and waits to the keepers that own the tasks."""

    def __init__(self, namespace: str, keepers: int):
        self.count = keepers
        self.handles: list[Any] = [ray.get_actor(keeper_name(i), namespace=namespace) for i in range(keepers)]

    def of(self, task_id: str) -> Any:
        """The handle of the keeper that owns ``task_id``."""
        return self.handles[keeper_of(task_id, self.count)]

    def _split(self, ids: Sequence[str]) -> dict[int, list[int]]:
        """Positions of ``ids`` by owning keeper."""
        by: dict[int, list[int]] = {}
        for i, task_id in enumerate(ids):
            by.setdefault(keeper_of(task_id, self.count), []).append(i)
        return by

    def _send(self, method: str, records: Sequence[TaskRecord | PackedRecord]) -> tuple[dict[int, list[int]], list]:
        """Call ``method`` of each owning keeper with its records: the positions sent to each, and
        the calls' references in the same order."""
        packed = [PackedRecord.of(r) for r in records]
        by = {0: list(range(len(packed)))} if self.count == 1 else self._split([p.id for p in packed])
        refs = [getattr(self.handles[k], method).remote([packed[i] for i in idx]) for k, idx in by.items()]
        return by, refs

    @staticmethod
    async def _gathered(by: dict[int, list[int]], refs: list) -> list[WriteOutcome]:
        answers = await asyncio.gather(*refs)
        placed: dict[int, WriteOutcome] = {}
        for idx, outcomes in zip(by.values(), answers, strict=True):
            placed.update(zip(idx, outcomes, strict=True))
        return [placed[i] for i in range(len(placed))]

    async def _routed(self, method: str, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        by, refs = self._send(method, records)
        return await self._gathered(by, refs)

    async def write(self, records: Sequence[TaskRecord | PackedRecord]) -> list[WriteOutcome]:
        """Versioned writes through the owning keepers; one outcome per record, in order."""
        return await self._routed("write", records)

    def write_sent(self, records: Sequence[TaskRecord | PackedRecord]) -> asyncio.Task[list[WriteOutcome]]:
        """``write``, with the calls sent before this returns: what the caller does next (a produce)
        starts after the writes are on their way to the keepers."""
        by, refs = self._send("write", records)
        return asyncio.ensure_future(self._gathered(by, refs))

    def claim_gated(
        self, records: Sequence[TaskRecord | PackedRecord]
    ) -> tuple[list[Gate], Coroutine[Any, Any, list[WriteOutcome]]]:
        """RUNNING writes through the owning keepers (which then watch each task's deadline), sent
        now: for each record, the gate a worker may wait on (the reference of its keeper's answer,
        and the record's place in it), and the answers, to be awaited."""
        by, refs = self._send("claim", records)
        gates: list[Gate] = [([], 0, None)] * len(records)
        for (k, idx), ref in zip(by.items(), refs, strict=True):
            for place, i in enumerate(idx):
                # The reference in a list, so that Ray does not wait for it before the task starts.
                gates[i] = ([ref], place, self.handles[k])
        return gates, self._gathered(by, refs)

    async def wait_any(
        self, task_ids: list[str], timeout_s: float, tenant: str | None = None, unknown_first: bool = False
    ) -> WaitAnswer:
        """As ``StatusKeeper.wait_any``, across the keepers that own ``task_ids``: the first
        keeper with news answers; the waits left at the others are cancelled."""
        by = {0: list(range(len(task_ids)))} if self.count == 1 else self._split(task_ids)
        refs = [
            self.handles[k].wait_any.remote(
                [task_ids[i] for i in idx], timeout_s, tenant=tenant, unknown_first=unknown_first
            )
            for k, idx in by.items()
        ]
        if len(refs) == 1:
            return await refs[0]
        out = WaitAnswer([], [], [])
        pending = {asyncio.ensure_future(_awaited(r)): r for r in refs}
        try:
            while pending and not any(out):
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    pending.pop(fut)
                    got = fut.result()
                    out.records.extend(got.records)
                    out.unread.extend(got.unread)
                    out.unknown.extend(got.unknown)
        finally:
            for fut, ref in pending.items():
                fut.cancel()
                with contextlib.suppress(Exception):  # its waiter at the keeper goes now, not at its timeout
                    ray.cancel(ref)
        return out


async def _awaited(ref: ray.ObjectRef) -> Any:
    return await ref
