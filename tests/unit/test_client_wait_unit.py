"""The SDK's wait for one task: held by the task's StatusKeeper, with the RequestHandler asked
only where the keeper cannot tell; blocking and awaited alike. Ray's calls are stood in for:
each handle's method records its call and answers what the test set."""

from __future__ import annotations

import asyncio

import pytest
import ray
from ray.exceptions import RayActorError

from raylane import client
from raylane.actors.taskbook import WaitAnswer
from raylane.config import Settings
from raylane.models import PackedRecord
from raylane.states import TaskState
from tests.contracts import pending


class _Ref:
    """An answer, as ``ray.get`` or ``await`` gives it (an exception is raised)."""

    def __init__(self, value) -> None:
        self.value = value

    def get(self):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    def __await__(self):
        if False:  # a generator that returns at once
            yield
        return self.get()


class _Method:
    def __init__(self, calls: list, name: str, answer) -> None:
        self.calls, self.name, self.answer = calls, name, answer

    def remote(self, *args, **kwargs):
        self.calls.append((self.name, args, kwargs))
        return _Ref(self.answer)


class _Keeper:
    def __init__(self, calls: list, answer) -> None:
        self.wait_any = _Method(calls, "keeper.wait_any", answer)


class _Handler:
    def __init__(self, calls: list, record) -> None:
        self.wait = _Method(calls, "handler.wait", record)
        self.get = _Method(calls, "handler.get", record)


@pytest.fixture
def calls(monkeypatch) -> list:
    monkeypatch.setattr(ray, "get", _Ref.get)
    return []


@pytest.fixture(params=["blocking", "awaited"])
def wait(request):
    """``_Connection.wait``, or its asyncio twin run to its end."""
    if request.param == "blocking":
        return lambda conn, *args: conn.wait(*args)
    return lambda conn, *args: asyncio.run(conn.await_wait(*args))


def _connection(calls: list, keeper_answer, handler_record, keepers: int = 1) -> client._Connection:
    conn = client._Connection(Settings(), _Handler(calls, handler_record), owns_ray=False)
    conn._keepers = [_Keeper(calls, keeper_answer) for _ in range(keepers)]
    return conn


def test_the_owning_keeper_answers_a_wait_and_the_handler_is_not_asked(calls, wait):
    ended = pending().moved_to(TaskState.RUNNING).moved_to(TaskState.SUCCEEDED, result=3)
    conn = _connection(calls, WaitAnswer([PackedRecord.of(ended)], [], []), None)
    got = wait(conn, ended.id, 5.0)
    assert (got.id, got.state, got.result) == (ended.id, TaskState.SUCCEEDED, 3)
    assert calls == [("keeper.wait_any", ([ended.id], 5.0), {"unknown_first": True})]


def test_the_wait_goes_to_the_keeper_that_owns_the_task(calls, wait):
    rec = pending()
    conn = _connection(calls, WaitAnswer([], [], []), rec, keepers=3)
    owner = client.keeper_of(rec.id, 3)
    conn._keepers = [_Keeper([], WaitAnswer([], [], [rec.id])) for _ in range(3)]
    conn._keepers[owner] = _Keeper(calls, WaitAnswer([], [], []))
    wait(conn, rec.id, 1.0)
    assert calls[0][0] == "keeper.wait_any"


@pytest.mark.parametrize(
    "answer, asked",
    [
        (WaitAnswer([], ["x"], []), "handler.wait"),  # ended, and the keeper no longer holds the record
        (WaitAnswer([], [], ["x"]), "handler.wait"),  # not known open there: the store is read
        (WaitAnswer([], [], []), "handler.get"),  # not finished in time: the current record
        (RayActorError(), "handler.wait"),  # the keeper is away
    ],
)
def test_the_handler_answers_what_the_keeper_cannot(calls, wait, answer, asked):
    rec = pending()
    conn = _connection(calls, answer, rec)
    assert wait(conn, rec.id, 2.0).id == rec.id
    assert [c[0] for c in calls] == ["keeper.wait_any", asked]
    if isinstance(answer, RayActorError):
        assert conn._keepers == []  # looked for again later


def test_what_is_not_a_task_id_goes_to_the_handler(calls, wait):
    conn = _connection(calls, WaitAnswer([], [], []), pending())
    wait(conn, "not-a-task-id", 1.0)
    assert [c[0] for c in calls] == ["handler.wait"]


def test_a_wait_of_nan_seconds_is_bad_input():
    """NaN compares false with every time: such a wait would neither end nor wait."""
    from raylane.client import _Completion, _WaitSlices
    from raylane.errors import InvalidTaskInput

    with pytest.raises(InvalidTaskInput, match="timeout"):
        _WaitSlices("a" * 32, float("nan"))
    with pytest.raises(InvalidTaskInput, match="timeout"):
        _Completion(["a" * 32], float("nan"))
