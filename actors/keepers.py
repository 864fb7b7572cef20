"""The StatusKeepers of a deployment, as their callers see them: every record goes to the keeper
that owns its task (``keeper_of``), and answers come back in the order asked.

With ``RAYLANE_KEEPERS`` = K, no single keeper is on every task's path: each writes, times out
and answers waits for about 1/K of the tasks. A caller that names its node sends its claims and
writes to the keepers of that node over their channels (``raylane.actors.channel``), and to the
others by Ray calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any

import ray

from raylane.actors.channel import ChannelClosed, Link, Method, or_by_ray
from raylane.actors.worker import ATTEMPT_OPEN, Gate, asked_attempt
from raylane.models import PackedRecord, TaskRecord, WriteOutcome
from raylane.protocol import WaitAnswer, keeper_name, keeper_of
from raylane.sockets import WAIT, record_row, records_from

CLAIM, WRITE = "claim", "write"
WAIT_IDS_MAX = 20_000  # task ids one wait by socket names at most
WAIT_S_MAX = 3600.0  # the longest one wait by socket is held
_CONNECT_EVERY_S = 5.0  # how often a caller without a channel to a keeper of its node tries again


def _wait_body(body: Any) -> tuple[list[str], float, bool]:
    """The task ids, seconds and ``unknown_first`` of a wait sent by socket (``TypeError`` or
    ``ValueError`` for what no caller sends)."""
    if not isinstance(body, list) or len(body) != 3:
        raise TypeError("a wait crosses as [task ids, seconds, unknown first]")
    ids, timeout_s, unknown_first = body
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > WAIT_IDS_MAX:
        raise TypeError(f"a wait names a list of at most {WAIT_IDS_MAX} task ids")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 <= timeout_s <= WAIT_S_MAX:
        raise ValueError(f"a wait is held 0 to {WAIT_S_MAX:g} seconds")
    if not isinstance(unknown_first, bool):
        raise TypeError("unknown_first is true or false")
    return ids, float(timeout_s), unknown_first


def keeper_methods(keeper: Any) -> dict[str, Method]:
    """The channel methods of a StatusKeeper: its ``claim`` and ``write`` (answering outcomes as
    lists), ``attempt_open``, which gated workers of its node ask, and ``wait_any``, which
    drivers of its node call to wait for their tasks (as their own, never a tenant's)."""

    def answering(run: Any) -> Any:
        async def answered(records: list[PackedRecord]) -> list[list]:
            return [list(o) for o in await run(records)]

        return answered

    async def attempt_open(attempt: tuple[str, int]) -> bool:
        return keeper.attempt_open(*attempt)

    async def wait_any(asked: tuple[list[str], float, bool]) -> dict:
        ids, timeout_s, unknown_first = asked
        answer = await keeper.wait_any(ids, timeout_s, unknown_first=unknown_first)
        return {"records": [record_row(p) for p in answer.records], "unread": answer.unread, "unknown": answer.unknown}

    return {
        CLAIM: Method(records_from, answering(keeper.claim)),
        WRITE: Method(records_from, answering(keeper.write)),
        ATTEMPT_OPEN: Method(asked_attempt, attempt_open),
        WAIT: Method(_wait_body, wait_any),
    }


async def _outcomes(sent: Awaitable[list[list]]) -> list[WriteOutcome]:
    return [WriteOutcome(*row) for row in await sent]


def _channel_of(keeper: Any) -> Any:
    return lambda: keeper.local_channel.remote()


class Keepers:
    """Routes writes, claims and waits to the keepers that own the tasks."""

    def __init__(self, namespace: str, keepers: int, node: str | None = None):
        self.count = keepers
        self.handles: list[Any] = [ray.get_actor(keeper_name(i), namespace=namespace) for i in range(keepers)]
        self.sent_by_socket = 0  # records sent over a keeper's channel
        # With ``node``, the keepers on it are called over their channels.
        self._links = (
            [Link(_channel_of(h), node, keeper_name(i), _CONNECT_EVERY_S) for i, h in enumerate(self.handles)]
            if node
            else None
        )

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
        the calls' answers (Ray references, or awaitables of a channel's) in the same order."""
        packed = [PackedRecord.of(r) for r in records]
        by = {0: list(range(len(packed)))} if self.count == 1 else self._split([p.id for p in packed])
        return by, [self._call(k, method, [packed[i] for i in idx]) for k, idx in by.items()]

    def _call(self, k: int, method: str, records: list[PackedRecord]) -> Any:
        """Send ``records`` to keeper ``k``'s ``method`` now: over its channel if open, else by Ray
        (also when the connection ends before the answer: a versioned write made twice is taken
        at most once)."""
        by_ray = lambda: getattr(self.handles[k], method).remote(records)  # noqa: E731
        client = self._links[k].client() if self._links else None
        if client is not None:
            with contextlib.suppress(ChannelClosed):
                sent = client.call(method, [record_row(r) for r in records])
                self.sent_by_socket += len(records)
                return or_by_ray(_outcomes(sent), by_ray)
        return by_ray()

    @property
    def sockets(self) -> int:
        """How many keepers are called over their channels now."""
        return sum(link.connected for link in self._links or [])

    async def close(self) -> None:
        """End the channels to this node's keepers."""
        for link in self._links or []:
            await link.close()

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
        return await self._routed(WRITE, records)

    def write_sent(self, records: Sequence[TaskRecord | PackedRecord]) -> asyncio.Task[list[WriteOutcome]]:
        """``write``, with the calls sent before this returns: what the caller does next (a produce)
        starts after the writes are on their way to the keepers."""
        by, refs = self._send(WRITE, records)
        return asyncio.ensure_future(self._gathered(by, refs))

    def claim_gated(
        self, records: Sequence[TaskRecord | PackedRecord]
    ) -> tuple[list[Gate], Coroutine[Any, Any, list[WriteOutcome]]]:
        """RUNNING writes through the owning keepers (which then watch each task's deadline), sent
        now: for each record, the gate a worker may wait on (the reference of its keeper's answer,
        and the record's place in it), and the answers, to be awaited."""
        by, answers = self._send(CLAIM, records)
        gates: list[Gate] = [([], 0, None, None)] * len(records)
        for (k, idx), answer in zip(by.items(), answers, strict=True):
            # The reference in a list, so that Ray does not wait for it before the task starts.
            ref = [answer] if isinstance(answer, ray.ObjectRef) else []
            address = self._links[k].address if self._links else None
            for place, i in enumerate(idx):
                gates[i] = (ref, place, self.handles[k], address)
        return gates, self._gathered(by, answers)

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
