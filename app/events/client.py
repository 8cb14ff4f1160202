"""A lean HTTP/1.1 client for webhook POSTs: kept-alive connections per origin, each opened
only to an address vetted just before (SSRF), with the URL's host in Host and TLS SNI.

Why not httpx (which the gateway client uses): an event costs one POST, and at thousands of
events a second the client's CPU is the dispatcher's budget. Measured on the 2-core machine
of bench/README.md against a local receiver: httpx 380 us of CPU per request on one
connection and 1,500 us at 32 concurrent (its pool scans every connection for every
request), aiohttp 55-65 us, this client about 10. The response is parsed by httptools (the
parser uvicorn uses); what is hand-written here is only the connection handling. Redirects
are never followed; a response body is read up to 64 KiB and the connection is dropped past
that."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools

from app.events.urls import Target, resolve, target_of

MAX_BODY = 64 * 1024
# Idle connections kept per origin; more than the concurrency limit is never useful.
MAX_IDLE = 32


@dataclass(slots=True)
class Answer:
    """A receiver's answer: status, the two headers the dispatcher reads, the body's start."""

    status: int
    location: str | None
    retry_after: str | None
    body: bytes


class ConnectionFailed(Exception):
    """No answer: the connection could not be opened, broke, or the answer was not HTTP."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.answered_bytes = False
        self._future: asyncio.Future[Answer] | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self._header_name = b""
        self._location: str | None = None
        self._retry_after: str | None = None
        self._body = bytearray()
        self._complete = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.answered_bytes = True
        if self._future is None or self._future.done():
            self.close()  # nothing asked: a server talking out of turn
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionFailed(f"not an HTTP answer ({exc})"))
            self.close()
            return
        if not self._future.done() and len(self._body) >= MAX_BODY:
            # Enough to show what went wrong; the rest is not read, so the connection goes.
            self._resolve()
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._future is not None and not self._future.done():
            self._fail(ConnectionFailed("the connection closed before a complete answer"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"location":
            self._location = value.decode("latin-1")[:500]
        elif lower == b"retry-after":
            self._retry_after = value.decode("latin-1")[:100]

    def on_body(self, body: bytes) -> None:
        room = MAX_BODY - len(self._body)
        if room > 0:
            self._body += body[:room]

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self._reset_message()
            return
        self._complete = True
        self._resolve()

    def _resolve(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(
                Answer(
                    self.parser.get_status_code(),
                    self._location,
                    self._retry_after,
                    bytes(self._body),
                )
            )

    def _fail(self, exc: Exception) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_exception(exc)

    async def exchange(self, request: bytes) -> Answer:
        assert self.transport is not None
        self._reset_message()
        self.answered_bytes = False
        self._future = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._future
        finally:
            self._future = None

    @property
    def reusable(self) -> bool:
        return not self.closed and self._complete and self.parser.should_keep_alive()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class WebhookClient:
    """Sends POSTs, keeping idle connections per origin. Every new connection resolves its
    host and checks each address (app.events.urls.resolve) just before it connects, and
    connects to that address: a DNS answer that changes between the check and the connect
    cannot redirect it."""

    def __init__(self, *, allow_private: bool, user_agent: str) -> None:
        self.allow_private = allow_private
        self.user_agent = user_agent
        self._idle: dict[str, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._heads: dict[str, bytes] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def head(self, url: str, target: Target) -> bytes:
        """The request line and fixed headers for a URL (kept: they never change)."""
        head = self._heads.get(url)
        if head is None:
            head = (
                f"POST {target.target} HTTP/1.1\r\nHost: {target.host_header}\r\n"
                f"User-Agent: {self.user_agent}\r\nContent-Type: application/json\r\n"
            ).encode("ascii")
            if len(self._heads) > 10000:
                self._heads.clear()
            self._heads[url] = head
        return head

    async def _connect(self, target: Target, seconds: float) -> _Connection:
        addresses = await resolve(
            target.host, target.port, allow_private=self.allow_private, seconds=seconds
        )
        loop = asyncio.get_running_loop()
        tls = target.scheme == "https"
        problem: Exception | None = None
        for address in addresses:
            try:
                _, protocol = await loop.create_connection(
                    _Connection,
                    host=address,
                    port=target.port,
                    ssl=self._ssl_context() if tls else None,
                    # The certificate is checked against the URL's host, sent as SNI.
                    server_hostname=target.host if tls else None,
                )
            except (OSError, ssl.SSLError) as exc:
                problem = exc
                continue
            return protocol
        raise ConnectionFailed(f"cannot connect to {target.host}:{target.port} ({problem})")

    async def post(self, url: str, headers: bytes, body: bytes, seconds: float) -> Answer:
        """POST `body` with `headers` (complete header lines) to a stored URL, within
        `seconds` for everything (connecting included). Raises ConnectionFailed,
        TimeoutError, or app.events.urls.Refused / Unresolvable."""
        target = target_of(url)
        request = b"".join(
            (
                self.head(url, target),
                headers,
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        origin = target.origin
        idle = self._idle.get(origin)
        async with asyncio.timeout(seconds):
            while idle:
                connection = idle.pop()
                if connection.closed:
                    continue
                try:
                    answer = await connection.exchange(request)
                except ConnectionFailed:
                    connection.close()
                    if connection.answered_bytes:
                        raise
                    # A kept connection the server had just closed: try a fresh one.
                    break
                except BaseException:
                    connection.close()
                    raise
                self._keep(origin, connection)
                return answer
            connection = await self._connect(target, seconds)
            try:
                answer = await connection.exchange(request)
            except BaseException:
                connection.close()
                raise
            self._keep(origin, connection)
            return answer

    def _keep(self, origin: str, connection: _Connection) -> None:
        if not connection.reusable:
            connection.close()
            return
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= MAX_IDLE:
            idle.popleft().close()
        idle.append(connection)

    def forget(self, origin: str) -> None:
        """Close the idle connections of an origin."""
        for connection in self._idle.pop(origin, ()):
            connection.close()

    async def aclose(self) -> None:
        for origin in list(self._idle):
            self.forget(origin)
