"""Unit tier (no services): a driver's calls over the sockets of its node's actors. The blocking
client keeps its connection and never takes a late answer for the next call's; a keeper answers a
wait by socket as its Ray call does; a submit goes by socket only when JSON carries its request
unchanged, and its typed errors come back as they are; a reply's error is made only from
raylane's own classes. Ray's actor calls are stand-ins that record what they carry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import ray
from ray.exceptions import RayTaskError

from raylane import client
from raylane.actors.channel import ChannelServer, Method
from raylane.actors.keepers import keeper_methods
from raylane.actors.status_keeper import StatusKeeper
from raylane.config import Settings
from raylane.errors import (
    PayloadTooLarge,
    RaylaneError,
    ServiceUnavailable,
    StoreUnavailable,
    UnknownTaskName,
)
from raylane.models import TaskMessage, TaskRecord, new_task_id
from raylane.protocol import ErrorReply, reply_as_json, unwrap_json
from raylane.sockets import (
    SUBMIT,
    WAIT,
    BlockingClient,
    ChannelAddress,
    ChannelClosed,
    ChannelUnreachable,
    call_kept,
    wait_answer,
)
from raylane.states import TaskState
from tests.conftest import wait_until
from tests.memory_actors import memory_keeper

NODE = "node-1"
OWNER = "Executor/0123456789abcdef"


class _Loop:
    """An event loop on a thread of its own, where the served actors run while the test blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 20.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def loop() -> Iterator[_Loop]:
    served = _Loop()
    yield served
    served.close()


def _serve(loop: _Loop, methods: dict[str, Method], name: str = "unit") -> tuple[ChannelServer, ChannelAddress]:
    server = ChannelServer(methods, NODE, name)
    return server, loop.run(server.start())


async def _echo(body: list) -> list:
    await asyncio.sleep(body[1])
    return body


ECHO = {"echo": Method(lambda body: body, _echo)}


def test_the_blocking_client_keeps_its_connection_between_calls(loop):
    server, address = _serve(loop, ECHO)
    conn = BlockingClient(address)
    try:
        assert conn.call("echo", ["a", 0]) == ["a", 0]
        first = conn._conn
        assert conn.call("echo", ["b", 0]) == ["b", 0]
        assert conn._conn is first
    finally:
        conn.close()
        loop.run(server.close())


def test_an_answer_that_came_too_late_is_not_taken_for_the_next_calls(loop):
    server, address = _serve(loop, ECHO)
    conn = BlockingClient(address)
    try:
        with pytest.raises(ChannelClosed):
            conn.call("echo", ["late", 0.5], timeout_s=0.05)
        assert conn.call("echo", ["next", 0.6]) == ["next", 0.6]  # after "late" was answered
    finally:
        conn.close()
        loop.run(server.close())


def test_a_call_that_could_not_be_sent_says_so(loop, tmp_path):
    server, address = _serve(loop, ECHO)
    try:
        with pytest.raises(ChannelUnreachable):
            BlockingClient(address._replace(path=str(tmp_path / "gone.sock"))).call("echo", ["x", 0])
        # Sent, but turned away unanswered (a token that is not the actor's): whether it ran is unknown.
        with pytest.raises(ChannelClosed) as e:
            BlockingClient(address._replace(token="0" * 32)).call("echo", ["x", 0])
        assert not isinstance(e.value, ChannelUnreachable)
    finally:
        loop.run(server.close())


def test_a_workers_calls_keep_one_connection_per_thread_and_channel(loop):
    server, address = _serve(loop, ECHO)
    try:
        assert [call_kept(address, "echo", [i, 0]) for i in range(3)] == [[0, 0], [1, 0], [2, 0]]
        assert len(server._connections) == 1
        called, done = threading.Event(), threading.Event()

        def another_thread() -> None:
            call_kept(address, "echo", ["other", 0])
            called.set()
            done.wait(5)  # its connection lasts as long as the thread

        other = threading.Thread(target=another_thread)
        other.start()
        assert called.wait(5)
        assert len(server._connections) == 2
        done.set()
        other.join(5)
        # The actor ends the connections (it stopped, say): the next call, never sent on its kept
        # one, goes on a new one.
        for connection in list(server._connections):
            loop.loop.call_soon_threadsafe(connection.cancel)
        wait_until(lambda: not server._connections, timeout=5, what="the connections to end")
        assert call_kept(address, "echo", ["again", 0]) == ["again", 0]
        assert len(server._connections) == 1
    finally:
        loop.run(server.close())


def _running() -> tuple[TaskRecord, TaskRecord]:
    msg = TaskMessage(id=new_task_id(), name="unit.echo", queue="default", created_at=datetime.now(UTC))
    pending = TaskRecord.pending(msg)
    return pending, pending.moved_to(TaskState.RUNNING, lease_owner=OWNER)


def test_a_keeper_answers_a_wait_by_socket_as_its_end_is_written(monkeypatch, loop):
    keeper = memory_keeper(monkeypatch, "driver-wait")
    pending, running = _running()
    loop.run(keeper.write([pending]))
    loop.run(keeper.claim([running]))
    server, address = _serve(loop, keeper_methods(keeper), "StatusKeeper-0")
    conn = BlockingClient(address)
    try:
        ending = asyncio.run_coroutine_threadsafe(_end_soon(keeper, running), loop.loop)
        answer = wait_answer(conn.call(WAIT, [[running.id], 10.0, True]))
        assert answer.unread == [] and answer.unknown == []
        ending.result(5)
        [record] = [p.unpack() for p in answer.records]
        assert (record.id, record.state, record.result) == (running.id, TaskState.SUCCEEDED, 5)
        # Not known open to this keeper: the caller is told to look in the store.
        assert wait_answer(conn.call(WAIT, [["f" * 32], 0.0, True])).unknown == ["f" * 32]
        for bad in ([[running.id], -1, True], [running.id, 1.0, True], [[running.id], 1.0, "yes"]):
            with pytest.raises(ChannelClosed):  # what no caller sends ends the connection unanswered
                conn.call(WAIT, bad)
    finally:
        conn.close()
        loop.run(server.close())


