"""Direct tests of parts that the stack tier only exercises from afar."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
import zlib
from datetime import UTC, datetime

import pytest

from raylane.actors.common import Background, GroupCommit
from raylane.actors.grouping import (
    GRANT_MAX,
    GROUP_MAX,
    MOVE_AFTER_MIN_S,
    MOVE_AFTER_S,
    STOP_ALLOWANCE_S,
    Group,
    MemberTimes,
    StartCount,
    first_grant,
    group_size,
    groupable,
    move_after,
    next_grant,
    plan,
    started_when_dead,
    sweep_counts,
    wait_allowance,
)
from raylane.apicore import ApiProblem, decode_cursor
from raylane.errors import ConfigError, InvalidTaskInput
from raylane.models import Resources, TaskMessage
from raylane.protocol import keeper_of
from raylane.queue import owner_of
from raylane.registry import check_arguments
from raylane.retrying import backoff_s
from raylane.store import encode_cursor
from raylane.tokens import TokenFile


def _msg(name: str = "a", timeout_s: float | None = None, cpus: float = 1.0) -> TaskMessage:
    return TaskMessage(
        id="0" * 32,
        name=name,
        queue="q",
        timeout_s=timeout_s,
        resources=Resources(num_cpus=cpus),
        created_at=datetime.now(UTC),
    )


def test_plan_groups_tasks_of_one_name_timed_apart_from_untimed_and_keeps_every_task_once():
    msgs = [_msg("a"), _msg("b"), _msg("a"), _msg("a", timeout_s=5), _msg("a"), _msg("c", cpus=2)]
    msgs += [_msg("a", timeout_s=9)]
    units = plan(msgs, cpus=1)
    assert sorted(i for unit in units for i in unit) == list(range(len(msgs)))
    assert [0, 2, 4] in units  # the untimed "a" tasks share a Ray task
    assert [3, 6] in units  # the timed ones share another
    assert [5] in units and [1] in units  # two CPUs, alone of its name
    assert units == sorted(units)


def test_a_timed_member_may_wait_for_every_sibling_to_run_to_its_timeout_and_stop():
    assert wait_allowance([10.0, 20.0, 5.0], 0) == 25.0 + 2 * STOP_ALLOWANCE_S
    assert wait_allowance([10.0, 20.0, 5.0], 2) == 30.0 + 2 * STOP_ALLOWANCE_S
    assert wait_allowance([10.0], 0) == 0.0
    assert wait_allowance([10.0, None], 0) == 0.0  # untimed groups have no clock to allow for


def test_group_sizes_spread_over_the_cpus_within_bounds():
    assert group_size(10, cpus=4) == 3
    assert group_size(3, cpus=8) == 2  # never a group of one
    assert group_size(10_000, cpus=2) == GROUP_MAX
    assert groupable(_msg(timeout_s=1)) and not groupable(_msg(cpus=0)) and groupable(_msg())


def test_grants_cover_about_a_span_of_work_grow_step_by_step_and_shrink_at_once():
    assert next_grant(0, 0.0) == 1  # the first grant: one member
    assert next_grant(1, 0.0001) == 2  # quick members: doubled
    assert next_grant(GRANT_MAX // 2, 0.0001) == GRANT_MAX
    assert next_grant(GRANT_MAX, 0.005) == 4  # 20 ms of 5 ms members
    assert next_grant(GRANT_MAX, 1.0) == 1  # slow members: one at a time
    assert next_grant(3, 0.0) == 6


def test_members_behind_a_long_one_move_on_sooner_for_a_quick_name():
    assert move_after(None) == MOVE_AFTER_S  # a name not seen run
    assert move_after(0.0001) == MOVE_AFTER_MIN_S  # 0.1 ms members: at the sender's first look
    assert move_after(0.001) == pytest.approx(0.1)
    assert move_after(0.5) == MOVE_AFTER_S


def test_a_first_grant_covers_a_span_of_work_by_what_ran_before():
    assert first_grant(None) == 1  # a name not seen run: one member
    assert first_grant(0.001) == 20  # 20 ms of 1 ms members, at once
    assert first_grant(0.00001) == GRANT_MAX
    assert first_grant(1.0) == 1
    times = MemberTimes(names=2)
    times.add("a", 0.010)
    times.add("a", 0.020)
    assert times.mean("a") == 0.010 + MemberTimes.WEIGHT * 0.010
    times.add("b", 1.0)
    times.add("c", 1.0)  # a third name: the one heard of longest ago goes
    assert times.mean("a") is None and times.mean("c") == 1.0


def test_the_members_whose_fate_a_dead_worker_leaves_unknown_are_those_granted_unreported():
    members = [(_msg().model_copy(update={"id": f"{i:032x}"}), None) for i in range(6)]
    group = Group(members)  # type: ignore[arg-type]
    ids = [m.id for m, _ in members]
    assert group.possibly_started() == []  # nothing starts before the first grant
    group.granted = 4
    group.reported.update(ids[:2])
    assert group.possibly_started() == ids[2:4]
    group.started = 3  # signalled, the worker said it had started three: the fourth never will
    assert group.possibly_started() == ids[2:3]
    group.note_started(None)  # a count that could not be read bounds nothing
    assert group.possibly_started() == ids[2:3]
    group.note_started(4)  # a higher count does not undo a lower one
    assert group.possibly_started() == ids[2:3]


_DIE_AFTER_STARTING = """
import os, sys
from raylane.actors.grouping import StartCount
count = StartCount(sys.argv[1])
for n in range(1, int(sys.argv[2]) + 1):
    count.starting(n)
