"""Results in bulk: raylane.wait_all and raylane.as_completed, with records streamed in batches."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray

import raylane
from raylane.errors import TaskNotFound, WaitTimeout
from raylane.states import TaskState


@raylane.task(name="test.bulk.nap")
def nap(seconds: float, tag: str) -> str:
    time.sleep(seconds)
    return tag


@raylane.task(name="test.bulk.hold", timeout=120)
def hold(marker: str) -> str:
    """Runs until ``marker`` exists: it finishes when the test says so, whatever the load."""
    while not Path(marker).exists():
        time.sleep(0.02)
    return "held"


@raylane.task(name="test.bulk.fail")
def fail(message: str) -> None:
    raise ValueError(message)


def _keeper_stats() -> dict:
    return ray.get(ray.get_actor("StatusKeeper", namespace="raylane").get_stats.remote())


def test_as_completed_yields_each_task_once_in_the_order_they_finish(rl, tmp_path):
    marker = tmp_path / "release"
    held = hold.submit(str(marker))  # timed: never grouped with the quick ones
    quick = [nap.submit(0.0, f"q{i}") for i in range(20)]
    order = []
    for h in raylane.as_completed([held, *quick], timeout=90):
        order.append(h)
        if len(order) == len(quick):
            marker.touch()  # every quick one came first; now the held one may end
    assert sorted(h.id for h in order) == sorted(h.id for h in [held, *quick])
    assert order[-1] == held
    # Each yielded handle holds its final record: the result needs no further call.
    assert sorted(h.result() for h in order[:-1]) == sorted(f"q{i}" for i in range(20))
    assert order[-1].result() == "held"
    assert all(h._final is not None and h._final.state is TaskState.SUCCEEDED for h in order)


def test_wait_all_returns_records_in_the_order_given_failures_included(rl):
    handles = [nap.submit(0.0, "a"), fail.submit("broken"), nap.submit(0.1, "b")]
    records = raylane.wait_all(handles, timeout=60)
    assert [r.id for r in records] == [h.id for h in handles]
    assert [r.state for r in records] == [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SUCCEEDED]
    assert records[1].error_type == "ValueError"
    # Ids work as well as handles, and tasks that finished long before are found in the store.
    again = raylane.wait_all([h.id for h in handles], timeout=10)
    assert [r.version for r in again] == [r.version for r in records]


def test_wait_all_times_out_with_a_count_of_what_is_open(rl):
    long = nap.submit(30.0, "long")
    done = nap.submit(0.0, "done")
    # Awaited first: on a cold, loaded cluster even a no-op task may take longer than the wait below.
    assert done.wait(timeout=30).state is TaskState.SUCCEEDED
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"1 task\(s\) still open"):
        raylane.wait_all([long, done], timeout=1.5)
    assert time.monotonic() - started < 15
    long.cancel()


def test_an_unknown_id_is_not_found(rl):
    with pytest.raises(TaskNotFound):
        raylane.wait_all([uuid.uuid4().hex], timeout=5)


def test_a_thousand_results_come_in_batches(rl):
    before = _keeper_stats()
    handles = nap.submit_many([(0.0, str(i)) for i in range(1000)])
    calls = 0
    real_call = raylane.client._connection().call

    def counting(method, *args):
        nonlocal calls
        calls += method == "wait_many"
        return real_call(method, *args)

    conn = raylane.client._connection()
    conn.call = counting
    try:
        records = raylane.wait_all(handles, timeout=120)
    finally:
        del conn.call
    assert [r.result for r in records] == [str(i) for i in range(1000)]
    assert calls < 100, f"{calls} wait calls for 1,000 tasks: results did not come in batches"
    assert _keeper_stats()["waiters"] <= before["waiters"]  # nothing left registered


def _gets(store) -> int:
    """Documents OpenSearch has fetched by id from the status index so far."""
    stats = store.client.indices.stats(index=store.alias, metric="get")
    return stats["_all"]["primaries"]["get"]["total"]


def test_waits_on_tasks_just_submitted_read_nothing_from_the_store(rl, store):
    # Given tasks whose records went through their keeper a moment ago
    handles = nap.submit_many([(0.0, str(i)) for i in range(300)])
    one = nap.submit(0.0, "one")
    before = _gets(store)
    # When their results are collected, in bulk and one by one
    records = raylane.wait_all(handles, timeout=120)
    assert one.result(timeout=60) == "one"
    # Then the keeper answered from what it saw written: the store was not read for them
    assert [r.result for r in records] == [str(i) for i in range(300)]
    read = _gets(store) - before
    assert read < 30, f"{read} records read from the store to wait for 301 tasks the keeper knew"


def test_waits_go_on_across_a_keeper_restart(rl, tmp_path):
    from conftest import restart_keeper, wait_until

    marker = tmp_path / "release"
    ended = nap.submit(0.0, "before")
    assert ended.result(timeout=60) == "before"
    running = hold.submit(str(marker))
    wait_until(lambda: running.status() is TaskState.RUNNING, timeout=60, what="the held task to run")
    restart_keeper()
    # The new keeper knows nothing of the task that ended: it is looked up in the store.
    assert raylane.wait_all([ended.id], timeout=30)[0].result == "before"
    with ThreadPoolExecutor(1) as pool:
        waited = pool.submit(raylane.wait_all, [running], 60)
        wait_until(lambda: _keeper_stats()["waiters"] >= 1, timeout=30, what="the wait to reach the new keeper")
        marker.touch()
        assert waited.result(timeout=90)[0].result == "held"
