"""Calls to an actor's socket from code without an event loop: a driver of the actor's node, or a
Ray task's worker (see ``raylane.actors.channel``, which serves them), and the forms of what crosses.

What crosses is JSON, one frame per message (its length, then its body). A connection presents
the serving actor's token first; the caller learns it by Ray. This module imports no Ray: an SDK
that only submits and waits need not load it for these calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from raylane.errors import QueueUnavailable, ServiceUnavailable, StoreUnavailable
from raylane.models import PackedRecord
from raylane.protocol import WaitAnswer
from raylane.states import TaskState

log = logging.getLogger("raylane.channel")

SUBMIT = "submit"  # a RequestHandler's channel method: one task's submit
WAIT = "wait_any"  # a StatusKeeper's channel method: a wait for tasks to end

HEADER = struct.Struct(">I")
HELLO_MAX_BYTES = 1024  # the first frame holds the token alone: nothing larger is read before it
FRAME_MAX_BYTES = 1 << 30  # a whole window of the largest messages fits
# The failures a caller meets as it would have met them from the Ray call: outages it waits out.
_RAISED_AS: dict[str, Callable[[str], BaseException]] = {
    "StoreUnavailable": StoreUnavailable,
    "QueueUnavailable": QueueUnavailable,
    "ServiceUnavailable": ServiceUnavailable,
}


def raised(kind: str, message: str) -> BaseException:
    """The exception a failed call's answer stands for: the outage of that kind, as the Ray call
    would have raised it, or ``ChannelCallFailed``."""
    if kind == "RayActorError":
        from ray.exceptions import RayActorError  # Ray is imported only where an actor is down

        return RayActorError(error_msg=message)
    made = _RAISED_AS.get(kind)
    return made(message) if made else ChannelCallFailed(message)


class ChannelAddress(NamedTuple):
    """Where an actor takes calls by socket: its node, the socket's path, and the token a
    connection presents first."""

    node: str
    path: str
    token: str


class ChannelClosed(ConnectionError):
    """The connection ended before the answer came: whether the call was carried out is unknown,
    so a call that may be made twice is made again (by Ray), and any other is reported failed."""


class ChannelCallFailed(RuntimeError):
    """The called actor failed the call for a reason other than an outage."""


def frame(value: Any) -> bytes:
    """``value`` as one frame: its JSON, after its length."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


class ChannelUnreachable(ChannelClosed):
    """The call could not be sent (no connection, or it broke before the request was whole): it
    was not carried out, so any call may be made again by Ray."""


class BlockingClient:
    """A connection to an actor's channel for code without an event loop: one call at a time, the
    connection kept for the next call. One thread's own; not to be shared."""

    def __init__(self, address: ChannelAddress):
        self.address = address
        self._conn: socket.socket | None = None
        self._reader: Any = None
        self._next_id = 0

    def call(self, method: str, body: Any, timeout_s: float | None = None) -> Any:
        """Call ``method`` and block until its answer (at most ``timeout_s``), raising as
        ``ChannelClient.call`` does; ``ChannelUnreachable`` if the request could not be sent."""
        self._next_id += 1
        request = frame({"id": self._next_id, "method": method, "body": body})
        try:
            if self._conn is None:
                self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._conn.connect(self.address.path)
                self._reader = self._conn.makefile("rb")
                request = frame({"token": self.address.token}) + request
            self._conn.settimeout(timeout_s)
            # A request cut short is one the actor never reads whole: it is not carried out.
            self._conn.sendall(request)
        except OSError as e:
            self.close()
            raise ChannelUnreachable(f"the channel is not open: {e!r}") from e
        except BaseException:
            # An interrupt part way through the request: what is left of it must not run into
            # the next call's on a kept connection.
            self.close()
            raise
        try:
            answer = self._answer()
        except BaseException:
            # An answer still to come (after a timeout, an interrupt) must not be taken for the next call's.
            self.close()
            raise
        if "ok" in answer:
            return answer["ok"]
        raise raised(answer["error"], answer["message"])

    @property
    def connected(self) -> bool:
        """Whether a connection is open (the next call goes on it)."""
        return self._conn is not None

    def _answer(self) -> dict:
        try:
            header = self._reader.read(HEADER.size)
            if len(header) == HEADER.size:
                (size,) = HEADER.unpack(header)
                data = self._reader.read(size)
                if len(data) == size:
                    answer = json.loads(data)
                    if isinstance(answer, dict) and answer.get("id") == self._next_id:
                        return answer
        except OSError as e:
            raise ChannelClosed(f"no answer on the channel: {e!r}") from e
        raise ChannelClosed("the channel closed before the answer")

    def close(self) -> None:
        """End the connection; the next call opens another."""
        for part in (self._reader, self._conn):
            if part is not None:
                with contextlib.suppress(OSError):
                    part.close()
        self._conn = self._reader = None


class _KeptClients(threading.local):
    """A thread's kept connections, by channel, the one used last at the end."""

    def __init__(self) -> None:
        self.clients: dict[ChannelAddress, BlockingClient] = {}
        self.pid = os.getpid()