print("counted", flush=True)
if sys.argv[3] == "die":
    os._exit(1)
sys.stdin.read()  # lives, holding its count's lock, until told to go
"""


def test_a_dead_workers_count_says_how_many_members_it_started():
    key = uuid.uuid4().hex
    subprocess.run([sys.executable, "-c", _DIE_AFTER_STARTING, key, "3", "die"], check=False)
    assert asyncio.run(started_when_dead(key)) == 3
    assert asyncio.run(started_when_dead(key)) is None  # read once, the file is gone


def test_a_count_whose_worker_lives_on_bounds_nothing():
    key = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-c", _DIE_AFTER_STARTING, key, "2", "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"counted\n"
        # The process could still start another member: its count is no bound.
        assert asyncio.run(started_when_dead(key, tries=3, every_s=0.01)) is None
    finally:
        proc.communicate(b"")
    assert asyncio.run(started_when_dead(key)) is None  # the file went with the read


def test_a_count_that_cannot_be_written_is_no_bound(monkeypatch):
    # Say /dev/shm is full: the count would stay short of the members started.
    import os

    key = uuid.uuid4().hex
    count = StartCount(key)
    count.starting(1)

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    count.starting(2)  # the member still starts
    count.starting(3)
    count.close()
    assert asyncio.run(started_when_dead(key)) is None  # no file: the grant bounds what started


def test_a_sweep_removes_only_old_counts_no_live_worker_holds(monkeypatch, tmp_path):
    import fcntl
    import os

    from raylane.actors import grouping

    monkeypatch.setattr(grouping, "_count_dir", lambda: str(tmp_path))
    left, young, held = (tmp_path / f"raylane-started-{k}" for k in ("left", "young", "held"))
    for path in (left, young, held):
        path.write_bytes((3).to_bytes(4, "little"))
    for path in (left, held):
        os.utime(path, (0, 0))  # long ago
    holder = os.open(held, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a worker alive, in a member that runs long
    try:
        assert sweep_counts(older_than_s=60) == 1
    finally:
        os.close(holder)
    assert not left.exists() and young.exists() and held.exists()


def test_a_group_ended_in_order_leaves_no_count():
    key = uuid.uuid4().hex
    count = StartCount(key)
    count.starting(1)
    count.close()
    assert asyncio.run(started_when_dead(key)) is None
    # A worker that died before it started a member started none.
    subprocess.run([sys.executable, "-c", _DIE_AFTER_STARTING, key, "0", "die"], check=False)
    assert asyncio.run(started_when_dead(key)) == 0


def test_group_commit_batches_concurrent_callers_and_fails_a_whole_batch():
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        if 13 in items:
            raise RuntimeError("store down")
        return [i * 2 for i in items]

    async def main():
        gc = GroupCommit(flush, max_batch=3)
        first = asyncio.create_task(gc.submit_many([1]))
        await asyncio.sleep(0)  # the first call is in flight; the next ones queue behind it
        rest = [asyncio.create_task(gc.submit_many([i])) for i in (2, 3, 4, 5)]
        results = await asyncio.gather(first, *rest)
        with pytest.raises(RuntimeError):
            await gc.submit_many([13, 14])
        return results

    results = asyncio.run(main())
    assert results == [[2], [4], [6], [8], [10]]
    assert batches[:3] == [[1], [2, 3, 4], [5]]


def test_group_commit_splits_a_large_call_across_batches_and_keeps_each_callers_order():
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        if 23 in items:
            raise RuntimeError("store down")
        return [-i for i in items]

    async def main():
        gc = GroupCommit(flush, max_batch=4)
        first = asyncio.create_task(gc.submit_many([1]))
        await asyncio.sleep(0)
        big = asyncio.create_task(gc.submit_many(list(range(10, 16))))
        small = asyncio.create_task(gc.submit_many([7, 8]))
        results = await asyncio.gather(first, big, small)
        # A call split over two batches fails if either fails; the other callers do not.
        failing = asyncio.create_task(gc.submit_many([20, 21, 22, 23, 24]))
        after = asyncio.create_task(gc.submit_many([30]))
        with pytest.raises(RuntimeError):
            await failing
        return results, await after, await gc.submit_many([])

    results, after, empty = asyncio.run(main())
    assert results == [[-1], [-10, -11, -12, -13, -14, -15], [-7, -8]]
    assert after == [-30] and empty == []
    assert batches[:3] == [[1], [10, 11, 12, 13], [14, 15, 7, 8]]
    assert batches[3:] == [[20, 21, 22, 23], [24, 30]]


def test_a_settled_collector_scans_startup_objects_no_more_and_still_collects_later_cycles():
    # In a process of its own: the tuning is process-wide, and this one runs the other tests.
    probe = """
