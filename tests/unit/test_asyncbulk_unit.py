"""The event loop's own connection for bulk writes (``raylane.asyncbulk``), against a stand-in server."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest

from raylane.asyncbulk import BulkConnection, NotAnswered
from raylane.config import OpenSearchConnection


class StandIn:
    """An HTTP server on a free port that answers each request with the next of ``answers``
    (bytes; None: close the connection without answering), and keeps what it was sent."""

    def __init__(self, answers: list[bytes | None]):
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> StandIn:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                sizes = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                length = int(sizes[0].split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()


def ok(body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def connection(port: int, **kw) -> BulkConnection:
    return BulkConnection(OpenSearchConnection(url=f"http://127.0.0.1:{port}/base", **kw), timeout_s=5)


def test_requests_go_out_on_one_kept_connection_with_their_auth():
    async def run():
        async with StandIn([ok(b'{"items":[1]}'), ok(b'{"items":[2]}')]) as server:
            conn = connection(server.port, username="writer", password="s3cret")
            answers = [await conn.bulk(b'{"index":{}}\n{}\n', "filter_path=items"), await conn.bulk(b"x\n", "q=1")]
            conn.close()
            return server, conn, answers

    server, conn, answers = asyncio.run(run())
    assert answers == [b'{"items":[1]}', b'{"items":[2]}']
    assert server.connections == 1 and conn.requests == 2 and conn.not_answered == 0
    first = server.requests[0]
    assert first.startswith(b"POST /base/_bulk?filter_path=items HTTP/1.1\r\n")
    assert b"Authorization: Basic " + base64.b64encode(b"writer:s3cret") in first
    assert first.endswith(b'\r\n\r\n{"index":{}}\n{}\n')


def test_an_answer_that_closes_the_connection_leaves_the_next_request_a_new_one():
    async def run():
        async with StandIn([ok(b"{}", "connection: close\r\n")]) as first:
            conn = connection(first.port)
            await conn.bulk(b"a\n", "")
            first.answers.append(ok(b"{}"))
            await conn.bulk(b"b\n", "")
            return first

    assert asyncio.run(run()).connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\n\r\n",  # left to the client, which splits it
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",  # no length: not read here
        None,  # the connection closed before an answer
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP at all
    ],
)
def test_what_the_connection_cannot_read_is_not_answered(answer):
    async def run():
        async with StandIn([answer]) as server:
            conn = connection(server.port)
            with pytest.raises(NotAnswered):
                await conn.bulk(b"a\n", "")
            return conn

    conn = asyncio.run(run())
    assert conn.requests == 0 and conn.not_answered == 1


def test_nothing_listening_is_not_answered():
    async def run():
        async with StandIn([]) as server:
            port = server.port
        conn = connection(port)
        with pytest.raises(NotAnswered):
            await conn.bulk(b"a\n", "")

    asyncio.run(run())


def test_a_signed_store_makes_no_loop_connection():
    signed = OpenSearchConnection(url="https://search.example:443", auth="aws", aws_region="eu-west-1")
    assert not BulkConnection.possible(signed)
    assert BulkConnection.possible(OpenSearchConnection(url="https://search.example:443", username="u", password="p"))


def test_a_second_loop_does_not_take_over_the_connection_of_a_loop_mid_request():
    # Given a server in a thread of its own that holds its answer to "slow" until released
    got_slow, release = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()
    connections = []

    async def serve(reader, writer):
        connections.append((writer, asyncio.current_task()))
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            body = await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            if body == b"slow\n":
                got_slow.set()
                await asyncio.to_thread(release.wait, 10)
            writer.write(ok(body))

    server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    conn = connection(server.sockets[0].getsockname()[1])
    slow: list = []
    held = threading.Thread(target=lambda: slow.append(asyncio.run(conn.bulk(b"slow\n", ""))))
    held.start()
    assert got_slow.wait(10)
    # When another loop makes a request while the first one's is under way
    fast = asyncio.run(conn.bulk(b"fast\n", ""))
    release.set()
    held.join(10)
    # Then both are answered, each on its own loop's connection
    assert fast == b"fast\n" and slow == [b"slow\n"]
    assert len(connections) == 2 and conn.requests == 2 and conn.not_answered == 0

    async def shut():
        server.close()
        for writer, _ in connections:
            writer.close()
        await asyncio.gather(*(task for _, task in connections))

    asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
