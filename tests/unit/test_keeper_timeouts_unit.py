"""Unit tier (no services): how the StatusKeeper times out a running task, on the in-memory store."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import ray

from raylane.actors import status_keeper
from raylane.actors.status_keeper import StatusKeeper, _Running
from raylane.models import PackedRecord, TaskMessage, TaskRecord, new_task_id
from raylane.protocol import UNRECORDED
from raylane.states import TaskState
from tests.memory_actors import NoMetrics, memory_config

OWNER = "Executor/0123456789abcdef"


def _keeper(monkeypatch, name: str) -> tuple[StatusKeeper, list[int], list[tuple]]:
    """A keeper on the in-memory store, with its heartbeat reads and its kills counted."""
    monkeypatch.setattr(ray, "get_actor", lambda *args, **kwargs: object())
    keeper = StatusKeeper(memory_config(name))
    keeper.metrics = NoMetrics()  # type: ignore[assignment]
    monkeypatch.setattr(keeper, "_ensure_loops", lambda: None)
    reads: list[int] = []
    beat = iter(range(1, 1_000_000))
    monkeypatch.setattr(keeper.store, "heartbeats", lambda: reads.append(1) or {OWNER: next(beat)})
    kills: list[tuple] = []
    monkeypatch.setattr(keeper, "_kill", lambda task_id, *args, **kwargs: kills.append((task_id, kwargs)))
    return keeper, reads, kills


def _pending() -> TaskRecord:
    msg = TaskMessage(id=new_task_id(), name="unit.sleep", queue="default", created_at=datetime.now(UTC), timeout_s=1.0)
    return TaskRecord.pending(msg)


def _running() -> TaskRecord:
    return _pending().moved_to(TaskState.RUNNING, lease_owner=OWNER)


async def _claimed(keeper: StatusKeeper) -> TaskRecord:
    """A task written PENDING and claimed through ``keeper``, as an executor claims it."""
    pending = _pending()
    record = pending.moved_to(TaskState.RUNNING, lease_owner=OWNER)
    await keeper.write([pending])
    [outcome] = await keeper.claim([record])
    assert outcome.accepted
    return record


def _time_out(keeper: StatusKeeper, record: TaskRecord) -> _Running:
    """Have ``keeper`` time ``record``'s task out now (watching it first if it does not yet)."""
    running = keeper._running.setdefault(record.id, _Running(PackedRecord.of(record), time.monotonic()))
    asyncio.run(keeper._time_out([running], time.monotonic()))
    return running


def test_a_timeout_whose_executor_is_seen_renewing_reads_no_heartbeats(monkeypatch):
    keeper, reads, kills = _keeper(monkeypatch, "timeout-renewing")
    keeper._leases.observe({OWNER: 1})
    keeper._leases.observe({OWNER: 2})  # its counter moved: seen renewing
    record = _running()

    _time_out(keeper, record)

    # The periodic look at the heartbeats already showed the executor alive: no search is made
    # on the way to the TIMED_OUT write.
    assert reads == []
    stored = keeper.store.get(record.id)
    assert stored is not None and stored.state is TaskState.TIMED_OUT
    assert keeper.stats["timeouts"] == 1
    assert kills == [(record.id, {"owner": OWNER})]  # and its executor is asked to stop it


def test_a_timeout_whose_executor_is_not_known_to_renew_reads_the_heartbeats_first(monkeypatch):
    keeper, reads, _ = _keeper(monkeypatch, "timeout-unknown")
    record = _running()

    running = _time_out(keeper, record)

    # One read shows the counter once, which is no evidence of renewal yet: nothing is written,
    # and the deadline is looked at again shortly.
    assert reads == [1]
    assert keeper.store.get(record.id) is None
    assert running.deadline is not None and keeper.stats["timeouts"] == 0


