"""Request bodies: read within a limit, and refused without the answer lost in a reset.

A server that closes a connection while bytes of the request are still arriving makes the
kernel reset it, and a client that is still sending its body (most send all of it before they
read) sees the reset instead of our answer. So a refused request is answered at once, the
rest of its body is read and dropped (up to DRAIN_BYTES, for at most DRAIN_SECONDS; nginx's
lingering close does the same), and only then does the response end and the connection close.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import Message, Receive, Send

DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 5.0


class BodyTooLarge(Exception):
    def __init__(self, received: int, ended: bool) -> None:
        super().__init__(f"{received} bytes and {'no' if ended else ''} more")
        self.received = received
        self.ended = ended


def declared_over(headers: dict[bytes, bytes], limit: int) -> bool:
    """True when the request declares a Content-Length over `limit`."""
    declared = headers.get(b"content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def too_large(limit: int) -> dict[str, str]:
    """The JSON error of a 413."""
    return {"error": "payload_too_large", "message": f"the body exceeds {limit} bytes"}


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it grows past `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(size, ended=not more)
            chunks.append(chunk)
        if not more:
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def discard_body(receive: Receive, headers: dict[bytes, bytes], received: int = 0) -> None:
    """Read and drop the rest of a body we refused, within DRAIN_BYTES and DRAIN_SECONDS.

    Nothing is read from a client that waits for a 100-continue (it sends no body after a
    final answer) or that declared more than DRAIN_BYTES (not worth the wait)."""
    if headers.get(b"expect", b"").lower() == b"100-continue":
        return
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > DRAIN_BYTES):
        return
    budget = DRAIN_BYTES - received
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while budget >= 0:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


async def end_after_drain(
    send: Send,
    receive: Receive,
    headers: dict[bytes, bytes],
    body: bytes,
    received: int = 0,
    ended: bool = False,
) -> None:
    """Send the last `body` of a response to a refused request, drop the rest of the request's
    body (none when it has `ended`), then end the response (which lets the server close the
    connection cleanly)."""
    if ended:
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await discard_body(receive, headers, received)
    await send({"type": "http.response.body", "body": b""})
