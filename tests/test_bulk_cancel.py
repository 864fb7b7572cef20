"""Cancel by filter: the SDK, the CLI (which first says how many) and HTTP cancel every
unfinished task that matches, kill the running ones, and leave finished ones alone."""

from __future__ import annotations

import json
import time

import pytest
from conftest import cli, running_anywhere, wait_until

import raylane
from raylane.states import TaskState


@raylane.task(name="test.bulkcancel.nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_cancel_matching_ends_waiting_and_running_tasks_and_leaves_finished_ones(rl, unique):
    tag = f"bulk-{unique}"
    done = nap.options(tags=[tag]).submit(0.0)
    assert done.result(timeout=60) == 0.0
    running = nap.options(tags=[tag]).submit(60.0)
    wait_until(lambda: running.status() is TaskState.RUNNING, timeout=60, what="the long task to run")
    queue = f"bulk-{unique}"
    rl.pause(queue)
    try:
        waiting = nap.options(tags=[tag], queue=queue).submit_many([(0.0,)] * 3)
        rl.refresh()
        ids = rl.cancel_matching(tags=[tag])
        assert sorted(ids) == sorted([running.id] + [h.id for h in waiting])
        for h in [running, *waiting]:
            assert h.record().state is TaskState.CANCELLED
        assert done.record().state is TaskState.SUCCEEDED and done.record().version == 3
        # The running one was killed: no executor runs anything any more.
        wait_until(
            lambda: not running_anywhere([running]),
            timeout=30,
            what="the cancelled task's worker to be killed",
        )
        with pytest.raises(raylane.InvalidTaskInput, match="SUCCEEDED"):
            rl.cancel_matching("SUCCEEDED", tags=[tag])
    finally:
        rl.resume(queue)


def test_cancel_many_ends_the_unfinished_ones_among_its_ids_in_one_call(rl, unique):
    done = nap.submit(0.0)
    assert done.result(timeout=60) == 0.0
    running = nap.submit(60.0)
    wait_until(lambda: running.status() is TaskState.RUNNING, timeout=60, what="the long task to run")
    queue = f"many-{unique}"
    rl.pause(queue)
    try:
        waiting = nap.options(queue=queue).submit_many([(0.0,)] * 3)
        unknown = "0" * 32
        ids = rl.cancel_many([waiting[2], running, done.id, unknown, waiting[0].id, waiting[1], waiting[0]])
        # In the order given, once each; the finished task and the unknown id are left out.
        assert ids == [waiting[2].id, running.id, waiting[0].id, waiting[1].id]
        for h in [running, *waiting]:
            assert h.record().state is TaskState.CANCELLED
        assert done.record().state is TaskState.SUCCEEDED and done.record().version == 3
        assert rl.cancel_many([running, *waiting]) == []  # already cancelled: nothing more to do
        wait_until(
            lambda: not running_anywhere([running]),
            timeout=30,
            what="the cancelled task's worker to be killed",
        )
        # Bad input is refused whole, with nothing written.
        more = nap.options(queue=queue).submit(0.0)
        for bad in ([more.id, 7], more.id, ["x"] * 10_001):
            with pytest.raises(raylane.InvalidTaskInput):
                rl.cancel_many(bad)
        assert more.record().state is TaskState.PENDING
    finally:
        rl.resume(queue)
    assert more.result(timeout=60) == 0.0


def test_the_command_line_says_how_many_before_it_cancels(rl, unique):
    tag = f"bulkc-{unique}"
    queue = f"bulkc-{unique}"
    rl.pause(queue)
    try:
        handles = nap.options(tags=[tag], queue=queue).submit_many([(0.0,)] * 4)
        counted = cli("cancel", "--tag", tag, "--json")
        assert counted.returncode == 0 and json.loads(counted.stdout) == {"would_cancel": 4}, counted.stderr
        assert all(h.status() is TaskState.PENDING for h in handles)  # counting cancels nothing
        done = cli("cancel", "--tag", tag, "--yes", "--json")
        assert done.returncode == 0 and sorted(json.loads(done.stdout)["cancelled"]) == sorted(h.id for h in handles)
        assert all(h.status() is TaskState.CANCELLED for h in handles)
        assert cli("cancel").returncode == 2  # neither an id nor a filter
        assert cli("submit", "raylane.echo", "--kwargs", "[1]").returncode == 2
    finally:
        rl.resume(queue)


def test_cancel_by_filter_over_http_sees_only_the_tenants_tasks(http_api, rl, unique):
    queue = f"bulkh-{unique}"
    rl.pause(queue)
    try:
        mine = nap.options(queue=queue).submit(0.0)  # the SDK's: no tenant
        api = http_api.client(http_api.token(f"t-{unique}"))
        base = f"{http_api.url}/api/v1"
        resp = api.post(f"{base}/tasks", json={"name": "test.bulkcancel.nap", "args": [0.0], "queue": queue})
        assert resp.status_code == 201, resp.text
        theirs = resp.json()["id"]
        rl.refresh()
        out = api.post(f"{base}/cancel", params={"queue": queue})
        assert out.status_code == 200 and out.json() == {"cancelled": [theirs], "count": 1}, out.text
        assert mine.status() is TaskState.PENDING  # another tenant's (the SDK's) is untouched
        mine.cancel()
    finally:
        rl.resume(queue)
