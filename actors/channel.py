"""Calls between two actors of one node over a Unix socket, beside Ray's actor calls.

Between two actors of one node, a Ray actor call took this machine about 3 ms one way (0.7 ms
of it the caller's own submission) and a Unix socket about 0.2 ms. The calls on every task's
path between actors that the design keeps apart (each visible in the dashboard and restarted on
its own) therefore go over a socket when caller and callee share a node: a consumer's hand-over
to its executor (``raylane.actors.handover``), an executor's claims and ends to the
StatusKeepers (``raylane.actors.keepers``), and a driver's submit of one task to its node's
RequestHandler and its wait to the task's keeper (``raylane.client``). The Ray call stays the
way to an actor elsewhere, and the way round an outage: a call whose connection breaks is made
again by Ray, which says whether the actor is gone. Every method served here is one that may be
called twice (a hand-over, a versioned write, a wait), but the submit: a submit whose connection
breaks after it was sent is reported to its caller as the Ray call's failure is, never repeated.
The blocking side of these calls (a driver's, a worker's) is ``raylane.sockets``.

What crosses the socket is JSON. The socket sits in a directory only its user may enter, and a
connection is served only once it presents the serving actor's token, which the caller learns
through Ray's own channel (the actor's ``local_channel`` method): the socket lets in no one
that Ray would not. A request that no caller of ours sends ends its connection unanswered.
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
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ray.exceptions import RayActorError

from raylane.errors import QueueUnavailable, ServiceUnavailable, StoreUnavailable
from raylane.sockets import (
    FRAME_MAX_BYTES,
    HEADER,
    HELLO_MAX_BYTES,
    BlockingClient,
    ChannelAddress,
    ChannelCallFailed,
    ChannelClosed,
    ChannelUnreachable,
    NodeChannels,
    call_kept,
    frame,
    raised,
)

__all__ = [
    "BlockingClient",
    "ChannelAddress",
    "ChannelCallFailed",
    "ChannelClient",
    "ChannelClosed",
    "ChannelServer",
    "ChannelUnreachable",
    "Link",
    "Method",
    "NodeChannels",
    "call_kept",
    "or_by_ray",
    "socket_dir",
]

log = logging.getLogger("raylane.channel")

T = TypeVar("T")


class Method(NamedTuple):
    """A method served on a channel: ``parse`` turns a request's JSON body into the argument of
    ``run`` (raising ``ValueError`` or ``TypeError`` for a body no caller of ours sends), and
    ``run`` answers with JSON."""

    parse: Callable[[Any], Any]
    run: Callable[[Any], Awaitable[Any]]


def socket_dir() -> Path:
    """The directory of this user's channel sockets: made if missing, entered by its user alone."""
    path = Path(tempfile.gettempdir()) / f"raylane-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; channel sockets are not made there")
    path.chmod(0o700)
    return path


def _remove_stale(directory: Path) -> None:
    """Remove the sockets of actors that are gone (nothing answers at them any more)."""
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
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > limit:
        raise ValueError(f"a frame of {size} bytes is over the limit of {limit}")
    return json.loads(await reader.readexactly(size))


def _failure(e: BaseException) -> tuple[str, str]:
    """How a failure of a served call crosses: the kind of outage it is, or what failed."""
    for kind in (StoreUnavailable, QueueUnavailable, ServiceUnavailable):  # the most specific first
        if isinstance(e, kind):
            return kind.__name__, str(e)
    if isinstance(e, RayActorError):
        # An actor the served one called is down (a keeper on a lost node, say): an outage the
        # caller waits out, as it does when the same error comes back from the Ray call.
        return "RayActorError", str(e)
    return "failed", f"{type(e).__name__}: {e}"


class ChannelServer:
    """Serves ``methods`` (an actor's) to the callers of its node that present its token."""

    def __init__(self, methods: dict[str, Method], node: str, name: str):
        self._methods = methods
        self._node = node
        self._name = name
        self._token = secrets.token_hex(16)
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._connections: set[asyncio.Task] = set()
        self._answering: set[asyncio.Task] = set()  # kept until done: the loop holds tasks weakly

    async def start(self) -> ChannelAddress:
        """Listen (idempotent); returns the address to give callers."""
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

    async def listen(self) -> ChannelAddress | None:
        """``start``, or None if the socket cannot be made here (logged): the actor's callers then
        use its Ray calls."""
        try:
            return await self.start()
        except OSError as e:
            log.warning("no channel socket for %s (its callers use its Ray calls): %r", self._name, e)
            return None

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
            hello = await _read_frame(reader, HELLO_MAX_BYTES)
            token = hello.get("token") if isinstance(hello, dict) else None
            if not isinstance(token, str) or not hmac.compare_digest(token, self._token):
                log.warning("a connection to %s's socket did not present its token; closed", self._name)
                return
            while True:
                request = await _read_frame(reader, FRAME_MAX_BYTES)
                try:
                    rid, method = request["id"], self._methods[request["method"]]
                    if not isinstance(rid, int):
                        raise TypeError("a request's id is an integer")
                    argument = method.parse(request["body"])
                except (KeyError, TypeError, ValueError) as e:
                    log.warning("a malformed request on %s's socket (%r); connection closed", self._name, e)
                    return
                task = asyncio.create_task(self._answer(rid, method, argument, writer))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the caller went, or sent what no caller sends: the connection ends
        except asyncio.CancelledError:
            pass  # the server closes; ending quietly keeps asyncio from logging the cancel as an error
        finally:
            # A call under way is carried out to the end, its answer dropped, as a Ray call's
            # would be: cut short, a hand-over's claims would be sent and their launches left
            # undecided.
            writer.close()
            if current is not None:
                self._connections.discard(current)

    async def _answer(self, rid: int, method: Method, argument: Any, writer: asyncio.StreamWriter) -> None:
        try:
            answer: dict[str, Any] = {"id": rid, "ok": await method.run(argument)}
        except Exception as e:  # reported to the caller, which raises it as the Ray call would
            kind, message = _failure(e)
            answer = {"id": rid, "error": kind, "message": message}
        if not writer.is_closing():
            writer.write(frame(answer))


