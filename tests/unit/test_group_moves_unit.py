"""Unit tier (no services): a member that runs long gives back its group's leave to start the
members after it, and the executor's side moves exactly those on."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from raylane.actors import grouping, worker
from raylane.actors.channel import ChannelAddress
from raylane.actors.grouping import Group
from raylane.actors.worker import MemberEnd
from raylane.models import TaskMessage
from raylane.protocol import Reply
from tests.conftest import wait_until


@pytest.fixture(autouse=True)
def _counts_here(monkeypatch, tmp_path):
    """Each control's count of members started goes to the test's directory, not the node's."""
    monkeypatch.setattr(grouping, "_count_dir", lambda: str(tmp_path))


class _Method:
    """One method of a stand-in executor: ``remote`` notes the call and answers at once."""

    def __init__(self, calls: list, name: str, answer=None):
        self.calls, self.name, self.answer = calls, name, answer

    def remote(self, *args):
        self.calls.append((self.name, args))
        return self.answer(*args) if callable(self.answer) else self.answer


class _Executor:
    """Grants whatever it is asked until members are moved on: then no further than they were."""

    def __init__(self):
        self.calls: list = []
        self.kept: int | None = None
        self.group_advance = _Method(self.calls, "group_advance", self._advance)
        self.group_long = _Method(self.calls, "group_long", self._long)
        for name in ("group_report", "group_began", "group_running", "group_signal", "group_busy"):
            setattr(self, name, _Method(self.calls, name))

    def _advance(self, key, ends, upto):
        return upto if self.kept is None else min(upto, self.kept)

    def _long(self, key, member, started, blocked):
        self.kept = started
        return "moved"  # what the worker waits for before it asks for leave again


def _control(
    monkeypatch,
    executor: _Executor,
    seconds: dict[str, float],
    first_grant: int = 1,
    channel: ChannelAddress | None = None,
    work: dict | None = None,
    move_after_s: float | None = None,
) -> worker._MemberControl:
    never = threading.Event()
    monkeypatch.setattr(worker.ray, "get", lambda ref: never.wait() or [])  # no cancel signal comes

    def waited(ref):
        executor.calls.append(("waited", (ref,)))
        return ref

    monkeypatch.setattr(worker, "off_main_get", waited)
    monkeypatch.setattr(worker, "MOVE_AFTER_S", 0.2)

    def invoke(name, args, kwargs, limits, task):
        time.sleep(seconds.get(task[1], 0.0))
        (work or {}).get(task[1], lambda: None)()
        return Reply(True, task[1])

    monkeypatch.setattr(worker, "invoke", invoke)
    return worker._MemberControl(executor, "t0", worker.Limits(), first_grant, channel, move_after_s)


def test_a_long_member_gives_back_the_leave_to_start_those_after_it(monkeypatch):
    executor = _Executor()
    control = _control(monkeypatch, executor, {"t3": 0.6})
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(8)]
    control.close()
    # The leave grew with the quick members (t0; t1 and t2; then t3 to t6). t3 ran long, so the
    # leave for t4 to t6 was given back, and the executor moved t4 to t7 on: none ran here.
    assert [r.result if r else None for r in replies] == ["t0", "t1", "t2", "t3", None, None, None, None]
    assert [args[2] for name, args in executor.calls if name == "group_advance"][:3] == [1, 3, 7]
    assert ("group_long", ("t0", "t3", 4, True)) in executor.calls  # blocked: it sleeps
    # The next request for leave was made only once the executor had taken the message that gave
    # it back (whatever order Ray would deliver them in), and got none.
    last_request = max(i for i, (name, _) in enumerate(executor.calls) if name == "group_advance")
    assert executor.calls.index(("waited", ("moved",))) < last_request


def test_members_behind_one_move_on_after_the_executors_move_after(monkeypatch):
    # t1 sleeps 0.15 s: short of the most a member may hold back its siblings (0.2 s here), and
    # long past what the executor gave this group, whose name's members are quick.
    for move_after_s, moved in ((None, False), (0.05, True)):
        executor = _Executor()
        control = _control(monkeypatch, executor, {"t1": 0.15}, move_after_s=move_after_s)
        replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(3)]
        control.close()
        longs = [args for name, args in executor.calls if name == "group_long"]
        assert longs == ([("t0", "t1", 2, True)] if moved else []), move_after_s
        assert [r.result if r else None for r in replies] == ["t0", "t1", None if moved else "t2"]


