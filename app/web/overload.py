"""uvicorn's own answer beyond DLR_LIMIT_CONCURRENCY, in the contract's shape with Retry-After."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

# The protocol modules uvicorn may serve with; each looks the answer up by this name.
PROTOCOL_MODULES = (
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.zttp_impl",
    "uvicorn.protocols.http.zttp_h2_impl",
)


def overload_answer(retry_after: int) -> object:
    """An ASGI app answering 503 with Retry-After, as every other 503 of this service does."""
    body = json.dumps(
        {"error": "unavailable", "message": "too many requests at once; retry later"}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
        (b"connection", b"close"),
    ]

    async def service_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return service_unavailable


def install_overload_answer(retry_after: int) -> Callable[[], None]:
    """Replace uvicorn's bare `503 Service Unavailable` (sent when more connections or
    requests than DLR_LIMIT_CONCURRENCY are open) in every loaded protocol module; return
    the function that puts uvicorn's own answers back. uvicorn offers no setting for this
    answer; the flood test in tests/test_faults.py fails if a uvicorn release moves it."""
    answer = overload_answer(retry_after)
    replaced: list[tuple[Any, Any]] = []
    for name in PROTOCOL_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "service_unavailable"):
            replaced.append((module, module.service_unavailable))
            setattr(module, "service_unavailable", answer)  # noqa: B010 - a module global

    def undo() -> None:
        for module, original in replaced:
            setattr(module, "service_unavailable", original)  # noqa: B010 - a module global

    return undo
