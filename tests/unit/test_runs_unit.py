"""Unit tier (no services): an executor's bookkeeping of the Ray tasks it runs, with stand-ins for
Ray. A task id recurs (across attempts, and across the groups a member is moved between), and a
message may be handed over again long after its task started: neither may start an attempt a
second time."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from raylane.actors import runs as runs_module
from raylane.actors.common import Background, PrioritySlots
from raylane.actors.executor import Executor
from raylane.actors.grouping import MOVE_AFTER_S
from raylane.actors.runs import Runs
from raylane.actors.worker import MemberEnd
from raylane.limits import Limits
from raylane.models import TaskMessage, TaskRecord, WriteOutcome
from raylane.protocol import HandOff, Reply


class _Stream:
    """A group's stream of reports, as the executor reads it; it ends when told."""

    def __init__(self):
        self.over = asyncio.Event()
        self.died = False  # set with ``over``: the stream fails, as when the group's worker dies

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.over.wait()
        if self.died:
            raise RuntimeError("the worker died")
        raise StopAsyncIteration


class _RemoteGroup:
    """Stands in for ``remote_group``: notes each group launched (its members and key)."""

    def __init__(self):
        self.launched: list[tuple[list[tuple[str, int]], str, _Stream]] = []
        self.first_grants: list[int] = []
        self.move_after: list[float] = []  # how long a member of each group runs before those behind it move
        self.cpus: list[float] = []  # the CPUs each group asked Ray for

    def options(self, **opts):
        self.cpus.append(opts["num_cpus"])
        return self

    def remote(self, call):
        items, _executor, key, _limits, _lease, first_grant, _channel, move_after_s = call
        stream = _Stream()
        self.launched.append(([(i[0], i[1]) for i in items], key, stream))
        self.first_grants.append(first_grant)
        self.move_after.append(move_after_s)
        return stream


class _RemoteInvoke:
    """Stands in for ``remote_invoke``: notes each lone task launched. The first one's Ray task
    runs on; any later one's ends at once."""

    def __init__(self):
        self.launched: list[tuple[str, ...]] = []

    def options(self, **_):
        return self

    def remote(self, call):
        self.launched.append(call)
        ref = asyncio.get_running_loop().create_future()
        if len(self.launched) > 1:
            ref.set_result(Reply(True, None))
        return ref


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


async def _end_all(runs: Runs, remote: _RemoteGroup) -> None:
    """Have every group still running report its members done, and end; and those that start
    meanwhile (members that waited for a run slot), until none runs."""
    while runs._group_by_key:
        for members, key, stream in remote.launched:
            if key in runs._group_by_key:
                runs.group_report(key, [MemberEnd(task_id, True, Reply(True, None)) for task_id, _ in members])
                stream.over.set()
        await _settle()


async def _block_first(runs: Runs, key: str, member: str) -> None:
    """The worker of the group ``key`` starts ``member``, its first, which then blocks in a call
    past the time its siblings move on."""
    assert runs.group_advance(key, [], 1) == 1
    runs.group_long(key, member, 1, True)
    await _settle()


def _runs(stats: Counter, cpus: int = 2, node_cpus: int = 2) -> Runs:
    return Runs(
        actor=SimpleNamespace(),  # a group's worker asks for its signal itself; the executor makes none
        node_id="0" * 56,  # as Ray names a node
        lease=SimpleNamespace(until=0.0),
        limits=Limits(),
        slots=PrioritySlots(8),
        cpus=cpus,
        node_cpus=node_cpus,
        finisher=_Finisher(),
        keepers=None,
        stats=stats,
        background=Background(logging.getLogger("test")),
    )


def test_a_groups_worker_cannot_move_a_later_group_of_the_same_first_task(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)

    async def scenario() -> tuple[Runs, Counter]:
        stats: Counter = Counter()
        runs = _runs(stats)
        x, y, z = "a" * 32, "b" * 32, "c" * 32
        # Attempt 0 of x runs first in a group with y; x fails at once (its retry is a new attempt).
        runs.launch([_member(x, 0), _member(y, 0)])
        await _settle()
        assert runs.running_of([z, y, x]) == [y, x]
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
        assert runs.running_of([x, y, z]) == []
        return runs, stats

    runs, stats = asyncio.run(scenario())
    assert stats["moved_waiting"] == 0
    assert runs.running_now() == 0


