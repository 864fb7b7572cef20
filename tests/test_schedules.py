"""Schedules through the real stack: one task per tick with two schedulers and a keeper restart,
pause and resume, the CLI and the HTTP API."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import ray
from conftest import cli, wait_until

import raylane
from raylane.actors.keepers import Keepers
from raylane.actors.scheduler import Scheduler
from raylane.protocol import keeper_name
from raylane.states import TaskState


@raylane.task(name="test.schedules.tick", timeout=30)
def tick(label: str) -> str:
    return label


def _tasks(schedule_id: str) -> list[raylane.TaskRecord]:
    raylane.refresh()
    return raylane.search(schedule=schedule_id, limit=1000)


class _LaggingView:
    """The store as a slow scheduler sees it: every schedule's last_tick two ticks behind."""

    def __init__(self, store):
        self.store = store

    def list_schedules(self, tenant=None):
        return [
            s.model_copy(update={"last_tick": s.last_tick - timedelta(seconds=2 * s.every_s)}) if s.last_tick else s
            for s in self.store.list_schedules(tenant)
        ]

    def advance_schedule(self, key, tick):
        self.store.advance_schedule(key, tick)


def _second_scheduler(store, settings, stop: threading.Event) -> Scheduler:
    """Another scheduler over every schedule, in this process, until ``stop`` is set. Its view of
    the schedules lags, so it fires again ticks fired already (by the keepers' schedulers or by
    itself): the store must refuse every one of those."""
    keepers = Keepers(settings.namespace, settings.keepers)
    # It reads the schedules at every pass, so that each pass meets ticks fired already.
    scheduler = Scheduler(_LaggingView(store), keepers.write, settings.signer(), reread_every_s=0.0)

    def run() -> None:
        async def main() -> None:
            while not stop.is_set():
                await scheduler.run_once()
                await asyncio.sleep(0.1)

        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    return scheduler


def test_every_second_with_two_schedulers_and_a_keeper_restart_gives_one_task_per_tick(rl, store, settings, unique):
    sid = f"every-{unique}"
    stop = threading.Event()
    other = _second_scheduler(store, settings, stop)
    try:
        saved = raylane.schedule(sid, task=tick, args=["x"], every=1)
        assert saved.every_s == 1 and saved.upcoming() is not None
        wait_until(lambda: len(_tasks(sid)) >= 3, 30, 0.2, "three ticks")
        # The keepers' schedulers die and come back mid-schedule; ticks go on, none twice.
        for k in range(settings.keepers):
            ray.kill(ray.get_actor(keeper_name(k), namespace=settings.namespace), no_restart=False)
        wait_until(lambda: len(_tasks(sid)) >= 8, 60, 0.2, "eight ticks")
    finally:
        stop.set()
        paused = raylane.pause_schedule(sid)
    assert paused.paused and paused.upcoming() is None
    records = _tasks(sid)
    ticks = sorted(r.not_before for r in records)
    assert len(ticks) == len(set(ticks)), "a tick gave more than one task"
    # Every tick between the first and the last is there: only a tick missed for more than 5 s
    # may be absent (catch_up="none"), and the keepers were back well within that.
    assert len(ticks) == int((ticks[-1] - ticks[0]).total_seconds()) + 1
    assert all(t.microsecond == 0 for t in ticks)  # on whole seconds
    done = raylane.wait_all([raylane.TaskHandle(r.id) for r in records], timeout=60)
    assert {r.state for r in done} == {TaskState.SUCCEEDED}
    assert all(r.started_at >= r.not_before for r in done)
    assert all(settings.signer().seal_ok(r) for r in done)  # a sweep could carry each on
    # The lagging scheduler fired every tick again, at least once, and the store refused it.
    assert other.stats["already_fired"] >= len(ticks) - 3, other.stats
    raylane.unschedule(sid)
    with pytest.raises(raylane.ScheduleNotFound):
        raylane.unschedule(sid)


def _scheduler_stats(settings) -> list[dict]:
    return [
        ray.get(ray.get_actor(keeper_name(k), namespace=settings.namespace).get_stats.remote())
        for k in range(settings.keepers)
    ]


def test_a_pause_holds_from_the_next_pass_though_schedules_are_read_only_now_and_then(rl, settings, unique):
    """The keepers' schedulers pass four times a second over the schedules they read now and
    then; a pause through the API tells them, so no tick after it fires."""
    sid = f"pause-{unique}"
    raylane.schedule(sid, task=tick, args=["p"], every=1)
    wait_until(lambda: len(_tasks(sid)) >= 2, 30, 0.2, "two ticks")
    raylane.pause_schedule(sid)
    paused_at = datetime.now(UTC)
    before = _scheduler_stats(settings)
    # Four seconds of passes of every scheduler: four ticks would have fired meanwhile.
    wait_until(
        lambda: all(
            now["scheduler_passes"] >= then["scheduler_passes"] + 16
            for now, then in zip(_scheduler_stats(settings), before, strict=True)
        ),
        60,
        0.2,
        "sixteen passes of every scheduler",
    )
    late = [r.not_before for r in _tasks(sid) if r.not_before > paused_at]
    assert late == [], late
    # Over those passes each scheduler read the schedules once for the pause, and once more for
    # every REREAD_EVERY_S they took (counted since the pause: a keeper restarted by an earlier
    # test has read them on its start, and at each change that test made).
    for now, then in zip(_scheduler_stats(settings), before, strict=True):
        reads = now["scheduler_reads"] - then["scheduler_reads"]
        passes = now["scheduler_passes"] - then["scheduler_passes"]
        assert reads * 4 <= passes, (then, now)
    raylane.unschedule(sid)