def test_a_timeout_whose_executor_renews_by_the_time_of_the_read_is_written(monkeypatch):
    keeper, reads, _ = _keeper(monkeypatch, "timeout-renews-now")
    keeper._leases.observe({OWNER: 0})  # seen once, long enough ago to be no evidence
    record = _running()

    _time_out(keeper, record)

    assert reads == [1]  # the read shows the counter moved: alive
    stored = keeper.store.get(record.id)
    assert stored is not None and stored.state is TaskState.TIMED_OUT


def test_the_deadline_loop_goes_on_while_a_timeout_is_written(monkeypatch):
    keeper, _, _ = _keeper(monkeypatch, "timeout-beside-loop")
    keeper._leases.observe({OWNER: 1})
    keeper._leases.observe({OWNER: 2})
    slow, quick = _running(), _running()
    held, second = asyncio.Event(), asyncio.Event()
    written: list[str] = []

    async def write(records):
        written.append(records[0].id)
        if len(written) == 1:
            await held.wait()  # the first TIMED_OUT write waits, as behind a busy store's bulk
        else:
            second.set()
        return [None] * len(records)

    monkeypatch.setattr(keeper, "write", write)

    async def scenario() -> None:
        now = time.monotonic()
        for record, deadline in ((slow, now), (quick, now + 0.2)):
            keeper._watch(_Running(PackedRecord.of(record), deadline))
        loop = asyncio.create_task(keeper._deadline_loop())
        try:
            await asyncio.wait_for(second.wait(), 10)
        except TimeoutError:
            pass  # the assertion below says what went wrong
        finally:
            held.set()
            loop.cancel()

    asyncio.run(scenario())
    # The second task's timeout was written while the first's write still waited.
    assert written == [slow.id, quick.id]


def test_the_first_timeout_after_a_keeper_starts_needs_no_second_look(monkeypatch):
    keeper, reads, _ = _keeper(monkeypatch, "timeout-first")
    # The executor's counter moves once a beat (seconds apart): not between two reads here.
    monkeypatch.setattr(keeper.store, "heartbeats", lambda: reads.append(1) or {OWNER: 7})
    looked = asyncio.Event()
    time_out = keeper._time_out

    async def first_look(*args):
        await time_out(*args)
        looked.set()  # the keeper's first judgement at the deadline is made

    monkeypatch.setattr(keeper, "_time_out", first_look)
    records: list[TaskRecord] = []

    async def scenario() -> None:
        loop = asyncio.create_task(keeper._deadline_loop())
        try:
            records.append(await _claimed(keeper))
            r = keeper._running[records[0].id]
            keeper._set_deadline(r, time.monotonic() + 0.2)  # a short timeout, for the test's sake
            await asyncio.wait_for(looked.wait(), 10)
        finally:
            loop.cancel()

    asyncio.run(scenario())
    [record] = records
    # The claim came from the executor, under its lease: it was alive then, and its task is timed
    # out at its deadline. Judged by its counter alone, it would have waited for the counter to
    # move (a beat, seconds), and a read or two.
    assert keeper.stats["timeouts"] == 1
    stored = keeper.store.get(record.id)
    assert stored is not None and stored.state is TaskState.TIMED_OUT


def _timed_out_now(keeper: StatusKeeper, record: TaskRecord) -> TaskRecord:
    _time_out(keeper, record)
    stored = keeper.store.get(record.id)
    assert stored is not None and stored.state is TaskState.TIMED_OUT
    return stored


def test_a_timed_out_member_says_when_it_began(monkeypatch):
    keeper, _, _ = _keeper(monkeypatch, "timeout-began")
    record = asyncio.run(_claimed(keeper))
    began = record.created_at.timestamp() + 0.75  # it waited behind its siblings

    assert asyncio.run(keeper.began(record.id, record.attempt, began))
    stored = _timed_out_now(keeper, record)

    # started_at is the claim; the hop says when the member began, relative to created_at.
    assert stored.hops is not None and stored.hops["began"] == 0.75


