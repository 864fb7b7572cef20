"""Bulk requests to OpenSearch from an event loop, on a kept connection of the loop's own.

A StatusKeeper's writes are on every task's path, twice (the claim and the end). Made through
opensearch-py, each went to a thread of the keeper's (a wake-up there and one back) and
through the client's transport layers, about half a millisecond before OpenSearch saw it,
more under load. Here the request goes out from the keeper's loop itself, as the few bytes of
HTTP/1.1 that a bulk request is.

Only the bulk request is made here, and only what it needs: a plain or TLS connection (with a
CA and a client certificate), and basic auth. A store whose requests must be signed (AWS
SigV4) has none of this and keeps to its client. Whatever this connection cannot do, or fails
at, the caller does again through the client, which has its retries, its splitting of a
request the store finds too large, and its error reporting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from raylane.config import OpenSearchConnection

_HEAD_MAX = 64 * 1024  # the answer's status line and headers, at most
# What a connection that broke, or an answer that did not come whole or in time, raises.
_BROKEN = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


class NotAnswered(Exception):
    """The request got no usable answer here: no connection, a broken one, an answer this
    connection does not read (not 200, no length), or none in time. The caller makes it again
    through the store's client."""


class _Link:
    """One loop's kept connection, and the lock that keeps it to one request at a time."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def drop(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            # From another thread or after its loop closed, closing the transport may raise; the
            # socket goes with it either way.
            with contextlib.suppress(RuntimeError):
                writer.close()


class BulkConnection:
    """Kept HTTP/1.1 connections to OpenSearch for bulk requests: one per event loop that makes
    them (a connection belongs to the loop that opened it), one request at a time on each."""

    def __init__(self, conn: OpenSearchConnection, timeout_s: float = 30.0):
        parts = urlsplit(conn.url)
        self._host = parts.hostname or "localhost"
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._ssl = self._context(conn) if self._tls else None
        head = [f"Host: {parts.netloc}", "Content-Type: application/x-ndjson"]
        if conn.username:
            password = conn.password.get_secret_value() if conn.password else ""
            token = base64.b64encode(f"{conn.username}:{password}".encode()).decode()
            head.append(f"Authorization: Basic {token}")
        self._head = "\r\n".join(head)
        self._links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Link] = weakref.WeakKeyDictionary()
        self.requests = 0  # answered here
        self.not_answered = 0  # left to the client

    @staticmethod
    def possible(conn: OpenSearchConnection) -> bool:
        """Whether requests to ``conn`` can be made here: not when they must be signed."""
        return conn.auth == "basic"

    @staticmethod
    def _context(conn: OpenSearchConnection) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=conn.ca_certs)
        if not conn.verify_certs:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if conn.client_cert:
            ctx.load_cert_chain(conn.client_cert, conn.client_key)
        return ctx

    def busy(self) -> bool:
        """Whether a request is under way on the calling loop's connection (the caller should
        not wait for it: the client serves requests side by side)."""
        link = self._links.get(asyncio.get_running_loop())
        return link is not None and link.lock.locked()

    async def bulk(self, body: bytes, query: str) -> bytes:
        """The body of OpenSearch's 200 answer to ``POST /_bulk?<query>`` with ``body``;
        ``NotAnswered`` otherwise (the request may or may not have been carried out)."""
        link = self._links.setdefault(asyncio.get_running_loop(), _Link())
        async with link.lock:
            try:
                answer = await asyncio.wait_for(self._exchange(link, body, query), self._timeout_s)
            except (NotAnswered, *_BROKEN) as e:
                link.drop()
                self.not_answered += 1
                if isinstance(e, NotAnswered):
                    raise
                raise NotAnswered(repr(e)) from e
        self.requests += 1
        return answer

    async def _exchange(self, link: _Link, body: bytes, query: str) -> bytes:
        if link.writer is None or link.writer.is_closing():
            link.reader, link.writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=_HEAD_MAX
            )
        reader, writer = link.reader, link.writer
        assert reader is not None
        request = f"POST {self._prefix}/_bulk?{query} HTTP/1.1\r\n{self._head}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(request.encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = _head(head)
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise NotAnswered("an answer without a length")
        answer = await reader.readexactly(int(length))
        if headers.get("connection", "").lower() == "close":
            link.drop()
        if status != 200:
            raise NotAnswered(f"HTTP {status}")
        return answer

    def close(self) -> None:
        """Close every loop's connection (a later request opens another)."""
        for link in list(self._links.values()):
            link.drop()


def _head(head: bytes) -> tuple[int, dict[str, Any]]:
    """The status and the headers (names in lower case) of an answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise NotAnswered(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), headers
