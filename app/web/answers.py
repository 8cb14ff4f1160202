"""Answers written straight to ASGI (the callback endpoint, refusals in middleware)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.types import Receive, Send

from app.web.bodies import end_after_drain

Headers = Sequence[tuple[bytes, bytes]]
JSON_TYPE = (b"content-type", b"application/json")
TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")


async def start_answer(send: Send, *, status: int, body: bytes, headers: Headers = ()) -> None:
    """Send the status line and headers of an answer whose whole body is `body`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )


async def send_answer(send: Send, *, status: int, body: bytes, headers: Headers = ()) -> None:
    """A whole answer in two messages."""
    await start_answer(send, status=status, body=body, headers=headers)
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, *, status: int, payload: dict[str, Any], headers: Headers = ()
) -> None:
    """A JSON answer (the contract's error shape, for instance)."""
    await send_answer(
        send, status=status, body=json.dumps(payload).encode(), headers=[JSON_TYPE, *headers]
    )


async def refuse(
    send: Send,
    receive: Receive,
    *,
    status: int,
    payload: dict[str, Any],
    request_headers: dict[bytes, bytes],
    headers: Headers = (),
    received: int = 0,
    ended: bool = False,
) -> None:
    """Answer a request refused before its body was all read, then drop the rest of the body
    (see app.web.bodies: closing with it unread would reset the connection under the answer).
    `received` bytes of it were read already; `ended` says the body has ended."""
    body = json.dumps(payload).encode()
    await start_answer(send, status=status, body=body, headers=[JSON_TYPE, *headers])
    await end_after_drain(send, receive, request_headers, body, received, ended)
