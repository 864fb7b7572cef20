"""The gate of a task launched beside its claim, with Ray's calls replaced: the function starts
only if the claim was accepted and the task's keeper has not ended the attempt since."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from raylane.actors import worker
from raylane.actors.channel import ChannelAddress, ChannelClosed
from raylane.actors.worker import ATTEMPT_OPEN, CLAIM_ANSWER, ENDED_UNSTARTED, GATE_LATE_S, NOT_CLAIMED, _pass_gate


class _Keeper:
    """A keeper that ends the attempt (a cancel written) once asked ``open_for`` times."""

    def __init__(self, open_for: int):
        self.open_for, self.asked = open_for, 0
        self.attempt_open = self  # ``keeper.attempt_open.remote(task_id, attempt)``

    def remote(self, task_id: str, attempt: int) -> tuple[str, bool]:
        self.asked += 1
        return ("open", self.asked <= self.open_for)


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.get`` of a claim's answer takes ``clock.answer_s``; of a keeper's answer, no time."""
    clock = SimpleNamespace(now=0.0, answer_s=0.01)

    def get(ref, timeout=None):
        if isinstance(ref, tuple) and ref[0] == "open":
            return ref[1]
        clock.now += clock.answer_s
        return ref

    monkeypatch.setattr(worker.ray, "get", get)
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock.now)
    return clock


def _gate(accepted: bool, keeper: _Keeper | None) -> tuple[list, int, object, None]:
    return ([[SimpleNamespace(accepted=accepted)]], 0, keeper, None)


TASK = (object(), "t" * 32, 0)


def test_an_accepted_claim_of_an_open_attempt_starts_after_one_question(fake_ray):
    keeper = _Keeper(open_for=1)
    assert _pass_gate(_gate(True, keeper), TASK) is None
    assert keeper.asked == 1  # asked beside the answer, not after it


def test_a_claim_not_accepted_never_starts(fake_ray):
    assert _pass_gate(_gate(False, _Keeper(open_for=1)), TASK) == NOT_CLAIMED


def test_an_attempt_its_keeper_ended_before_the_worker_came_never_starts(fake_ray):
    # The worker waited for a CPU while its executor was frozen; the cancel was written meanwhile.
    assert _pass_gate(_gate(True, _Keeper(open_for=0)), TASK) == ENDED_UNSTARTED


def test_an_answer_heard_late_is_checked_again(fake_ray):
    # Open when first asked; the cancel is written while the answer takes GATE_LATE_S to come.
    fake_ray.answer_s = GATE_LATE_S
    keeper = _Keeper(open_for=1)
    assert _pass_gate(_gate(True, keeper), TASK) == ENDED_UNSTARTED
    assert keeper.asked == 2


def test_a_gate_without_a_keeper_follows_the_claim_alone(fake_ray):
    assert _pass_gate(_gate(True, None), TASK) is None


class _Executor:
    """An executor whose word on a claim is ``accepted`` (``executor.claim_answer.remote(...)``)."""

    def __init__(self, accepted: bool):
        self.accepted, self.asked = accepted, 0
        self.claim_answer = self

    def remote(self, task_id: str, attempt: int) -> bool:
        self.asked += 1
        return self.accepted


@pytest.mark.parametrize("accepted", [True, False])
def test_a_claim_sent_by_a_keepers_channel_is_answered_by_the_executor(fake_ray, accepted):
    executor, keeper = _Executor(accepted), _Keeper(open_for=1)
    task = (executor, "t" * 32, 0)
    assert _pass_gate(([], 0, keeper, None), task) == (None if accepted else NOT_CLAIMED)
    assert executor.asked == 1


@pytest.fixture
def sockets(monkeypatch):
    """``call_kept`` replaced: what was asked of which socket, answered from ``answers``; a socket
    named in ``closed`` is closed."""
    asked: list[tuple[str, str, list]] = []
    state = SimpleNamespace(asked=asked, answers={CLAIM_ANSWER: True, ATTEMPT_OPEN: True}, closed=set())

    def call_kept(address, method, body):
        asked.append((address.path, method, body))
        if address.path in state.closed:
            raise ChannelClosed("closed")
        return state.answers[method]

    monkeypatch.setattr(worker, "call_kept", call_kept)
    monkeypatch.setattr(worker, "_node", "node-1")
    yield state
    # A question a gate did not wait for (the keeper's, beside a claim refused) is answered
    # within its own test, not in the next one's stand-ins.
    if worker._getter is not None:
        worker._getter.shutdown(wait=True)
        worker._getter = None


EXECUTOR_SOCKET = ChannelAddress("node-1", "/executor.sock", "x")
KEEPER_SOCKET = ChannelAddress("node-1", "/keeper.sock", "y")


def test_a_worker_on_the_node_of_its_executor_and_keeper_asks_both_by_socket(fake_ray, sockets):
    executor, keeper = _Executor(False), _Keeper(open_for=0)  # their Ray calls would say no
    task = (executor, "t" * 32, 3)
    assert _pass_gate(([], 0, keeper, KEEPER_SOCKET), task, EXECUTOR_SOCKET) is None
    assert sorted(sockets.asked) == [
        ("/executor.sock", CLAIM_ANSWER, ["t" * 32, 3]),
        ("/keeper.sock", ATTEMPT_OPEN, ["t" * 32, 3]),
    ]
    assert executor.asked == keeper.asked == 0


def test_the_sockets_words_stop_the_function_as_the_ray_calls_would(fake_ray, sockets):
    task = (_Executor(True), "t" * 32, 3)
    sockets.answers[ATTEMPT_OPEN] = False
    assert _pass_gate(([], 0, _Keeper(open_for=1), KEEPER_SOCKET), task, EXECUTOR_SOCKET) == ENDED_UNSTARTED
    sockets.answers[CLAIM_ANSWER] = False
    assert _pass_gate(([], 0, _Keeper(open_for=1), KEEPER_SOCKET), task, EXECUTOR_SOCKET) == NOT_CLAIMED


def test_a_closed_socket_or_one_on_another_node_leaves_the_question_to_ray(fake_ray, sockets):
    executor, keeper = _Executor(True), _Keeper(open_for=0)
    task = (executor, "t" * 32, 3)
    sockets.closed = {"/executor.sock"}
    elsewhere = KEEPER_SOCKET._replace(node="node-2")
    assert _pass_gate(([], 0, keeper, elsewhere), task, EXECUTOR_SOCKET) == ENDED_UNSTARTED
    assert executor.asked == keeper.asked == 1
    assert [method for _, method, _ in sockets.asked] == [CLAIM_ANSWER]


def test_a_told_end_is_read_field_by_field_and_anything_else_is_refused():
    from raylane.actors.worker import told_end
    from raylane.protocol import Reply

    reply = Reply(False, None, "ValueError", "bad", "Traceback ...", ("builtins:ValueError",), 1.0, 2, False)
    sent = json.loads(json.dumps(list(reply)))  # as it crosses the socket
    assert told_end(["a" * 32, 0, sent]) == ("a" * 32, 0, reply)
    for body in (
        ["a" * 32, "0", sent],  # an attempt that is not a number
        ["a" * 32, 0, sent[:8]],  # a field short
        ["a" * 32, 0, ["yes", *sent[1:]]],  # ok that is not a bool
        ["a" * 32, 0, [*sent[:5], [1], *sent[6:]]],  # an error type that is not a string
        ["a" * 32, 0, [*sent[:6], "soon", *sent[7:]]],  # a time that is not a number
    ):
        with pytest.raises(TypeError):
            told_end(body)
