"""Per-request context: request id, HTTP metrics by route template, and our access log."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import REQUEST_ID
from app.core.metrics import Metrics
from app.core.paths import PREFIX, ROUTE, route_template
from app.core.settings import Settings
from app.web.answers import refuse
from app.web.bodies import declared_over, end_after_drain, too_large
from app.web.security import caller_address

access_log = logging.getLogger("mboxii_dlr.access")

UNMATCHED = "unmatched"
CALLBACK_ROUTES = frozenset({PREFIX, ROUTE})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A caller's request id is passed on only when it is short and plain, so it cannot forge
# log lines or headers.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_HEADER = b"x-request-id"
# Request ids: a random per-process prefix and a counter. Unique without a random draw and a
# UUID object per request (uuid4 showed in the callback's profile).
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):020x}"


def incoming_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's X-Request-ID when it is sane, else None."""
    for name, value in headers:
        if name == _HEADER:
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else None
    return None


def route_label(scope: Scope) -> str:
    """The route template that served the request; never the raw path (it holds tokens
    and ids), and one fixed label for paths that matched nothing."""
    route = scope.get("route")
    if route is not None:
        template = getattr(route, "path_format", None)
        if isinstance(template, str):
            return template
    return route_template(scope["path"]) or UNMATCHED


class RequestContextMiddleware:
    """Gives each request an id (X-Request-ID, echoed in the response and set for log
    lines), counts and times it by route template, and writes one access log line.

    Pure ASGI and lean: it wraps every callback, whose throughput is measured."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = incoming_request_id(scope["headers"]) or new_request_id()
        id_header = (_HEADER, request_id.encode("ascii"))
        status = 500  # what the client sees when the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        context = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = route_label(scope)
            self._observe(method, route, status, elapsed)
            if self._wants_access_line(route, status):
                self._log_access(scope, method, route, status, elapsed)
            REQUEST_ID.reset(context)

    def _wants_access_line(self, route: str, status: int) -> bool:
        settings = self.settings
        if not settings.access_log or not access_log.isEnabledFor(logging.INFO):
            return False
        # An acknowledged callback is the one line that would repeat thousands of times a
        # second; the writer logs a summary of them each minute instead.
        return status != 200 or route not in CALLBACK_ROUTES or settings.access_log_callbacks

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            # Label lookups take a lock and hash the values; each series is looked up once.
            metrics = self.metrics
            series = (
                metrics.http_requests.labels(method, route, str(status)),
                metrics.http_seconds.labels(method, route),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(elapsed)

    def _log_access(
        self, scope: Scope, method: str, route: str, status: int, elapsed: float
    ) -> None:
        # A matched path is shown only as its template. An unmatched one is shown as it came,
        # less any callback token a misconfigured caller put in it (the formatter masks
        # numbers). The query string is never logged.
        path = route
        if route == UNMATCHED:
            path = scope["path"][:200]
            for token in self.settings.callback_tokens:
                path = path.replace(token.get_secret_value(), "***")
        address = caller_address(scope, self.settings.trusted_proxies)
        duration_ms = round(elapsed * 1000, 2)
        access_log.info(
            "%s %s %d %.2fms",
            method,
            path,
            status,
            duration_ms,
            extra={
                "method": method,
                "route": path,
                "status": status,
                "duration_ms": duration_ms,
                "client": address,
            },
        )


class PayloadTooLarge(StarletteHTTPException):
    """A request body over the API's limit (raised while it streams in)."""

    def __init__(self, limit: int, received: int, ended: bool) -> None:
        super().__init__(413, too_large(limit)["message"])
        self.received = received
        self.ended = ended


class BodyLimitMiddleware:
    """Refuses API and dashboard request bodies over `limit` bytes with a 413: by the
    declared length before reading, or as soon as a streamed body grows past it (the app's
    error handler renders that one). The callback has its own limit and never passes here.

    Starlette's RequestBodyLimitMiddleware answers in plain text and closes with the body
    unread, which resets the connection under the answer; this one drops the rest first."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if declared_over(headers, self.limit):
            close = [(b"connection", b"close")]
            await refuse(
                send,
                receive,
                status=413,
                payload=too_large(self.limit),
                request_headers=headers,
                headers=close,
            )
            return

        received = 0
        refused: PayloadTooLarge | None = None

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    ended = not message.get("more_body", False)
                    refused = PayloadTooLarge(self.limit, received, ended)
                    raise refused
            return message

        async def draining_send(message: Message) -> None:
            if (
                refused is not None
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                body = message.get("body", b"")
                await end_after_drain(send, receive, headers, body, refused.received, refused.ended)
                return
            await send(message)

        await self.app(scope, limited_receive, draining_send)
