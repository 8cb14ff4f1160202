"""uvicorn's HTTP protocol with the deadlines it lacks: for a request's head, and between the
pieces of its body.

uvicorn waits for ever for a request that never comes: a connection that sends nothing, or
half a header, or stops in the middle of its body, keeps its place among the
DLR_LIMIT_CONCURRENCY connections until the client goes away. A few silent sockets could so
make every callback answer 503. This protocol closes such connections after
DLR_HEADER_TIMEOUT_SECONDS, as nginx's client_header_timeout and client_body_timeout do.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

State = Literal["new", "head", "body", "served"]
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nconnection: close\r\n\r\nrequest not received"
)


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request line and headers have not
    all arrived `header_timeout` seconds after it opened (or after its previous request's
    first byte, on a kept-alive connection), or whose body has sent nothing for that long.
    The wait between requests of a kept-alive connection stays uvicorn's own
    (`timeout_keep_alive`); a connection the server has stopped reading (flow control) is
    never blamed for the pause."""

    def __init__(self, *args: Any, header_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.deadline: asyncio.TimerHandle | None = None
        self.state: State = "new"

    def _arm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or self.state == "served":
            return
        if self.flow is not None and self.flow.read_paused:
            self._arm()  # we are not reading: the client is not late
            return
        if self.state == "head":
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Each piece of a body renews its deadline; a head has one deadline in all, so a
        # client sending it a byte at a time gains nothing.
        if self.state == "body":
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.state == "served":  # the next request of a kept-alive connection
            self._arm()
        self.state = "head"

    def on_headers_complete(self) -> None:
        self.state = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.state = "served"
        self._disarm()
        super().on_message_complete()


def deadline_protocol(header_timeout: float) -> Any:
    """The protocol class for uvicorn's `http=`, with its deadline; a partial, which pickles,
    so that it reaches every worker process of `--workers N`."""
    return functools.partial(DeadlineProtocol, header_timeout=header_timeout)
