"""The hand-over from a QueueConsumer to the Executor of its node, over a Unix socket.

Between two actors of one node, a Ray actor call took this machine about 3 ms one way (0.7 ms
of it the caller's own submission) and a Unix socket about 0.2 ms, so the hand-over of every
task, which the design puts on two roles that stay two actors (each visible in the dashboard
and restarted on its own), goes over a socket when the two share a node. The Ray call stays
the way to an executor elsewhere, and the way round an outage: a request whose connection
breaks is handed over again by the Ray call, which says whether the executor is gone. That is
safe because a hand-over is idempotent (a message handed twice is claimed at most once).

What crosses the socket is JSON: the queue messages as read (their signatures already
checked by the consumer) and their outcomes. The socket sits in a directory only its user may
enter, and a connection is served only once it presents the executor's token, which the
consumer learns through Ray's own channel (``Executor.local_channel``): the socket lets in no
one that Ray would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from ray.exceptions import RayActorError

from raylane.errors import ServiceUnavailable
from raylane.protocol import HandOff, HandOffResult

log = logging.getLogger("raylane.handover")

_HEADER = struct.Struct(">I")
_HELLO_MAX_BYTES = 1024  # the first frame holds the token alone: nothing larger is read before it
_FRAME_MAX_BYTES = 1 << 30  # a whole window of the largest messages fits
# The failures a consumer waits out rather than counts against a batch, as it would had they
# come back from the Ray call: Kafka or OpenSearch away, or an actor down.
_UNAVAILABLE = "unavailable"
_ACTOR_DOWN = "actor down"

StartMany = Callable[[list[bytes], "float | None"], Awaitable[list[HandOffResult]]]


class ChannelAddress(NamedTuple):
    """Where an executor takes hand-overs by socket: its node, the socket's path, and the token
    a connection presents first."""

    node: str
    path: str
    token: str


class ChannelClosed(ConnectionError):
    """The connection ended before the answer came: whether the executor took the batch is
    unknown, so it is handed over again (by the Ray call)."""


class HandOverFailed(RuntimeError):
    """The executor failed to take a batch for a reason other than an outage."""


def socket_dir() -> Path:
    """The directory of this user's hand-over sockets: made if missing, entered by its user alone."""
    path = Path(tempfile.gettempdir()) / f"raylane-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; hand-over sockets are not made there")
    path.chmod(0o700)
    return path


def _remove_stale(directory: Path) -> None:
    """Remove the sockets of executors that are gone (nothing answers at them any more)."""
    for path in directory.glob("*.sock"):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        except OSError:
            pass
        finally:
            probe.close()


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > limit:
        raise ValueError(f"a frame of {size} bytes is over the limit of {limit}")
    return json.loads(await reader.readexactly(size))


def _well_formed(request: Any) -> bool:
    return (
        isinstance(request, dict)
        and isinstance(request.get("id"), int)
        and isinstance(request.get("read_at"), float | int | None)
        and isinstance(request.get("messages"), list)
        and all(isinstance(m, str) for m in request["messages"])
    )


