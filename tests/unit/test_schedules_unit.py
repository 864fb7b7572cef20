"""Schedules without services: tick arithmetic, the catch-up policy, and schedulers racing on the twin."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from raylane.actors.scheduler import Scheduler
from raylane.memory import InMemoryStore
from raylane.schedules import MAX_CATCH_UP, Schedule
from raylane.states import TaskState
from raylane.store import TaskQuery

from contracts import SIGNER, message, schedule

T = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def every(seconds: float, **kw) -> Schedule:
    return schedule("s", every_s=seconds, **kw).model_copy(update={"created_at": T})


def test_every_ticks_fall_on_multiples_of_the_interval():
    s = every(300)
    assert s.next_tick(T + timedelta(seconds=1)) == T + timedelta(minutes=5)
    assert s.next_tick(T) == T + timedelta(minutes=5)  # strictly after
    assert s.last_tick_by(T + timedelta(minutes=7)) == T + timedelta(minutes=5)


def test_cron_follows_its_time_zone_across_daylight_saving():
    # 02:30 local does not exist in Paris on 2026-03-29 (clocks go 02:00 -> 03:00).
    s = schedule("c", cron="30 2 * * *", timezone="Europe/Paris")
    first = s.next_tick(datetime(2026, 3, 27, 12, tzinfo=UTC))
    assert first == datetime(2026, 3, 28, 1, 30, tzinfo=UTC)  # 02:30 CET
    later = s.next_tick(datetime(2026, 3, 30, 12, tzinfo=UTC))
    assert later == datetime(2026, 3, 31, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert s.last_tick_by(datetime(2026, 3, 28, 1, 30, tzinfo=UTC)) == datetime(2026, 3, 28, 1, 30, tzinfo=UTC)


def test_on_time_ticks_fire_and_the_cursor_moves():
    s = every(1)
    ticks, newest = s.due(T + timedelta(seconds=2.5))
    assert ticks == [T + timedelta(seconds=1), T + timedelta(seconds=2)] and newest == ticks[-1]
    s = s.model_copy(update={"last_tick": newest})
    assert s.due(T + timedelta(seconds=2.9)) == ([], None)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("none", []), ("last", [T + timedelta(minutes=10)]), ("all", [T + timedelta(minutes=k) for k in range(1, 11)])],
)
def test_missed_ticks_follow_the_catch_up_policy(policy, expected):
    s = every(60, catch_up=policy)
    ticks, newest = s.due(T + timedelta(minutes=10, seconds=30))  # every tick is more than 5 s late
    assert ticks == expected
    assert newest == T + timedelta(minutes=10)


def test_catch_up_all_is_bounded_per_pass_and_resumes():
    s = every(1, catch_up="all")
    now = T + timedelta(seconds=MAX_CATCH_UP + 500)
    ticks, newest = s.due(now)
    assert len(ticks) == MAX_CATCH_UP and newest == ticks[-1]
    rest, last = s.model_copy(update={"last_tick": newest}).due(now)
    assert len(rest) == 500 and last == now


def test_ticks_of_a_paused_schedule_are_skipped():
    s = every(1, catch_up="all").model_copy(update={"paused": True})
    ticks, newest = s.due(T + timedelta(seconds=5))
    assert ticks == [] and newest == T + timedelta(seconds=5)
    assert s.upcoming() is None


@pytest.mark.parametrize(
    "spec",
    [
        {"every_s": 60, "cron": "* * * * *"},
        {},
        {"cron": "61 * * * *"},
        {"cron": "* * * *"},
        {"every_s": 0.1},
        {"every_s": 60, "timezone": "Mars/Olympus"},
        {"every_s": 60, "catch_up": "some"},
    ],
)
def test_a_bad_schedule_is_refused(spec):
    with pytest.raises(ValidationError):
        Schedule(id="x", task="demo.add", **spec)


def test_tick_ids_are_fixed_by_schedule_tenant_and_tick():
    a, b = schedule("a"), schedule("a", tenant="t1")
    assert a.tick_task_id(T) == schedule("a").tick_task_id(T)
    assert len({a.tick_task_id(T), b.tick_task_id(T), a.tick_task_id(T + timedelta(seconds=60))}) == 3
    rec = a.tick_record(T, T)
    assert rec.state is TaskState.SCHEDULED and rec.version == 1 and rec.schedule_id == "a" and rec.not_before == T


def test_two_schedulers_and_a_restart_give_one_task_per_tick():
    """Two schedulers race over 30 one-second ticks in random order, one of them replaced by a
    fresh instance (a restart) halfway: every tick has exactly one task."""
    store = InMemoryStore()
    store.save_schedule(schedule("race", every_s=1).model_copy(update={"created_at": T, "message": message()}))
    now = [T]

    async def write(records):
        return store.write_many(records)

    made: list[Scheduler] = []

    def make():
        made.append(Scheduler(store, write, SIGNER, clock=lambda: now[0]))
        return made[-1]

    async def drive():
        rng = random.Random(7)
        pair = [make(), make()]
        fired = 0
        for step in range(1, 61):
            now[0] = T + timedelta(seconds=step / 2)
            if step == 30:
                pair[0] = make()
            # Both read the schedule before either writes, in a random order.
            fired += sum(await asyncio.gather(*(s.run_once() for s in rng.sample(pair, 2))))
        return fired

    fired = asyncio.run(drive())
    records, _ = store.search(TaskQuery(schedule_id="race"), 1000, None)
    assert fired == len(records) == 30
    assert sorted(r.not_before for r in records) == [T + timedelta(seconds=k) for k in range(1, 31)]
    assert sum(s.stats["already_fired"] for s in made) > 0  # the race really happened


class _CountedReads(InMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def list_schedules(self, tenant=None):
        self.reads += 1
        return super().list_schedules(tenant)


def test_a_scheduler_reads_the_schedules_every_so_often_or_once_told_they_changed():
    """Passes between reads fire from the schedules as last read, with the cursors they moved
    themselves; a change in the store is seen at the next pass once the scheduler is told, and
    at the next periodic read otherwise."""
    store = _CountedReads()
    a = schedule("a", every_s=1).model_copy(update={"created_at": T, "message": message()})
    store.save_schedule(a)
    now = [T]

    async def write(records):
        return store.write_many(records)

    scheduler = Scheduler(store, write, SIGNER, clock=lambda: now[0], reread_every_s=5.0)

    def passes_until(seconds: float) -> int:
        fired = 0
        while now[0] < T + timedelta(seconds=seconds):
            now[0] += timedelta(seconds=0.25)
            fired += asyncio.run(scheduler.run_once())
        return fired

    assert passes_until(4.5) == 4 and store.reads == 1  # a's ticks 1-4, from one read
    b = schedule("b", every_s=1).model_copy(update={"created_at": now[0], "message": message()})
    store.save_schedule(b)
    assert passes_until(4.75) == 0  # b is not seen yet
    scheduler.changed()
    assert passes_until(5.0) == 2 and store.reads == 2  # a's tick 5 and b's first
    store.set_schedule_paused(a.key, True)  # and the scheduler is not told
    assert passes_until(9.75) == 8 and store.reads == 2  # a and b, ticks 6-9, until the next read
    assert passes_until(10.0) == 1 and store.reads == 3  # the read at 10 s sees the pause: b's tick 10 only
    records, _ = store.search(TaskQuery(), 1000, None)
    assert len(records) == 15 and len({(r.schedule_id, r.not_before) for r in records}) == 15


def test_only_a_schedule_whose_message_bears_the_seal_is_fired():
    """A schedule planted in the store (its message unsealed, or changed after it was sealed)
    fires nothing; the ticks of a sealed one bear seals of their own."""
    store = InMemoryStore()
    sealed = message()
    changed = sealed.model_copy(update={"args": [40, 2]})
    for sid, msg in (("made", sealed), ("planted", message().model_copy(update={"seal": None})), ("changed", changed)):
        store.save_schedule(schedule(sid, every_s=1).model_copy(update={"created_at": T, "message": msg}))

    async def write(records):
        return store.write_many(records)

    scheduler = Scheduler(store, write, SIGNER, clock=lambda: T + timedelta(seconds=3.5))
    assert asyncio.run(scheduler.run_once()) == 3
    records, _ = store.search(TaskQuery(), 1000, None)
    assert {r.schedule_id for r in records} == {"made"} and all(SIGNER.seal_ok(r) for r in records)
    assert scheduler.stats["forged"] == 2
    scheduler.changed()  # read again: the same two are not told of (nor counted) again
    asyncio.run(scheduler.run_once())
    assert scheduler.stats["forged"] == 2 and scheduler.stats["reads"] == 2


def test_a_rule_no_date_matches_is_never_due_and_never_tried():
    """30 February: no tick falls, ``upcoming`` says so with None, and a scheduler that reads one
    saved before such rules were refused leaves it out rather than fail on it at every pass;
    the schedule beside it fires as ever."""
    never = schedule("feb30", cron="0 0 30 2 *").model_copy(update={"created_at": T})
    assert never.never_due() and never.upcoming() is None
    assert not schedule("leap", cron="0 0 29 2 *").never_due()  # once in four years is still a date
    store = InMemoryStore()
    store.save_schedule(never)
    store.save_schedule(every(1))

    async def write(records):
        return store.write_many(records)

    scheduler = Scheduler(store, write, SIGNER, clock=lambda: T + timedelta(seconds=3.5))
    assert asyncio.run(scheduler.run_once()) == 3
    assert scheduler.stats["errors"] == 0
