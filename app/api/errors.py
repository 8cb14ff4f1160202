"""Rendering of every error in the contract's JSON shape, and their OpenAPI entries."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core.errors import ApiError
from app.core.settings import Settings

log = logging.getLogger("mboxii_dlr.api")


def _clean(errors: Any) -> list[dict[str, Any]]:
    cleaned = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        cleaned.append({"field": ".".join(loc) or "request", "message": err.get("msg", "")})
    return cleaned


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: a 405 names them all in `Allow`, where
    Starlette names only those of the first route that matched (GET and DELETE of
    /v1/messages/{batch_id} are two routes)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.router.routes):
        match, _ = context.original_route.matches(request.scope)
        if match is not Match.NONE:
            methods |= context.methods or set()
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Render every error in the contract's JSON shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(
            {"error": "invalid_parameters", "errors": _clean(exc.errors())}, status_code=422
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {
            400: "malformed_body",
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            413: "payload_too_large",
        }
        code = codes.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(
            {"error": code, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers,
        )

    async def storage_error(_: Request, exc: Exception) -> JSONResponse:
        away = not isinstance(exc, DBAPIError) or (
            exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
        )
        if not away:  # the database refused the query: a bug, not an outage
            log.error("query failed (%s)", exc.__class__.__name__, exc_info=exc)
            return JSONResponse({"error": "internal_error"}, status_code=500)
        log.error("database unreachable (%s); answering 503", exc.__class__.__name__)
        retry_after = str(settings.retry_after_seconds)
        return JSONResponse(
            {"error": "unavailable", "message": "the database is unreachable; retry later"},
            status_code=503,
            headers={"Retry-After": retry_after},
        )

    app.add_exception_handler(ApiError, api_error)
    for storage_exc in (DBAPIError, PoolTimeout, OSError):
        app.add_exception_handler(storage_exc, storage_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error statuses."""
    from app.api.schemas.common import ErrorRead, ValidationErrorRead

    if 401 in statuses:  # the key check and its throttle go together
        statuses = (*statuses, 429)
    text = {
        400: "The body is not JSON (`malformed_body`)",
        401: "Missing or wrong API key",
        403: "The key may read but not send or cancel (`forbidden`)",
        429: "Too many refused API keys from this address or, for a send, over the key's "
        "budget of messages a minute (`DLR_SEND_RATE`): wait `Retry-After` seconds",
        404: "Not found",
        409: "Several deliveries share this msgid; pass `mobile`",
        422: "Invalid parameters",
        502: "The gateway refused (`gateway_error` with its `code`, `meaning` and `interface`), "
        "was unreachable, or answered something unreadable",
        503: "The database is unreachable",
        504: "The gateway did not answer in time",
    }
    return {
        status: {
            "model": ValidationErrorRead if status == 422 else ErrorRead,
            "description": text.get(status, "Error"),
        }
        for status in statuses
    }