class ChannelClient:
    """A connection to an actor's channel. ``call`` puts a request on its way at once; the answers
    of several calls may be awaited at the same time."""

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
        writer.write(frame({"token": address.token}))
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        """Whether the connection ended (a new one is needed)."""
        return self._closed

    def call(self, method: str, body: Any) -> asyncio.Future:
        """Send the request now; returns the future of its JSON answer (raising ``ChannelClosed`` if
        the connection ends first, ``ServiceUnavailable`` and its kinds or ``RayActorError`` for
        an outage the actor met, ``ChannelCallFailed`` for any other failure there)."""
        if self._closed:
            raise ChannelClosed("the channel is closed")
        self._next_id += 1
        answer = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = answer
        self._writer.write(frame({"id": self._next_id, "method": method, "body": body}))
        return answer

    async def close(self) -> None:
        """End the connection; calls still unanswered raise ``ChannelClosed``."""
        self._writer.close()
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)
        self._fail_waiting()

    async def _read_answers(self) -> None:
        try:
            while True:
                answer = await _read_frame(self._reader, FRAME_MAX_BYTES)
                future = self._waiting.pop(answer["id"], None)
                if future is None or future.done():
                    continue
                if "ok" in answer:
                    future.set_result(answer["ok"])
                else:
                    future.set_exception(raised(answer["error"], answer["message"]))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
            pass
        finally:
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("the channel closed before the answer"))


async def or_by_ray(sent: Awaitable[T], by_ray: Callable[[], Awaitable[T]]) -> T:
    """The answer of a call sent over a channel; if the connection ended first (whether the call
    was carried out is unknown), that of the same call made again by Ray, which also says
    whether the actor is gone. Only for calls that may be made twice."""
    try:
        return await sent
    except ChannelClosed:
        return await by_ray()


class Link:
    """A caller's connection to the channel of one actor, kept up in the background: ``client``
    is the connection while it holds, and None (with a new one on its way) while it does not.
    ``ask`` asks the actor, by Ray, for its channel; an actor on another node than ``node`` (the
    caller's) is called by Ray alone."""

    def __init__(self, ask: Callable[[], Awaitable[ChannelAddress | None]], node: str, label: str, every_s: float):
        self._ask = ask
        self._node = node
        self._label = label
        self._every_s = every_s
        self._client: ChannelClient | None = None
        self._address: ChannelAddress | None = None
        self._connecting: asyncio.Task | None = None
        self._tried = -every_s

    @property
    def connected(self) -> bool:
        """Whether calls go by the socket."""
        return self._client is not None and not self._client.closed

    @property
    def address(self) -> ChannelAddress | None:
        """The socket connected to, while the connection holds."""
        return self._address if self.connected else None

    def client(self) -> ChannelClient | None:
        """The open connection, if any; if none, one is sought in the background, unless sought
        within the last ``every_s``."""
        if self.connected:
            return self._client
        if (self._connecting is None or self._connecting.done()) and time.monotonic() - self._tried >= self._every_s:
            self._tried = time.monotonic()
            self._connecting = asyncio.create_task(self._connect())
        return None

    async def _connect(self) -> None:
        # Tried again every ``every_s`` until it holds, not only when a call finds it missing: an
        # actor asked while Ray restarts it refuses, and the calls that would have tried again
        # may all have been made by then (a batch that ended): the link would stay on Ray.
        while True:
            try:
                address = await self._ask()
                if address is None or address.node != self._node:
                    return  # an actor on another node is called by Ray
                old, self._client = self._client, await ChannelClient.connect(address)
                self._address = address
                if old is not None:
                    await old.close()
                return
            except Exception as e:  # the Ray call serves meanwhile
                log.info("no socket to %s yet: %r", self._label, e)
            await asyncio.sleep(self._every_s)
            self._tried = time.monotonic()

    async def close(self) -> None:
        """End the connection (calls go by Ray until the next ``client``)."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._client is not None:
            await self._client.close()
