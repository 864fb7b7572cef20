"""The hand-over socket between a QueueConsumer and the Executor of its node, without Ray."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from ray.exceptions import ActorUnavailableError, RayActorError

from raylane.actors.channel import (
    ChannelAddress,
    ChannelCallFailed,
    ChannelClient,
    ChannelClosed,
    ChannelServer,
    socket_dir,
)
from raylane.actors.handover import START_MANY, hand_over, serving
from raylane.errors import ServiceUnavailable
from raylane.protocol import HandOff, HandOffResult


class FakeExecutor:
    """``start_many`` as an executor answers it: one outcome per message, after ``delay_s``."""

    def __init__(self, fail: BaseException | None = None):
        self.calls: list[tuple[list[bytes], float | None]] = []
        self.fail = fail
        self.delays: dict[bytes, float] = {}
        self.finished: list[list[bytes]] = []

    async def start_many(self, messages: list[bytes], read_at: float | None) -> list[HandOffResult]:
        self.calls.append((messages, read_at))
        await asyncio.sleep(max((self.delays.get(m, 0.0) for m in messages), default=0.0))
        if self.fail is not None:
            raise self.fail
        self.finished.append(messages)
        return [
            HandOffResult(HandOff.REFUSED, "no record") if m.startswith(b"refuse") else HandOffResult(HandOff.STARTED)
            for m in messages
        ]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _served(executor: FakeExecutor) -> tuple[ChannelServer, ChannelAddress]:
    server = ChannelServer({START_MANY: serving(executor.start_many)}, "node-1", f"Executor-0/{os.urandom(4).hex()}")
    return server, await server.start()


async def _being_taken(executor: FakeExecutor, messages: list[bytes]):
    """A server, a client, and the answer of ``messages`` sent, once the executor has them."""
    server, address = await _served(executor)
    client = await ChannelClient.connect(address)
    answer = asyncio.ensure_future(hand_over(client, messages, None))
    while not executor.calls:
        await asyncio.sleep(0.01)
    return server, client, answer


def test_a_batch_and_its_outcomes_cross_unchanged():
    executor = FakeExecutor()
    messages = [b'{"id": "a", "args": ["\\u00e9t\\u00e9 \xc3\xa9"]}', b"refuse-me"]

    async def main():
        server, address = await _served(executor)
        client = await ChannelClient.connect(address)
        try:
            return await hand_over(client, messages, 1234.5)
        finally:
            await client.close()
            await server.close()

    outcomes = _run(main())
    assert outcomes == [HandOffResult(HandOff.STARTED), HandOffResult(HandOff.REFUSED, "no record")]
    assert executor.calls == [(messages, 1234.5)]


def test_batches_in_flight_together_get_their_own_answers():
    executor = FakeExecutor()
    executor.delays = {b"slow": 0.3}

    async def main():
        server, address = await _served(executor)
        client = await ChannelClient.connect(address)
        try:
            slow = asyncio.ensure_future(hand_over(client, [b"slow"], None))
            fast = asyncio.ensure_future(hand_over(client, [b"refuse-fast", b"fast"], None))
            first = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
            return first[0], fast, await slow, await fast
        finally:
            await client.close()
            await server.close()

    done, fast, slow_out, fast_out = _run(main())
    assert done == {fast}  # answered while the slow batch still ran
    assert slow_out == [HandOffResult(HandOff.STARTED)]
    assert [o.outcome for o in fast_out] == [HandOff.REFUSED, HandOff.STARTED]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ServiceUnavailable("OpenSearch is away"), ServiceUnavailable),
        # A keeper the executor called is down: waited out as an outage, not counted against the batch.
        (ActorUnavailableError("keeper StatusKeeper-2 is away", b"0" * 16), RayActorError),
        (KeyError("boom"), ChannelCallFailed),
    ],
)
def test_a_failure_at_the_executor_is_raised_to_the_consumer(raised, expected):
    async def main():
        server, address = await _served(FakeExecutor(fail=raised))
        client = await ChannelClient.connect(address)
        try:
            await hand_over(client, [b"x"], None)
        finally:
            await client.close()
            await server.close()

    with pytest.raises(expected, match=r"OpenSearch is away|StatusKeeper-2 is away|boom"):
        _run(main())


def test_a_connection_without_the_token_is_closed_and_runs_nothing():
    executor = FakeExecutor()

    async def main():
        server, address = await _served(executor)
        client = await ChannelClient.connect(address._replace(token="0" * 32))
        try:
            with pytest.raises(ChannelClosed):
                await hand_over(client, [b"x"], None)
            # Whatever it sends, nothing reaches the executor, and later sends fail at once.
            with pytest.raises(ChannelClosed):
                hand_over(client, [b"y"], None)
        finally:
            await client.close()
            await server.close()

    _run(main())
    assert executor.calls == []


def test_a_malformed_request_ends_the_connection_and_runs_nothing():
    executor = FakeExecutor()

    async def main():
        server, address = await _served(executor)
        reader, writer = await asyncio.open_unix_connection(address.path)
        for frame in (
            {"token": address.token},
            {"id": 1, "method": START_MANY, "body": {"read_at": None, "messages": [1, 2]}},
        ):
            body = json.dumps(frame).encode()
            writer.write(len(body).to_bytes(4, "big") + body)
        try:
            return await reader.read()  # the server closes without an answer
        finally:
            writer.close()
            await server.close()

    assert _run(main()) == b""
    assert executor.calls == []


def test_an_unanswered_batch_fails_as_closed_when_the_executor_goes():
    executor = FakeExecutor()
    executor.delays = {b"never": 60.0}

    async def main():
        server, client, answer = await _being_taken(executor, [b"never"])
        await server.close()
        try:
            await answer
        finally:
            assert client.closed
            await client.close()

    with pytest.raises(ChannelClosed):
        _run(main())


def test_a_large_batch_crosses_whole():
    executor = FakeExecutor()
    messages = [json.dumps({"i": i, "pad": "x" * 100_000}).encode() for i in range(40)]  # 4 MB

    async def main():
        server, address = await _served(executor)
        client = await ChannelClient.connect(address)
        try:
            return await hand_over(client, messages, None)
        finally:
            await client.close()
            await server.close()

    assert len(_run(main())) == 40
    assert executor.calls[0][0] == messages


def test_sockets_live_in_a_directory_of_their_user_and_are_removed_when_closed():
    async def main():
        server, address = await _served(FakeExecutor())
        mode = os.stat(address.path).st_mode
        await server.close()
        return mode, os.path.exists(address.path)

    mode, left = _run(main())
    assert stat.S_IMODE(os.stat(socket_dir()).st_mode) == 0o700
    assert stat.S_IMODE(mode) == 0o600 and not left


def test_sockets_of_executors_that_are_gone_are_removed_by_the_next():
    async def main():
        first, address = await _served(FakeExecutor())
        # An executor killed outright leaves its socket behind: nothing answers at it.
        first._server.close()
        await first._server.wait_closed()
        left = os.path.exists(address.path)
        second, _ = await _served(FakeExecutor())
        await second.close()
        return left, os.path.exists(address.path)

    assert _run(main()) == (True, False)


def test_a_batch_being_taken_is_taken_to_the_end_when_its_consumer_goes():
    """Cut short, a batch's claims would be on their way with their launches undecided; a Ray
    call's caller that dies does not stop the call either."""
    executor = FakeExecutor()
    executor.delays = {b"slow": 0.3}

    async def main():
        server, client, answer = await _being_taken(executor, [b"slow"])
        await client.close()
        with pytest.raises(ChannelClosed):
            await answer
        while not executor.finished:
            await asyncio.sleep(0.01)
        await server.close()

    _run(main())
    assert executor.finished == [[b"slow"]]