def test_a_message_handed_over_again_does_not_start_an_attempt_that_runs_here(monkeypatch):
    """The executor remembers the attempts it launched for a while only (``_LAUNCHED_KEPT``); an
    attempt that runs longer may have its message handed over again (a consumer restarted from
    an offset held back behind it). Its own stored claim then makes it look this executor's to
    start: it must find it running, alone or in a group, and not start it again."""
    lone, grouped = _RemoteInvoke(), _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_invoke", lone)
    monkeypatch.setattr(runs_module, "remote_group", grouped)

    async def scenario() -> None:
        executor = object.__new__(Executor)  # only its launch bookkeeping, without Ray
        executor.stats = Counter()
        executor._launched, executor._gated = {}, {}
        executor._runs = _runs(executor.stats)
        alone, member, sibling = _member("a" * 32, 2), _member("b" * 32, 0), _member("c" * 32, 0)
        executor._runs.launch([alone])
        executor._runs.launch([member, sibling])
        await _settle()
        assert len(lone.launched) == 1 and len(grouped.launched) == 1
        # Long after, with the launches forgotten, both messages come again. Their claims are
        # counted as accepted (the stored RUNNING claims are this incarnation's own).
        executor._launched.clear()
        for msg, record in (alone, member):
            assert executor._launch_ahead([[msg]], [[record]], [None]) == {}  # type: ignore[list-item]
            own = iter([WriteOutcome(msg.id, msg.attempt * 10 + 2, True)])
            outcomes, launch = executor._settle_unit([msg], [record], own, False, 0.0)
            assert [o.outcome for o in outcomes] == [HandOff.STARTED] and launch == []
        assert len(lone.launched) == 1 and len(grouped.launched) == 1
        # A message seen for the first time starts ahead of its claim, and the claim's answer
        # still decides: one taken by another executor is skipped, one found to be this
        # executor's own earlier claim (its answer was lost) is launched.
        for accepted, outcome in ((False, HandOff.SKIPPED), (True, HandOff.STARTED)):
            msg, record = _member(("d" if accepted else "e") * 32, 0)
            decisions = executor._launch_ahead([[msg]], [[record]], [None])  # type: ignore[list-item]
            assert list(decisions) == [0]
            executor._ran_ahead([[msg]], decisions, set())  # the gate's answer: not accepted as sent
            answer = iter([WriteOutcome(msg.id, 2, accepted, None if accepted else "conflict")])
            outcomes, launch = executor._settle_unit([msg], [record], answer, False, 0.0)
            assert [o.outcome for o in outcomes] == [outcome]
            assert [m.id for m, _ in launch] == ([msg.id] if accepted else [])
            decisions[0].set_result(None)

    asyncio.run(scenario())


def test_a_groups_first_grant_and_move_after_come_from_how_long_members_of_its_name_took(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)

    async def scenario() -> None:
        runs = _runs(Counter())
        ids = [c * 32 for c in "abcdef"]
        runs.launch([_member(i, 0) for i in ids[:2]])
        await _settle()
        _, key, stream = remote.launched[0]
        # Nothing of this name has run here yet: the worker asks for one member first, and moves
        # the members behind one that runs long after the most a member may hold them back.
        assert remote.first_grants == [1] and remote.move_after == [MOVE_AFTER_S]
        # Its members took 1 ms each (20 ms of work is 20 members)...
        ends = [MemberEnd(i, True, Reply(True, None, began=0.0, returned=0.001)) for i in ids[:2]]
        assert runs.group_advance(key, ends, 2) == 2
        stream.over.set()
        await _settle()
        # ... so the next group of that name may start about 20 ms of them at once, and one of
        # them that has run 100 ms is far past the rest.
        runs.launch([_member(i, 0) for i in ids[2:]])
        await _settle()
        assert remote.first_grants == [1, 20] and remote.move_after == [MOVE_AFTER_S, pytest.approx(0.1)]
        remote.launched[1][2].over.set()
        await _settle()

    asyncio.run(scenario())