import gc, weakref
from raylane.actors.common import YOUNG_COLLECTION_EVERY, settle_collector
before = gc.get_freeze_count()
settle_collector()
print(before, gc.get_freeze_count(), gc.get_threshold()[0] >= YOUNG_COLLECTION_EVERY)
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
# No explicit collect: the young collections that the allocations below set off must find it.
kept = [[] for _ in range(3 * YOUNG_COLLECTION_EVERY)]
print(gone() is None)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    before, frozen, raised, cycle_collected = out
    assert before == "0" and int(frozen) > 1000  # the modules imported were set aside
    assert raised == "True"
    assert cycle_collected == "True"


def test_owner_of_splits_partitions_round_robin_from_a_topic_dependent_start():
    owners = [owner_of("raylane.tasks.x", p, 3) for p in range(6)]
    start = zlib.crc32(b"raylane.tasks.x") % 3
    assert owners == [(start + p) % 3 for p in range(6)]
    assert {owner_of("t", p, 1) for p in range(5)} == {0}


def test_cursors_round_trip_and_foreign_ones_are_refused():
    cursor = [1767225600000000000, "ab" * 16]
    assert decode_cursor(encode_cursor(cursor)) == cursor
    assert decode_cursor(None) is None and encode_cursor(None) is None
    for bad in ("not-base64!", encode_cursor([1.5, "x"]), encode_cursor(["1", "x"]), encode_cursor([True, "x"])):
        with pytest.raises(ApiProblem) as e:
            decode_cursor(bad)
        assert e.value.status == 400


def test_check_arguments_follows_the_signature():
    def add(a: int, b: int = 2) -> int:
        return a + b

    check_arguments("add", add, [1], {})
    check_arguments("add", add, [], {"a": 1, "b": 3})
    for args, kwargs in (([], {}), ([1, 2, 3], {}), ([1], {"c": 1}), (["x"], {})):
        with pytest.raises(InvalidTaskInput):
            check_arguments("add", add, args, kwargs)


def test_token_file_issues_verifies_and_revokes(tmp_path):
    tokens = TokenFile(tmp_path / "tokens.json")
    entry, token = tokens.create("acme", "read")
    who = tokens.verify(token)
    assert who is not None and (who.tenant, who.scope, who.can_write) == ("acme", "read", False)
    assert token not in (tmp_path / "tokens.json").read_text()  # only its hash is kept
    assert tokens.verify(token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert tokens.verify(None) is None and tokens.verify("") is None
    assert tokens.revoke(entry.id) and tokens.verify(token) is None and not tokens.revoke(entry.id)
    with pytest.raises(ConfigError):
        tokens.create("Not A Tenant!")


def test_backoff_grows_is_capped_and_jittered():
    assert [backoff_s(n, base_s=0.1, cap_s=2.0, rand=lambda: 1.0) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 2.0]
    assert backoff_s(10, cap_s=2.0, rand=lambda: 0.0) == 1.0  # never less than half
    assert backoff_s(10**6) <= 2.0


def test_background_keeps_its_tasks_and_logs_their_failures(caplog):
    async def main():
        bg = Background(logging.getLogger("test.background"))
        done = asyncio.Event()

        async def fail():
            raise ValueError("lost")

        bg.spawn(done.wait())
        bg.spawn(fail())
        assert len(bg) == 2
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(bg) == 1  # the failed one is gone, the waiting one kept
        done.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return len(bg)

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(main()) == 0
    assert "background task failed" in caplog.text


def test_keeper_of_splits_task_ids_evenly():
    counts = [0, 0, 0]
    for _ in range(30_000):
        counts[keeper_of(uuid.uuid4().hex, 3)] += 1
    assert all(9_000 < c < 11_000 for c in counts), counts
    assert keeper_of("not-hex", 3) in (0, 1, 2) and keeper_of(uuid.uuid4().hex, 1) == 0


def test_named_options_are_options_unless_the_task_takes_them():
    from raylane.models import SubmitRequest

    req = SubmitRequest(
        name="t",
        kwargs={"x": 1},
        named_options={"delay": 5, "idempotency_key": "k", "expires": 60, "timeout": 9},
    )
    as_options = req.with_named_options({"x"}, accepts_any=False)
    assert as_options.kwargs == {"x": 1} and as_options.named_options is None
    assert (as_options.delay_s, as_options.idempotency_key, as_options.timeout_s) == (5, "k", 9)
    assert as_options.expires_at is not None
    as_args = req.with_named_options({"x", "delay"}, accepts_any=False)
    assert as_args.kwargs == {"x": 1, "delay": 5} and as_args.delay_s is None
    assert req.with_named_options(set(), accepts_any=True).kwargs == {
        "x": 1,
        "delay": 5,
        "idempotency_key": "k",
        "expires": 60,
        "timeout": 9,
    }
