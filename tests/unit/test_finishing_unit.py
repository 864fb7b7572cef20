"""Unit tier (no services): which ends an executor's Finisher holds, not yet written."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from raylane.actors.finishing import Finisher
from raylane.models import TaskMessage, TaskRecord, WriteOutcome, new_task_id
from raylane.protocol import Reply
from raylane.states import TaskState

OWNER = "Executor/0123456789abcdef"


class _Keepers:
    """Keepers whose first write fails once released with ``fail``, and hangs until ``release``
    is set, as behind a busy store's bulk."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[list[str]] = []
        self.fail = False

    async def write(self, records):
        self.calls.append([r.id for r in records])
        if len(self.calls) == 1:
            await self.release.wait()
            if self.fail:
                from raylane.errors import StoreUnavailable

                raise StoreUnavailable("the store is down")
        return [WriteOutcome(r.id, r.version, accepted=True, status=200) for r in records]


def _running() -> TaskRecord:
    msg = TaskMessage(id=new_task_id(), name="unit.work", queue="default", created_at=datetime.now(UTC), timeout_s=5)
    return TaskRecord.pending(msg).moved_to(TaskState.RUNNING, lease_owner=OWNER)


async def _until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} did not happen")


def test_an_end_is_held_from_its_reply_until_its_keeper_answers():
    async def main():
        keepers = _Keepers()
        finisher = Finisher(keepers, queue=None, stats=Counter())  # type: ignore[arg-type]
        first, second, other = _running(), _running(), _running()
        everyone = [(r.id, r.attempt) for r in (first, second, other)]
        assert finisher.held(everyone) == []
        writing = asyncio.create_task(finisher.settle_many([(first, Reply(True, 1))]))
        await _until(lambda: keepers.calls, "the first write")
        # The second end waits for the write in flight: both are held, and nothing else.
        waiting = asyncio.create_task(finisher.settle_many([(second, Reply(True, 2))]))
        await _until(lambda: len(finisher.held(everyone)) == 2, "the second end to be held")
        assert finisher.held(everyone) == [(first.id, 0), (second.id, 0)]
        assert finisher.held([(first.id, 1)]) == []  # another attempt of the task holds nothing
        keepers.release.set()
        await asyncio.gather(writing, waiting)
        assert finisher.held(everyone) == []

    asyncio.run(main())


def test_an_end_whose_write_failed_is_held_while_it_is_tried_again():
    async def main():
        keepers = _Keepers()
        keepers.fail = True
        finisher = Finisher(keepers, queue=None, stats=Counter())  # type: ignore[arg-type]
        running = _running()
        writing = asyncio.create_task(finisher.settle_many([(running, Reply(True, 1))]))
        await _until(lambda: keepers.calls, "the first write")
        keepers.release.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert finisher.held([(running.id, 0)]) == [(running.id, 0)]  # failed, to be sent again
        await writing  # the second try is taken
        assert len(keepers.calls) == 2 and finisher.held([(running.id, 0)]) == []

    asyncio.run(main())