def test_a_member_whose_clock_restarts_elsewhere_has_no_begin_until_it_begins_again(monkeypatch):
    keeper, _, _ = _keeper(monkeypatch, "timeout-restarted")
    record = asyncio.run(_claimed(keeper))
    created = record.created_at.timestamp()

    asyncio.run(keeper.began(record.id, record.attempt, created + 0.5))
    asyncio.run(keeper.began(record.id, record.attempt, created + 2.0, 1.0, restarted=True))
    stored = _timed_out_now(keeper, record)

    # The restart is when its clock began again, not when it began: no hop claims otherwise.
    assert "began" not in (stored.hops or {})


def test_a_claim_that_overtook_its_tasks_pending_write_runs_and_the_submit_stands(monkeypatch):
    # The PENDING write runs beside the produce: the claim, on fast ways, may reach the keeper first.
    keeper, _, _ = _keeper(monkeypatch, "claim-overtakes")
    pending = _pending()
    running = pending.moved_to(TaskState.RUNNING, lease_owner=OWNER)

    async def main():
        claim = asyncio.create_task(keeper.claim([running]))
        while keeper.store.get(running.id) is None:  # the claim made the record
            await asyncio.sleep(0.001)
        [written] = await keeper.write([pending])
        [claimed] = await claim
        return written, claimed

    written, claimed = asyncio.run(main())
    assert written.accepted and claimed.accepted
    stored = keeper.store.get(running.id)
    assert stored.state is TaskState.RUNNING and stored.version == running.version
    assert (keeper.stats["unrecorded"], keeper.stats["overtaken"]) == (0, 1)


def test_a_claim_whose_task_never_had_a_record_is_refused_and_closed(monkeypatch):
    keeper, _, _ = _keeper(monkeypatch, "claim-unrecorded")
    monkeypatch.setattr(status_keeper, "_OVERTAKEN_GRACE_S", 0.05)
    pending = _pending()
    running = pending.moved_to(TaskState.RUNNING, lease_owner=OWNER)
    [claimed] = asyncio.run(keeper.claim([running]))
    assert not claimed.accepted and claimed.reason == UNRECORDED
    stored = keeper.store.get(running.id)
    assert (stored.state, stored.error_type) == (TaskState.FAILED, "NotEnqueued")
    # A PENDING write coming after the grace loses, as the submit's answer says.
    [late] = asyncio.run(keeper.write([pending]))
    assert not late.accepted


def test_an_end_that_reaches_the_keeper_before_the_deadline_wins_however_slow_the_store(monkeypatch):
    keeper, _, _ = _keeper(monkeypatch, "timeout-after-end")
    keeper._leases.observe({OWNER: 1})
    keeper._leases.observe({OWNER: 2})
    records: list[TaskRecord] = []

    async def scenario() -> None:
        records.append(await _claimed(keeper))
        write_many = keeper.store.write_many_async
        held = asyncio.Event()

        async def slow(batch):
            await held.wait()  # the store takes longer over this bulk than the task had left
            return await write_many(batch)

        monkeypatch.setattr(keeper.store, "write_many_async", slow)
        busy = asyncio.create_task(keeper.write([_pending()]))  # the bulk in flight
        done = records[0].moved_to(TaskState.SUCCEEDED, result=1)
        end = asyncio.create_task(keeper.write([done]))  # the task's end comes, and waits
        for _ in range(5):
            await asyncio.sleep(0)
        # Its deadline passes while the end waits behind the bulk: the TIMED_OUT comes after it.
        timeout = asyncio.create_task(keeper._time_out([keeper._running[done.id]], time.monotonic()))
        for _ in range(5):
            await asyncio.sleep(0)
        held.set()
        await asyncio.gather(busy, end, timeout)

    asyncio.run(scenario())
    stored = keeper.store.get(records[0].id)
    assert stored is not None and stored.state is TaskState.SUCCEEDED
    assert keeper.stats["timeouts"] == 0


