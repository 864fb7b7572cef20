"""Unit tier (no services): claims and writes to a StatusKeeper of the caller's node go over the
keeper's socket, with the same answers as its Ray calls, on the in-memory store; Ray's actor
calls are stand-ins that count what they carry."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace

from raylane.actors import keepers as keepers_module
from raylane.actors.channel import ChannelClient, ChannelServer
from raylane.actors.keepers import CLAIM, Keepers, keeper_methods
from raylane.actors.status_keeper import StatusKeeper
from raylane.actors.worker import ATTEMPT_OPEN
from raylane.models import PackedRecord, TaskMessage, TaskRecord, WriteOutcome, new_task_id
from raylane.sockets import record_row
from raylane.states import TaskState
from tests.memory_actors import memory_keeper

NODE = "node-1"
OWNER = "Executor/0123456789abcdef"


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def _pending() -> TaskRecord:
    msg = TaskMessage(id=new_task_id(), name="unit.echo", queue="default", created_at=datetime.now(UTC), timeout_s=5.0)
    return TaskRecord.pending(msg)


class _Handle:
    """A keeper's Ray handle: its calls run the keeper's methods directly, and are counted."""

    def __init__(self, keeper: StatusKeeper, server: ChannelServer, node: str):
        self.by_ray: list[str] = []

        def call(method):
            def remote(*args):
                self.by_ray.append(method)
                return asyncio.ensure_future(getattr(keeper, method)(*args))

            return SimpleNamespace(remote=remote)

        async def address():
            return (await server.start())._replace(node=node)

        self.claim, self.write = call("claim"), call("write")
        self.local_channel = SimpleNamespace(remote=address)


def _routed(monkeypatch, keeper: StatusKeeper, keeper_node: str) -> tuple[Keepers, _Handle, ChannelServer]:
    server = ChannelServer(keeper_methods(keeper), keeper_node, "StatusKeeper-0")
    handle = _Handle(keeper, server, keeper_node)
    monkeypatch.setattr(keepers_module.ray, "get_actor", lambda *args, **kwargs: handle)
    return Keepers("unit", 1, node=NODE), handle, server


async def _connected(keepers: Keepers) -> None:
    keepers._call(0, CLAIM, [])  # the first call asks for the channel
    while not keepers._links[0].connected:
        await asyncio.sleep(0.01)


def test_claims_and_ends_cross_the_socket_with_the_answers_ray_would_give(monkeypatch):
    keeper = memory_keeper(monkeypatch, "channel-answers")
    pending = [_pending() for _ in range(3)]
    running = [p.moved_to(TaskState.RUNNING, lease_owner=OWNER) for p in pending]

    async def main():
        keepers, handle, server = _routed(monkeypatch, keeper, NODE)
        try:
            await _connected(keepers)
            handle.by_ray.clear()
            written = await keepers.write(pending)
            gates, answers = keepers.claim_gated(running)
            claimed = await answers
            again = await keepers.write([running[0]])  # the same claim a second time loses
            ended = await keepers.write([running[1].moved_to(TaskState.SUCCEEDED, result=7)])
            return written, gates, claimed, again, ended, handle.by_ray
        finally:
            await keepers.close()
            await server.close()

    written, gates, claimed, again, ended, by_ray = _run(main())
    assert by_ray == []
    assert all(isinstance(o, WriteOutcome) and o.accepted for o in [*written, *claimed, *ended])
    assert [o.task_id for o in claimed] == [r.id for r in running]
    assert again[0].accepted is False and again[0].reason == "conflict"
    # A claim sent by socket has no Ray reference: its worker asks the executor, and the keeper's socket.
    assert [(g[0], g[1]) for g in gates] == [([], 0), ([], 1), ([], 2)]
    assert all(g[3] is not None and g[3].node == NODE for g in gates)
    assert keeper.store.get(running[1].id).result == 7
    assert set(keeper._running) == {running[0].id, running[2].id}  # the claims' deadlines are watched


def test_a_keeper_on_another_node_is_called_by_ray(monkeypatch):
    keeper = memory_keeper(monkeypatch, "channel-elsewhere")

    async def main():
        keepers, handle, server = _routed(monkeypatch, keeper, "node-2")
        try:
            keepers._call(0, CLAIM, [])
            await keepers._links[0]._connecting  # the link learns where the keeper is
            outcomes = await keepers.write([_pending()])
            return keepers._links[0].connected, outcomes, handle.by_ray
        finally:
            await keepers.close()
            await server.close()

    connected, outcomes, by_ray = _run(main())
    assert not connected
    assert outcomes[0].accepted
    assert by_ray == ["claim", "write"]


def test_a_write_whose_socket_closes_is_made_again_by_ray(monkeypatch):
    keeper = memory_keeper(monkeypatch, "channel-closed")
    record = _pending()

    async def main():
        keepers, handle, server = _routed(monkeypatch, keeper, NODE)
        try:
            await _connected(keepers)
            handle.by_ray.clear()
            await server.close()  # the keeper restarts, say
            outcomes = await keepers.write([record])
            return outcomes, handle.by_ray
        finally:
            await keepers.close()

    outcomes, by_ray = _run(main())
    assert outcomes[0].accepted
    assert by_ray == ["write"]
    assert keeper.store.get(record.id) is not None


def test_a_malformed_record_ends_the_connection_and_writes_nothing(monkeypatch):
    keeper = memory_keeper(monkeypatch, "channel-malformed")
    record = _pending()
    good = record_row(PackedRecord.of(record))
    bad_state = [*good[:2], "EXPLODED", *good[3:]]
    bad_type = [*good[:3], "1", *good[4:]]  # an attempt as a string

    async def main():
        server = ChannelServer(keeper_methods(keeper), NODE, "StatusKeeper-0")
        address = await server.start()
        closed = []
        try:
            for row in (bad_state, bad_type, good[:-1]):
                reader, writer = await asyncio.open_unix_connection(address.path)
                for frame in ({"token": address.token}, {"id": 1, "method": CLAIM, "body": [row]}):
                    body = json.dumps(frame).encode()
                    writer.write(len(body).to_bytes(4, "big") + body)
                closed.append(await reader.read())
                writer.close()
        finally:
            await server.close()
        return closed

    assert _run(main()) == [b"", b"", b""]
    assert keeper.store.get(record.id) is None


def test_a_worker_asks_the_keepers_socket_whether_its_attempt_is_open(monkeypatch):
    keeper = memory_keeper(monkeypatch, "channel-open")
    kills: list[str] = []
    monkeypatch.setattr(keeper, "_kill", lambda task_id, *args, **kwargs: kills.append(task_id))
    pending = _pending()
    running = pending.moved_to(TaskState.RUNNING, lease_owner=OWNER)

    async def main():
        server = ChannelServer(keeper_methods(keeper), NODE, "StatusKeeper-0")
        client = await ChannelClient.connect(await server.start())
        try:
            await keeper.write([pending])
            await keeper.claim([running])
            before = await client.call(ATTEMPT_OPEN, [running.id, running.attempt])
            await keeper.write([running.moved_to(TaskState.CANCELLED)])
            after = await client.call(ATTEMPT_OPEN, [running.id, running.attempt])
            return before, after
        finally:
            await client.close()
            await server.close()

    assert _run(main()) == (True, False)
    assert kills == [running.id]


def test_a_link_refused_while_its_actor_restarts_connects_without_another_call():
    # The keeper refused while Ray restarted it, and the calls that found the link missing were
    # all made by then: the link still comes back by itself, not only at the next call.
    from raylane.actors.channel import Link

    async def scenario() -> None:
        server = ChannelServer({}, NODE, "StatusKeeper-0")
        address = await server.start()
        asked = []

        async def ask():
            asked.append(1)
            if len(asked) == 1:
                raise RuntimeError("The actor is temporarily unavailable: the actor is restarting")
            return address

        link = Link(ask, NODE, "StatusKeeper-0", every_s=0.05)
        assert link.client() is None  # the only call made: it sets the connection going
        for _ in range(200):
            if link.connected:
                break
            await asyncio.sleep(0.01)
        assert link.connected and len(asked) == 2
        await link.close()

    _run(scenario())