def _spin(seconds: float) -> None:
    """Work on the CPU for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_a_long_member_at_work_is_not_said_blocked(monkeypatch):
    executor = _Executor()
    control = _control(monkeypatch, executor, {}, work={"t1": lambda: _spin(0.6)})
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(3)]
    control.close()
    assert [r.result if r else None for r in replies] == ["t0", "t1", None]
    assert [args for name, args in executor.calls if name == "group_long"] == [("t0", "t1", 2, False)]
    assert all(name != "group_busy" for name, _ in executor.calls)


def test_a_long_member_at_work_on_a_cpu_it_must_share_is_not_said_blocked(monkeypatch):
    # On a machine with more work than CPUs, a member at work may get less than LEND_BELOW of
    # one; its thread waits for a CPU, and lending its CPU would load the machine further. (Here
    # the process's CPU clock stands still, as it nearly does for a member starved of a CPU.)
    executor = _Executor()
    control = _control(monkeypatch, executor, {}, work={"t1": lambda: _spin(0.6)})
    monkeypatch.setattr(worker.time, "process_time", lambda: 0.0)
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(3)]
    control.close()
    assert [r.result if r else None for r in replies] == ["t0", "t1", None]
    assert [args for name, args in executor.calls if name == "group_long"] == [("t0", "t1", 2, False)]


def test_a_thread_is_runnable_at_work_and_not_while_it_waits():
    assert worker._runnable(threading.get_native_id())  # this thread, reading its own state
    main = threading.get_native_id()
    seen_waiting = threading.Event()

    def look() -> None:  # the main thread waits for this one
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen_waiting.is_set():
            if not worker._runnable(main):
                seen_waiting.set()
            time.sleep(0.01)

    t = threading.Thread(target=look)
    t.start()
    assert seen_waiting.wait(15)
    t.join()
    assert not worker._runnable(None) and not worker._runnable(2**31 - 1)


def test_a_blocked_member_that_works_again_says_so_once(monkeypatch):
    executor = _Executor()
    control = _control(monkeypatch, executor, {"t1": 0.4}, work={"t1": lambda: _spin(0.4)})
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(3)]
    control.close()
    assert [r.result if r else None for r in replies] == ["t0", "t1", None]
    assert [args for name, args in executor.calls if name == "group_long"] == [("t0", "t1", 2, True)]
    assert [args for name, args in executor.calls if name == "group_busy"] == [("t0", "t1")]


def test_a_member_waiting_on_a_child_process_is_not_said_blocked(monkeypatch):
    import subprocess
    import sys

    executor = _Executor()

    def child() -> None:  # the child may be the one at work: its CPU is not this process's
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.6)"], check=True)

    control = _control(monkeypatch, executor, {}, work={"t1": child})
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(3)]
    control.close()
    assert [r.result if r else None for r in replies] == ["t0", "t1", None]
    assert [args for name, args in executor.calls if name == "group_long"] == [("t0", "t1", 2, False)]


def test_a_group_of_quick_members_gives_nothing_back(monkeypatch):
    executor = _Executor()
    control = _control(monkeypatch, executor, {})
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(6)]
    control.close()
    assert [r.result for r in replies] == [f"t{i}" for i in range(6)]
    assert all(name != "group_long" for name, _ in executor.calls)


def _members(n: int) -> list:
    return [(TaskMessage(id=f"{i:032x}", name="a", queue="q", created_at=datetime.now(UTC)), None) for i in range(n)]


def test_the_members_moved_on_are_those_without_leave_not_over_and_not_cancelled():
    members = _members(8)
    group = Group(members)  # type: ignore[arg-type]
    ids = [m.id for m, _ in members]
    group.granted = 5  # leave for five; the worker started three and gave back the rest
    group.reported.add(ids[4])  # reported not started, by a worker that was stopped
    group.cancelled.add(ids[6])
    moved = [m.id for m, _ in group.take_waiting(3)]
    assert moved == [ids[3], ids[5], ids[7]]
    assert group.kept == 3 and group.moved == set(moved)
    assert group.take_waiting(3) == []  # moved once only
    assert group.possibly_started() == ids[:3]


def test_the_first_grant_is_the_executors_size_then_grows_from_there(monkeypatch):
    executor = _Executor()
    control = _control(monkeypatch, executor, {}, first_grant=8)
    replies = [control.run(i, f"t{i}", 0, "n", [], {}, None) for i in range(30)]
    control.close()
    assert [r.result for r in replies if r] == [f"t{i}" for i in range(30)]
    # One message for the first 8 members, not four (1, 2, 4, 8), then grants that double.
    assert [args[2] for name, args in executor.calls if name == "group_advance"] == [8, 24, 56]


def _socket(monkeypatch, executor: _Executor, broken: bool = False, signal=None) -> list:
    """The executor's socket on the worker's node: each request crosses as JSON, and is answered
    by ``executor`` as its Ray method would (or the connection breaks after it was sent). Requests
    for leave are noted in the list returned; waits for the group's signal, in ``executor.signals``,
    are answered by ``signal(key)`` (by default, never)."""
    asked: list = []
    executor.signals = []

    def call_kept(address, method, body):
        if method == worker.GROUP_SIGNAL:
            key = worker.asked_signal(json.loads(json.dumps(body)))
            executor.signals.append(key)
            if broken:
                raise worker.ChannelClosed("broke after the request was sent")
            return json.loads(json.dumps((signal or (lambda _: threading.Event().wait()))(key)))
        asked.append(method)
        if broken:
            raise worker.ChannelClosed("broke after the request was sent")
        return executor._advance(*worker.asked_advance(json.loads(json.dumps(body))))

    monkeypatch.setattr(worker, "call_kept", call_kept)
    monkeypatch.setattr(worker, "_node", "node-1")
    return asked


EXECUTOR_SOCKET = ChannelAddress("node-1", "/executor.sock", "x")


def test_a_groups_worker_asks_for_leave_by_its_executors_socket(monkeypatch):
    executor = _Executor()
    asked = _socket(monkeypatch, executor)
    control = _control(monkeypatch, executor, {}, channel=EXECUTOR_SOCKET)
    done = Reply(True, {"n": 1}, began=1.0, returned=2.0)
    assert control._advance([MemberEnd("t0", True, done), MemberEnd("t1", False)], 3) == 3
    assert asked == [worker.GROUP_ADVANCE] and executor.calls == []  # nothing by Ray
    # What the executor reads is what the worker sent.
    body = worker.advance_body("t0", [MemberEnd("t0", True, done), MemberEnd("t1", False)], 3)
    assert worker.asked_advance(json.loads(json.dumps(body))) == (
        "t0",
        [MemberEnd("t0", True, done), MemberEnd("t1", False)],
        3,
    )
    for bad in (["t0", [], True], ["t0", [["t1", 1, None]], 2], [0, [], 2], ["t0", [["t1", True, [1]]], 2]):
        with pytest.raises((TypeError, ValueError)):
            worker.asked_advance(bad)


def test_a_groups_worker_waits_for_its_signal_on_its_executors_socket(monkeypatch):
    """The signal was a reference the executor made for each group by a Ray call to itself, and
    passed with the group's arguments."""
    executor = _Executor()
    cancel = threading.Event()
    _socket(monkeypatch, executor, signal=lambda key: cancel.wait(10) and ["t1", "t2"])
    control = _control(monkeypatch, executor, {}, channel=EXECUTOR_SOCKET)
    assert control.run(0, "t0", 0, "n", [], {}, None) == Reply(True, "t0")
    cancel.set()
    wait_until(lambda: control.cancelled is not None, what="the signal taken")
    assert control.cancelled == frozenset({"t1", "t2"})
    assert control.run(1, "t1", 0, "n", [], {}, None) is None  # no member starts after the signal
    control.close()
    assert executor.signals == ["t0"]  # the group's key, asked once
    assert "group_signal" not in [name for name, _ in executor.calls]  # nothing by Ray
    for bad in (None, 3, ["t0"]):
        with pytest.raises(TypeError):
            worker.asked_signal(bad)


