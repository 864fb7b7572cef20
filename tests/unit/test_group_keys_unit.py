"""Unit tier (no services): the executor's side of groups. A task id recurs across groups (a
retry's new attempt may be grouped while the group of its last attempt still runs a sibling),
so a group's worker speaks to the executor under a key of that group alone, and what it says
reaches no other group."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace

from raylane.actors import runs as runs_module
from raylane.actors.common import Background, PrioritySlots
from raylane.actors.runs import Runs
from raylane.actors.worker import MemberEnd
from raylane.limits import Limits
from raylane.models import TaskMessage, TaskRecord
from raylane.protocol import Reply


class _Stream:
    """A group's stream of reports, as the executor reads it; it ends when told."""

    def __init__(self):
        self.over = asyncio.Event()

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.over.wait()
        raise StopAsyncIteration


class _RemoteGroup:
    """Stands in for ``remote_group``: notes each group launched (its members and key)."""

    def __init__(self):
        self.launched: list[tuple[list[tuple[str, int]], str, _Stream]] = []

    def options(self, **_):
        return self

    def remote(self, items, _signal_box, _executor, key, _limits, _lease):
        stream = _Stream()
        self.launched.append(([(i[0], i[1]) for i in items], key, stream))
        return stream


class _Finisher:
    def __init__(self):
        self.settled: list = []

    async def settle_many(self, ends):
        self.settled.extend(ends)


def _member(task_id: str, attempt: int) -> tuple[TaskMessage, TaskRecord]:
    msg = TaskMessage(id=task_id, name="n", queue="q", created_at=datetime.now(UTC), attempt=attempt)
    return msg, TaskRecord.pending(msg)


async def _settle() -> None:
    for _ in range(5):  # the background tasks a call spawned take a few turns of the loop
        await asyncio.sleep(0)


def test_a_groups_worker_cannot_move_a_later_group_of_the_same_first_task(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    actor = SimpleNamespace(group_signal=SimpleNamespace(remote=lambda key: None))

    async def scenario() -> tuple[Runs, Counter]:
        stats: Counter = Counter()
        runs = Runs(
            actor=actor,
            node_id="node",
            lease=SimpleNamespace(until=0.0),
            limits=Limits(),
            slots=PrioritySlots(8),
            cpus=2,
            finisher=_Finisher(),
            keepers=None,
            stats=stats,
            background=Background(logging.getLogger("test")),
        )
        x, y, z = "a" * 32, "b" * 32, "c" * 32
        # Attempt 0 of x runs first in a group with y; x fails at once (its retry is a new attempt).
        runs.launch([_member(x, 0), _member(y, 0)])
        await _settle()
        [(_, first_key, first_stream)] = remote.launched
        failed = Reply.failure("ConnectionError", "fails on purpose")
        assert runs.group_advance(first_key, [MemberEnd(x, True, failed)], 2) == 2
        # Attempt 1 of x is grouped, first again, with z while y still runs in the first group.
        runs.launch([_member(x, 1), _member(z, 0)])
        await _settle()
        # y has run long: the first group's worker gives back its leave for the members after y.
        # None are left in that group; the second group's are not that worker's to give back.
        runs.group_long(first_key, y, 2)
        await _settle()
        assert len(remote.launched) == 2, f"members were moved out of the wrong group: {remote.launched[2:]}"
        _, second_key, second_stream = remote.launched[1]
        assert runs.group_advance(second_key, [], 1) == 1  # the second group's worker may start x
        done = Reply(True, "done")
        assert runs.group_advance(second_key, [MemberEnd(x, True, done)], 2) == 2
        runs.group_report(second_key, [MemberEnd(z, True, done)])
        runs.group_report(first_key, [MemberEnd(y, True, done)])
        first_stream.over.set()
        second_stream.over.set()
        await _settle()
        # Both groups are over: their keys are forgotten, and a late call under one is refused.
        assert runs.group_advance(first_key, [], 3) == 0
        return runs, stats

    runs, stats = asyncio.run(scenario())
    assert stats["moved_waiting"] == 0
    assert runs.running_now() == 0