def test_deadlines_pass_while_a_look_at_the_heartbeats_hangs(monkeypatch):
    import threading

    keeper, _, _ = _keeper(monkeypatch, "timeout-beside-heartbeats")
    keeper._leases.observe({OWNER: 1})
    keeper._leases.observe({OWNER: 2})  # seen renewing: its timeouts need no look of their own
    release = threading.Event()
    looks: list[int] = []

    def heartbeats():
        looks.append(1)
        release.wait(10)  # the store holds the read, as a stalled one does
        return {OWNER: 3}

    monkeypatch.setattr(keeper.store, "heartbeats", heartbeats)
    record = _running()
    seen: list[TaskState | None] = []

    async def scenario() -> None:
        keeper._watch(_Running(PackedRecord.of(record), time.monotonic() + 0.3))
        loop = asyncio.create_task(keeper._deadline_loop())
        try:
            for _ in range(250):  # up to 5 s
                stored = keeper.store.get(record.id)
                if stored is not None:
                    seen.append(stored.state)
                    return
                await asyncio.sleep(0.02)
        finally:
            release.set()
            loop.cancel()

    asyncio.run(scenario())
    assert looks  # the loop looked at the heartbeats (its first pass), and the look hung
    assert seen == [TaskState.TIMED_OUT]


class _Executor:
    """An executor as a keeper reaches it: it answers ``ends_held`` with ``held``, or never."""

    def __init__(self, held: list[tuple[str, int]] | None) -> None:
        from types import SimpleNamespace

        self.asked: list[list[tuple[str, int]]] = []
        self.ends_held = SimpleNamespace(remote=self._answer)
        self._held = held

    async def _answer(self, attempts):
        self.asked.append(attempts)
        if self._held is None:
            await asyncio.Event().wait()  # frozen
        return [a for a in attempts if a in self._held]


def _renewing(monkeypatch, name: str, executor: _Executor) -> StatusKeeper:
    keeper, _, _ = _keeper(monkeypatch, name)
    keeper._leases.observe({OWNER: 1})
    keeper._leases.observe({OWNER: 2})
    monkeypatch.setattr(keeper, "_executor", lambda name: executor if name == OWNER.split("/")[0] else None)
    return keeper


def test_a_timeout_waits_for_the_end_its_executor_holds(monkeypatch):
    record = _running()
    executor = _Executor(held=[(record.id, record.attempt)])
    keeper = _renewing(monkeypatch, "timeout-end-held", executor)

    running = _time_out(keeper, record)

    # The end came back before the deadline and waits behind other writes at the executor:
    # nothing is written, and the deadline is looked at again shortly.
    assert executor.asked == [[(record.id, record.attempt)]]
    assert keeper.store.get(record.id) is None
    assert running.deadline is not None and running.deadline - time.monotonic() <= status_keeper._HELD_LOOK_S
    assert keeper.stats["ends_awaited"] == 1 and keeper.stats["timeouts"] == 0


def test_an_end_held_too_long_no_longer_keeps_the_timeout_off(monkeypatch):
    record = _running()
    executor = _Executor(held=[(record.id, record.attempt)])
    keeper = _renewing(monkeypatch, "timeout-end-held-long", executor)
    running = _Running(PackedRecord.of(record), time.monotonic())
    running.held_since = time.monotonic() - status_keeper._HELD_AT_MOST_S  # its writes kept failing
    keeper._running[record.id] = running

    stored = _timed_out_now(keeper, record)

    assert stored.attempt == record.attempt and keeper.stats["timeouts"] == 1


def test_a_frozen_executor_is_taken_to_hold_no_end(monkeypatch):
    monkeypatch.setattr(status_keeper, "_ASK_HELD_S", 0.2)
    record = _running()
    executor = _Executor(held=None)  # never answers
    keeper = _renewing(monkeypatch, "timeout-executor-frozen", executor)

    _timed_out_now(keeper, record)

    assert executor.asked == [[(record.id, record.attempt)]]