def test_a_wait_for_the_signal_whose_socket_breaks_is_made_by_ray(monkeypatch):
    executor = _Executor()
    _socket(monkeypatch, executor, broken=True)
    control = _control(monkeypatch, executor, {}, channel=EXECUTOR_SOCKET)
    wait_until(lambda: ("group_signal", ("t0",)) in executor.calls, what="the signal asked for by Ray")
    assert executor.signals == ["t0"]
    control.close()


def test_a_request_for_leave_whose_socket_breaks_is_made_by_ray(monkeypatch):
    executor = _Executor()
    asked = _socket(monkeypatch, executor, broken=True)
    control = _control(monkeypatch, executor, {}, channel=EXECUTOR_SOCKET)
    ended = [MemberEnd("t0", True, Reply(True, None))]
    assert control._advance(ended, 2) == 2
    assert asked == [worker.GROUP_ADVANCE]
    assert [(name, args) for name, args in executor.calls if name == "group_advance"] == [
        ("group_advance", ("t0", ended, 2))
    ]


def test_a_groups_worker_on_another_node_asks_by_ray(monkeypatch):
    executor = _Executor()
    asked = _socket(monkeypatch, executor)
    control = _control(monkeypatch, executor, {}, channel=EXECUTOR_SOCKET._replace(node="node-2"))
    assert control._advance([], 1) == 1
    assert asked == [] and [name for name, _ in executor.calls if name == "group_advance"] == ["group_advance"]


def test_a_groups_worker_counts_each_member_before_it_starts(monkeypatch, tmp_path):
    counted: list[int] = []
    path = Path(grouping._count_path("t0"))  # the group's key is "t0"

    def count_now():
        counted.append(int.from_bytes(path.read_bytes(), "little"))

    executor = _Executor()
    control = _control(monkeypatch, executor, {}, first_grant=4, work={f"t{i}": count_now for i in range(3)})
    for i in range(3):
        control.run(i, f"t{i}", 0, "n", [], {}, None)
    assert counted == [1, 2, 3]  # as each ran, the count already held it
    control.close()
    assert path.parent == tmp_path and not path.exists()  # ended in order: nothing for the executor to read