async def _end_soon(keeper: StatusKeeper, running: TaskRecord) -> None:
    while not keeper._book.waited_for():  # the end is written once the wait is held
        await asyncio.sleep(0.005)
    await keeper.write([running.moved_to(TaskState.SUCCEEDED, result=5)])


def test_a_replys_error_is_made_only_from_raylanes_own_classes():
    error = UnknownTaskName("unit.missing", ["unit.echo"])
    error.not_json = object()  # type: ignore[attr-defined]
    with pytest.raises(UnknownTaskName) as raised:
        unwrap_json(reply_as_json(ErrorReply(error)))
    assert str(raised.value) == str(error) and raised.value.name == "unit.missing"
    assert not hasattr(raised.value, "not_json")
    with pytest.raises(PayloadTooLarge) as too_large:
        unwrap_json(reply_as_json(ErrorReply(PayloadTooLarge(10, 5))))
    assert (too_large.value.size, too_large.value.limit) == (10, 5)
    # An outage another actor met, which Ray wrapped on its way to the handler, crosses as itself.
    try:
        raise StoreUnavailable("bulk write failed", status=503)
    except StoreUnavailable as e:
        wrapped = RayTaskError("StatusKeeper.write", "Traceback ...", e).as_instanceof_cause()
    with pytest.raises(StoreUnavailable) as outage:
        unwrap_json(reply_as_json(ErrorReply(wrapped)))
    assert outage.value.status == 503
    for name in ("Exception", "_rebuild", "os.system", "ChannelClosed", 7):
        with pytest.raises(RaylaneError) as other:
            unwrap_json({"raised": [name, "m", {}]})
        assert type(other.value) is RaylaneError
    assert unwrap_json(reply_as_json("abc")) == "abc"


class _Ref:
    def __init__(self, value) -> None:
        self.value = value


class _Handler:
    """A RequestHandler's Ray handle: its submit is recorded; its ``local_channel`` is ``address``."""

    def __init__(self, address: ChannelAddress | None, by_ray: list) -> None:
        def remote(request):
            by_ray.append(request)
            return _Ref("f" * 32)

        self.submit = type("M", (), {"remote": staticmethod(remote)})
        self.local_channel = type("M", (), {"remote": staticmethod(lambda: _Ref(address))})


@pytest.fixture
def driver(monkeypatch, loop):
    """A driver's connection on ``NODE`` whose handler serves submits by socket: the requests
    that came by socket and by Ray, and the connection."""
    by_socket: list = []
    by_ray: list = []

    async def submit(request: dict) -> dict:
        by_socket.append(request)
        if request["name"] == "unit.slow":
            await asyncio.sleep(1.0)
        if request["name"] == "unit.missing":
            return reply_as_json(ErrorReply(UnknownTaskName("unit.missing")))
        return reply_as_json("a" * 32)

    server, address = _serve(loop, {SUBMIT: Method(lambda body: body, submit)}, "RequestHandler")
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref.value)
    monkeypatch.setattr(client, "_node_id", lambda: NODE)
    conn = client._Connection(Settings(), _Handler(address, by_ray), owns_ray=False)
    yield by_socket, by_ray, conn, server
    loop.run(server.close())


def test_a_submit_goes_by_socket_when_json_carries_it_unchanged(driver):
    by_socket, by_ray, conn, _ = driver
    plain = {"name": "unit.echo", "args": [1, "two", [3.5, None]], "kwargs": {"k": {"v": True}}}
    assert conn.call(SUBMIT, plain) == "a" * 32
    assert (by_socket, by_ray, conn.by_socket) == ([plain], [], 1)
    # JSON would turn a tuple into a list and an int key into a string, and has no NaN: the
    # handler judges those requests as they are, by Ray.
    for changed in ([(1, 2)], [{1: "a"}], [float("nan")], [object()]):
        assert conn.call(SUBMIT, {"name": "unit.echo", "args": changed}) == "f" * 32
    assert len(by_ray) == 4 and len(by_socket) == 1
    with pytest.raises(UnknownTaskName):
        conn.call(SUBMIT, {"name": "unit.missing"})


def test_a_submit_whose_answer_is_lost_is_reported_not_repeated(driver, loop):
    by_socket, by_ray, conn, server = driver
    # The handler goes while the submit is under way: whether it was carried out is unknown to the
    # driver (here it was), which must not submit it a second time.
    loop.loop.call_soon_threadsafe(lambda: loop.loop.call_later(0.3, lambda: asyncio.ensure_future(server.close())))
    with pytest.raises(ServiceUnavailable):
        conn.call(SUBMIT, {"name": "unit.slow"})
    assert [r["name"] for r in by_socket] == ["unit.slow"] and by_ray == []
    # The socket is left alone a while after that: the next submit goes by Ray.
    assert conn.call(SUBMIT, {"name": "unit.echo"}) == "f" * 32
    assert [r["name"] for r in by_ray] == ["unit.echo"]