_kept = _KeptClients()
# Channels a thread keeps a connection to at most: a worker asks its executor and its keeper
# (one of K), and an actor restarted has a new channel; the one used longest ago is closed.
KEPT_MAX = 8


def kept_client(address: ChannelAddress) -> BlockingClient:
    """This thread's connection to the channel at ``address``, kept between its calls (a driver's
    and a Ray worker's alike; see ``call_kept``)."""
    if _kept.pid != os.getpid():
        # A process forked from this thread shares its connections: its calls go on its own.
        _kept.clients, _kept.pid = {}, os.getpid()
    clients = _kept.clients
    client = clients.pop(address, None) or BlockingClient(address)
    clients[address] = client
    while len(clients) > KEPT_MAX:
        clients.pop(next(iter(clients))).close()
    return client


def call_kept(address: ChannelAddress, method: str, body: Any) -> Any:
    """Call ``method`` at ``address`` from code without an event loop (a Ray task's worker) on this
    thread's kept connection to that channel (``kept_client``); blocks until the answer, raising
    as ``BlockingClient.call`` does.

    A new connection costs both ends more than the call: the actor accepts it, starts a reader
    and checks the token (about 0.12 ms of its CPU per call on a new connection, 0.05-0.09 ms on
    a kept one, and 0.08 against 0.03-0.05 ms of the caller's, measured against a StatusKeeper).
    A kept connection that ended meanwhile (its actor stopped) takes no request: the call then
    goes on a new one, since the first was never sent."""
    client = kept_client(address)
    reused = client.connected
    try:
        return client.call(method, body)
    except ChannelUnreachable:
        if not reused:
            raise
        return client.call(method, body)


class NodeChannels:
    """A driver's connections to the channels of the actors on its node, one per thread and actor,
    kept between calls (``kept_client``). An actor's address is asked of it by Ray once, and again after a failure
    (at most every ``every_s``); an actor on another node, or one without a channel, has no client
    here, and its caller calls it by Ray."""

    def __init__(self, node: str | None, every_s: float):
        self._node = node
        self._every_s = every_s
        self._addresses: dict[str, ChannelAddress] = {}
        self._asked: dict[str, float] = {}

    def client(self, label: str, ask: Callable[[], ChannelAddress | None]) -> BlockingClient | None:
        """This thread's client of the actor ``label``, whose address ``ask`` gets by Ray; None if
        it has no channel on this node (or none was found lately)."""
        if self._node is None:
            return None
        address = self._addresses.get(label)
        if address is None:
            now = time.monotonic()
            if now - self._asked.get(label, -self._every_s) < self._every_s:
                return None
            self._asked[label] = now
            try:
                address = ask()
            except Exception as e:  # an actor of an older raylane, or one restarting: Ray serves
                log.debug("no channel to %s: %r", label, e)
                return None
            if not isinstance(address, ChannelAddress) or address.node != self._node:
                return None
            self._addresses[label] = address
        return kept_client(address)

    def failed(self, label: str) -> None:
        """A call to ``label`` found no one answering: its address is asked again (the actor may
        have been replaced), no sooner than ``every_s`` from now."""
        self._addresses.pop(label, None)
        self._asked[label] = time.monotonic()


# The types of a packed record's fields, in order, as they cross a channel.
_FIELDS: tuple[type | tuple[type, ...], ...] = (
    str,
    int,
    str,
    int,
    bool,
    str,
    str,
    (float, int, type(None)),
    str,
    (str, type(None)),
    (float, int),
    bool,
    (str, type(None)),
)


def record_row(p: PackedRecord) -> list:
    """A packed record as it crosses a channel: a list of its fields."""
    return [
        p.id,
        p.version,
        p.state.value,
        p.attempt,
        p.will_retry,
        p.name,
        p.queue,
        p.timeout_s,
        p.doc.decode(),
        p.lease_owner,
        p.wait_s,
        p.in_workflow,
        p.tenant,
    ]


def records_from(body: Any) -> list[PackedRecord]:
    """The packed records of ``record_row`` lists (``TypeError``/``ValueError`` for what no caller sends)."""
    if not isinstance(body, list):
        raise TypeError("records cross as a list")
    out = []
    for row in body:
        if not isinstance(row, list) or len(row) != len(_FIELDS):
            raise TypeError("a record crosses as a list of its fields")
        if not all(isinstance(v, t) for v, t in zip(row, _FIELDS, strict=True)):
            raise TypeError("a record's field is of the wrong type")
        out.append(PackedRecord._make([*row[:2], TaskState(row[2]), *row[3:8], row[8].encode(), *row[9:]]))
    return out


def wait_answer(body: Any) -> WaitAnswer:
    """A keeper's answer to a wait by socket, as its ``wait_any`` gave it (``TypeError`` if it is not one)."""
    if not isinstance(body, dict):
        raise TypeError("a wait's answer is an object")
    unread, unknown = body.get("unread"), body.get("unknown")
    if not isinstance(unread, list) or not isinstance(unknown, list):
        raise TypeError("a wait's answer lists the ids read from the store")
    return WaitAnswer(records_from(body.get("records")), unread, unknown)