@pytest.mark.parametrize(("policy", "runs"), [("none", 0), ("last", 1), ("all", 3)])
def test_ticks_missed_while_nothing_ran_follow_catch_up(rl, store, unique, policy, runs):
    """A schedule whose last three hourly ticks were missed (as after a long outage of every
    scheduler): "none" skips them, "last" runs the newest once, "all" runs the three."""
    sid = f"{policy}-{unique}"
    # Hourly ticks fall on the hour: one that comes while the test runs is on time, not missed,
    # and fires under every policy. The test starts well clear of the next one.
    wait_until(lambda: 3600 - time.time() % 3600 > 45, 60, 1.0, "45 s clear of the next hourly tick")
    raylane.schedule(sid, task=tick, args=[policy], every=3600, catch_up=policy, paused=True)
    saved = store.get_schedule(f"-:{sid}")
    store.delete_schedule(saved.key)
    three_ticks_ago = saved.last_tick_by(datetime.now(UTC)) - timedelta(hours=3)
    store.save_schedule(saved.model_copy(update={"created_at": three_ticks_ago, "paused": False}))
    wait_until(lambda: store.get_schedule(saved.key).last_tick, 20, 0.1, "a scheduler pass")
    records = _tasks(sid)
    assert len(records) == runs
    expected = sorted(three_ticks_ago + timedelta(hours=k) for k in range(1, 4))
    assert sorted(r.not_before for r in records) == expected[len(expected) - runs :]
    raylane.unschedule(sid)


def test_bad_schedules_are_refused_with_nothing_saved(rl, unique):
    for bad in (
        dict(cron="not a cron"),
        dict(every=0.5),
        dict(every=10, cron="* * * * *"),
        dict(every=10, timezone="Nowhere/Land"),
        dict(every=10, args=[{"too": "many"}, 2, 3]),
    ):
        with pytest.raises(raylane.InvalidTaskInput):
            raylane.schedule(f"bad-{unique}", task=tick, **bad)
    with pytest.raises(raylane.UnknownTaskName):
        raylane.schedule(f"bad-{unique}", task="test.schedules.nobody", every=10)
    assert f"bad-{unique}" not in [s.id for s in raylane.schedules()]


def test_schedule_commands(rl, unique):
    sid = f"cli-{unique}"
    out = cli("schedule", "add", sid, "raylane.echo", "1", "--cron", "0 3 * * *", "--timezone", "Asia/Tokyo", "--json")
    assert out.returncode == 0, out.stderr
    [shown] = json.loads(out.stdout)
    assert shown["cron"] == "0 3 * * *" and shown["args"] == [1] and shown["timezone"] == "Asia/Tokyo"
    listed = cli("schedule", "ls")
    assert listed.returncode == 0 and sid in listed.stdout and "next " in listed.stdout
    assert cli("schedule", "pause", sid).returncode == 0
    assert "paused" in cli("schedule", "ls").stdout
    assert cli("schedule", "resume", sid).returncode == 0
    assert cli("schedule", "rm", sid).returncode == 0
    gone = cli("schedule", "rm", sid)
    assert gone.returncode != 0 and "no schedule" in gone.stderr
    usage = cli("schedule", "add", sid, "raylane.echo")
    assert usage.returncode == 2 and "--cron" in usage.stderr


def test_schedules_over_http_are_per_tenant(http_api, unique):
    a = http_api.client(http_api.token(f"a-{unique}"))
    b = http_api.client(http_api.token(f"b-{unique}"))
    url = f"{http_api.url}/api/v1/schedules"
    sid = f"http-{unique}"
    r = a.put(f"{url}/{sid}", json={"task": "raylane.echo", "args": [1], "every_s": 3600})
    assert r.status_code == 200, r.text
    assert r.json()["every_s"] == 3600 and r.json()["next_tick"]
    assert [s["id"] for s in a.get(url).json()["schedules"]] == [sid]
    assert b.get(url).json()["schedules"] == []
    assert b.get(f"{url}/{sid}").status_code == 404
    assert b.delete(f"{url}/{sid}").status_code == 404
    assert a.post(f"{url}/{sid}/pause").json()["paused"] is True
    assert a.post(f"{url}/{sid}/resume").json()["paused"] is False
    bad = a.put(f"{url}/{sid}", json={"task": "raylane.echo", "cron": "99 * * * *"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    assert a.get(f"{url}/{sid}").json()["every_s"] == 3600  # the bad one saved nothing
    assert a.delete(f"{url}/{sid}").status_code == 204
    assert a.get(f"{url}/{sid}").status_code == 404