def _frame(value: Any) -> bytes:
    body = json.dumps(value, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


class ChannelServer:
    """Serves ``start_many`` (an executor's) to the consumers of its node that present its token."""

    def __init__(self, start_many: StartMany, node: str, name: str):
        self._start_many = start_many
        self._node = node
        self._name = name
        self._token = secrets.token_hex(16)
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._connections: set[asyncio.Task] = set()
        self._answering: set[asyncio.Task] = set()  # kept until done: the loop holds tasks weakly

    async def start(self) -> ChannelAddress:
        """Listen (idempotent); returns the address to give consumers."""
        if self._server is None:
            directory = socket_dir()
            await asyncio.to_thread(_remove_stale, directory)
            # A short name: a socket's path may not be longer than 107 bytes.
            digest = hashlib.sha256(f"{self._name}/{self._token}".encode()).hexdigest()[:16]
            self._path = directory / f"{digest}.sock"
            self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))
            self._path.chmod(0o600)
        assert self._path is not None
        return ChannelAddress(self._node, str(self._path), self._token)

    async def close(self) -> None:
        """Stop listening, end every connection and remove the socket."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._connections.add(current)
        try:
            hello = await _read_frame(reader, _HELLO_MAX_BYTES)
            token = hello.get("token") if isinstance(hello, dict) else None
            if not isinstance(token, str) or not hmac.compare_digest(token, self._token):
                log.warning("a connection to the hand-over socket did not present the executor's token; closed")
                return
            while True:
                request = await _read_frame(reader, _FRAME_MAX_BYTES)
                if not _well_formed(request):
                    log.warning("a malformed request on the hand-over socket; connection closed")
                    return
                task = asyncio.create_task(self._answer(request, writer))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the consumer went, or sent what no consumer sends: the connection ends
        finally:
            # A batch being taken is taken to the end, its answer dropped, as a Ray call's would
            # be: cut short, its claims would be sent and their launches left undecided.
            writer.close()
            if current is not None:
                self._connections.discard(current)

    async def _answer(self, request: dict, writer: asyncio.StreamWriter) -> None:
        rid = request["id"]
        try:
            messages = [m.encode() for m in request["messages"]]
            outcomes = await self._start_many(messages, request["read_at"])
            answer: dict[str, Any] = {"id": rid, "outcomes": [[o.outcome.value, o.reason] for o in outcomes]}
        except ServiceUnavailable as e:
            answer = {"id": rid, "error": _UNAVAILABLE, "message": str(e)}
        except RayActorError as e:
            # An actor the executor called is down (a keeper on a lost node, say): an outage the
            # consumer waits out, as it does when the same error comes back from the Ray call.
            answer = {"id": rid, "error": _ACTOR_DOWN, "message": str(e)}
        except Exception as e:  # reported to the consumer, which counts it against the batch
            answer = {"id": rid, "error": type(e).__name__, "message": str(e)}
        if not writer.is_closing():
            writer.write(_frame(answer))


class ChannelClient:
    """A consumer's connection to its executor's hand-over socket. ``send`` puts a batch on its way
    at once; the answers of several batches may be awaited at the same time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._waiting: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._closed = False
        self._reading = asyncio.create_task(self._read_answers())

    @classmethod
    async def connect(cls, address: ChannelAddress) -> ChannelClient:
        """Connect to the socket at ``address`` and present its token."""
        reader, writer = await asyncio.open_unix_connection(address.path)
        writer.write(_frame({"token": address.token}))
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        """Whether the connection ended (a new one is needed)."""
        return self._closed

    def send(self, messages: list[bytes], read_at: float | None) -> asyncio.Future:
        """Write the batch now; returns the future of its outcomes (raising ``ChannelClosed`` if the
        connection ends first, ``ServiceUnavailable`` or ``RayActorError`` for an outage the
        executor met, ``HandOverFailed`` for any other failure there)."""
        if self._closed:
            raise ChannelClosed("the hand-over socket is closed")
        self._next_id += 1
        answer = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = answer
        self._writer.write(
            _frame({"id": self._next_id, "read_at": read_at, "messages": [m.decode() for m in messages]})
        )
        return answer

    async def close(self) -> None:
        """End the connection; batches still unanswered raise ``ChannelClosed``."""
        self._writer.close()
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)
        self._fail_waiting()

    async def _read_answers(self) -> None:
        try:
            while True:
                answer = await _read_frame(self._reader, _FRAME_MAX_BYTES)
                future = self._waiting.pop(answer["id"], None)
                if future is None or future.done():
                    continue
                if "outcomes" in answer:
                    future.set_result([HandOffResult(HandOff(o), reason) for o, reason in answer["outcomes"]])
                elif answer["error"] == _UNAVAILABLE:
                    future.set_exception(ServiceUnavailable(answer["message"]))
                elif answer["error"] == _ACTOR_DOWN:
                    future.set_exception(RayActorError(error_msg=answer["message"]))
                else:
                    future.set_exception(HandOverFailed(f"{answer['error']}: {answer['message']}"))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
            pass
        finally:
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("the hand-over socket closed before the answer"))