def test_a_blocked_member_lends_its_cpu_until_it_ends(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    done = Reply(True, "done")

    async def scenario() -> Counter:
        stats: Counter = Counter()
        runs = _runs(stats)  # a node of 2 CPUs
        ids = [f"{i:032x}" for i in range(7)]
        runs.launch([_member(i, 0) for i in ids])
        await _settle()
        _, lender, lender_stream = remote.launched[0]
        # Its first member waits in a call: the six behind it move on, to a group on its CPU.
        await _block_first(runs, lender, ids[0])
        assert [m for m, _ in remote.launched[1][0]] == ids[1:]
        assert remote.cpus == [1.0, 0]
        assert stats["lent"] == 1
        _, borrower, borrower_stream = remote.launched[1]
        assert runs.group_advance(borrower, [], 2) == 2
        # The blocked member ends: the borrowing group starts no member past its grant; the rest
        # move on to a group that asks Ray for a CPU.
        runs.group_report(lender, [MemberEnd(ids[0], True, done)])
        await _settle()
        assert [m for members, _, _ in remote.launched[2:] for m, _ in members] == ids[3:]
        assert remote.cpus[2:] == [1.0, 1.0]
        assert runs.group_advance(borrower, [MemberEnd(i, True, done) for i in ids[1:3]], 4) == 2
        for stream in (lender_stream, borrower_stream):
            stream.over.set()
        await _settle()
        assert runs._on_loan == 0
        await _end_all(runs, remote)
        return stats

    stats = asyncio.run(scenario())
    assert stats["moved_waiting"] == 10  # six behind the blocked member, then four behind the grant


def test_an_executor_lends_at_most_loans_per_cpu_and_takes_a_cpu_back_when_asked(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    monkeypatch.setattr(runs_module, "LOANS_PER_CPU", 2)

    async def scenario() -> None:
        runs = _runs(Counter(), cpus=6, node_cpus=1)  # a node of 1 CPU, in a cluster of 6: 2 loans
        lenders = []
        for g in range(3):
            ids = [f"{g}{i:031x}" for i in range(3)]
            runs.launch([_member(i, 0) for i in ids])
            await _settle()
            key = remote.launched[-1][1]
            await _block_first(runs, key, ids[0])
            lenders.append((key, ids))
        # Three blocked members; the third group's followers get a CPU of their own.
        assert remote.cpus == [1.0, 0, 1.0, 0, 1.0, 1.0]
        # The first blocked member works again: its borrower may start nothing more.
        (key, ids), borrower = lenders[0], remote.launched[1][1]
        runs.group_busy(key, ids[0])
        await _settle()
        assert runs.group_advance(borrower, [], 2) == 0
        assert [m for m, _ in remote.launched[-1][0]] == ids[1:] and remote.cpus[-1] == 1.0
        await _end_all(runs, remote)
        assert runs._on_loan == 0

    asyncio.run(scenario())


def test_a_loan_its_group_is_done_with_passes_to_a_group_waiting_for_a_cpu(monkeypatch):
    # Groups already handed to Ray wait for a CPU that blocked members hold: a loan that only
    # served the blocked member's own siblings left them waiting for its end.
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    done = Reply(True, "done")

    async def scenario() -> None:
        stats: Counter = Counter()
        runs = _runs(stats)
        lender_ids = [f"a{i:031x}" for i in range(3)]
        waiting_ids = [f"b{i:031x}" for i in range(3)]
        runs.launch([_member(i, 0) for i in lender_ids])
        runs.launch([_member(i, 0) for i in waiting_ids])  # its worker has not asked for leave yet
        await _settle()
        (_, lender, _), (_, waiting, _) = remote.launched
        await _block_first(runs, lender, lender_ids[0])
        members, borrower, borrower_stream = remote.launched[2]
        assert [m for m, _ in members] == lender_ids[1:] and remote.cpus[2] == 0
        # The borrowing group is done while the member that lent its CPU still waits in its call.
        assert runs.group_advance(borrower, [], 2) == 2
        runs.group_report(borrower, [MemberEnd(i, True, done) for i in lender_ids[1:]])
        borrower_stream.over.set()
        await _settle()
        # The waiting group's members run on that CPU; its own Ray task gets leave for none.
        members, second_borrower, _ = remote.launched[3]
        assert [m for m, _ in members] == waiting_ids and remote.cpus[3] == 0
        assert runs.group_advance(waiting, [], 1) == 0
        assert runs.group_advance(second_borrower, [], 3) == 3
        assert stats["loans_passed_on"] == 1 and stats["lent"] == 2
        await _end_all(runs, remote)
        assert runs._on_loan == 0

    asyncio.run(scenario())


def test_a_cpu_lent_while_no_loan_was_free_is_taken_by_a_later_group(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    done = Reply(True, "done")

    async def scenario() -> None:
        runs = _runs(Counter(), node_cpus=1)  # one loan at most
        a, b = ["a" * 32, "a" * 31 + "1"], ["b" * 32, "b" * 31 + "1"]
        runs.launch([_member(i, 0) for i in a])
        runs.launch([_member(i, 0) for i in b])
        await _settle()
        (_, group_a, _), (_, group_b, _) = remote.launched
        await _block_first(runs, group_a, a[0])  # a[1] runs on its CPU
        await _block_first(runs, group_b, b[0])  # no loan is free: b[1] asks Ray for a CPU
        assert remote.cpus == [1.0, 1.0, 0, 1.0]
        (_, borrower, borrower_stream), (_, b_rest, _) = remote.launched[2:]
        assert runs.group_advance(b_rest, [], 1) == 1
        # a[1] is done, then a[0]: the loan is free again, and a's CPU is taken back.
        assert runs.group_advance(borrower, [MemberEnd(a[1], True, done)], 1) == 1
        borrower_stream.over.set()
        await _settle()
        runs.group_report(group_a, [MemberEnd(a[0], True, done)])
        await _settle()
        # b[0] still sleeps: the next group launched runs on its CPU.
        runs.launch([_member(c * 32, 0) for c in "cd"])
        await _settle()
        assert remote.cpus[-1] == 0
        await _end_all(runs, remote)
        assert runs._on_loan == 0

    asyncio.run(scenario())


def test_a_blocked_member_with_no_sibling_behind_lends_to_the_next_group_launched(monkeypatch):
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    done = Reply(True, "done")

    async def scenario() -> None:
        stats: Counter = Counter()
        runs = _runs(stats)
        alone = "a" * 32
        runs.launch([_member(alone, 0)], grouped=True)
        await _settle()
        _, lender, _ = remote.launched[0]
        await _block_first(runs, lender, alone)  # nothing behind it, and no group waits
        assert len(remote.launched) == 1 and stats["lent"] == 0
        later = [f"b{i:031x}" for i in range(3)]
        runs.launch([_member(i, 0) for i in later])
        await _settle()
        _, borrower, _ = remote.launched[1]
        assert remote.cpus == [1.0, 0] and stats["lent"] == 1
        # The lender ends: the borrower starts no member past its grant; the rest ask for a CPU.
        assert runs.group_advance(borrower, [], 1) == 1
        runs.group_report(lender, [MemberEnd(alone, True, done)])
        await _settle()
        assert [m for m, _ in remote.launched[2][0]] == later[1:] and remote.cpus[2] == 1.0
        await _end_all(runs, remote)
        assert runs._on_loan == 0

    asyncio.run(scenario())


def test_a_request_for_leave_made_twice_settles_its_ends_once(monkeypatch):
    # A request whose socket broke after it was sent is made again by Ray.
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)

    async def scenario() -> None:
        runs = _runs(Counter())
        ids = ["a" * 32, "b" * 32, "c" * 32]
        runs.launch([_member(i, 0) for i in ids])
        await _settle()
        _, key, stream = remote.launched[0]
        ends = [MemberEnd(ids[0], True, Reply(True, "a"))]
        assert runs.group_advance(key, ends, 2) == 2
        assert runs.group_advance(key, ends, 2) == 2
        await _settle()
        assert [reply.result for _, reply in runs._finisher.settled] == ["a"]
        stream.over.set()
        await _settle()

    asyncio.run(scenario())


def test_the_members_of_a_dead_workers_group_stay_held_while_its_count_is_read(monkeypatch):
    # The executor's recovery sweep ends the claims it does not hold: while the count of members
    # started is read, those that never started (which run again, still claimed) must be held.
    remote = _RemoteGroup()
    monkeypatch.setattr(runs_module, "remote_group", remote)
    ids = ["a" * 32, "b" * 32, "c" * 32]
    held_while_read: list[list[bool]] = []

    async def scenario() -> tuple[Runs, list[str]]:
        runs = _runs(Counter())

        async def count_read(key: str) -> int:
            held_while_read.append([runs.holds(i, 0) for i in ids])
            await asyncio.sleep(0.01)
            return 1  # the worker started the first member only

        monkeypatch.setattr(runs_module, "started_when_dead", count_read)
        runs.launch([_member(i, 0) for i in ids])
        await _settle()
        _, key, stream = remote.launched[0]
        assert runs.group_advance(key, [], 2) == 2  # leave for two; the worker dies in the first
        stream.died = True
        stream.over.set()

        async def relaunch() -> None:
            while len(remote.launched) < 2:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(relaunch(), 5)  # the two never started, in a group of their own
        relaunched = [m for m, _ in remote.launched[-1][0]]
        await _end_all(runs, remote)
        return runs, relaunched

    runs, relaunched = asyncio.run(scenario())
    assert held_while_read == [[True, True, True]]
    # The first member ends as a lone task whose worker died would; the other two run again.
    [(first, lost), *_] = runs._finisher.settled
    assert first.id == ids[0] and not lost.ok
    assert relaunched == ids[1:]


def test_a_lost_run_says_what_ray_said_without_its_colours():
    """Ray formats a task's error for a terminal (``ray::f()`` in cyan); the record keeps its words."""
    from ray.exceptions import RayError

    runs = _runs(Counter())
    runs._lease = SimpleNamespace(until=float("inf"))
    reply = runs._lost(RayError("\x1b[36mray::raylane:t:1()\x1b[39m (pid=7) was cancelled"))
    assert reply.error == "Ray task ended abnormally: ray::raylane:t:1() (pid=7) was cancelled"
    runs._lease = SimpleNamespace(until=0.0)
    assert "\x1b" not in runs._lost(RayError("\x1b[31mgone\x1b[0m")).error


class _HeldInvoke:
    """Stands in for ``remote_invoke``: each lone task's Ray task returns only when told."""

    def __init__(self):
        self.refs: list[asyncio.Future] = []

    def options(self, **_):
        return self

    def remote(self, call):
        self.refs.append(asyncio.get_running_loop().create_future())
        return self.refs[-1]


async def _launched_gated(runs: Runs, msg: TaskMessage, record: TaskRecord) -> None:
    """Launch ``msg``'s task ahead of its claim, in a slot of its own, and accept the claim."""
    answer = asyncio.get_running_loop().create_future()
    await runs._slots.acquire()
    decided = runs.launch_gated(msg, record, ([], 0, None, None), answer)
    answer.set_result(True)
    decided.set_result(record)
    await _settle()


def test_a_gated_attempt_is_settled_by_its_workers_word_before_its_ray_task_returns(monkeypatch):
    """A gated worker tells its executor's socket how the attempt ended the moment it knows
    (``TASK_END``); the Ray task's return comes a millisecond or more later. The first settles
    the attempt, once; the later return does not take the place of the task's next attempt."""
    held = _HeldInvoke()
    monkeypatch.setattr(runs_module, "remote_invoke", held)

    async def scenario() -> None:
        stats = Counter()
        runs = _runs(stats)
        finisher = runs._finisher
        msg, record = _member("f" * 32, 0)
        await _launched_gated(runs, msg, record)
        # Told by its worker for another attempt, or another task: nothing is settled.
        await runs.task_end(msg.id, 1, Reply(True, "other attempt"))
        await runs.task_end("8" * 32, 0, Reply(True, "other task"))
        await _settle()
        assert finisher.settled == []
        await runs.task_end(msg.id, 0, Reply(True, "told"))
        await _settle()
        assert [reply.result for _, reply in finisher.settled] == ["told"]
        # The next attempt starts here before the first one's Ray task returns.
        nxt, nxt_record = _member(msg.id, 1)
        runs.launch([(nxt, nxt_record)])
        await _settle()
        held.refs[0].set_result(Reply(True, "returned"))
        await _settle()
        assert [reply.result for _, reply in finisher.settled] == ["told"]  # settled once
        assert runs.running_attempt(msg.id) == 1 and runs.holds(msg.id, 1)

    asyncio.run(scenario())


def test_a_gated_attempt_whose_worker_does_not_tell_is_settled_by_its_return(monkeypatch):
    held = _HeldInvoke()
    monkeypatch.setattr(runs_module, "remote_invoke", held)

    async def scenario() -> None:
        runs = _runs(Counter())
        msg, record = _member("9" * 32, 0)
        await _launched_gated(runs, msg, record)
        held.refs[0].set_result(Reply(True, "returned"))
        await _settle()
        assert [reply.result for _, reply in runs._finisher.settled] == ["returned"]
        await runs.task_end(msg.id, 0, Reply(True, "told too late"))  # nothing waits for it now
        await _settle()
        assert len(runs._finisher.settled) == 1 and runs._told == {}

    asyncio.run(scenario())
