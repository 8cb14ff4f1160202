"""The ASGI application: create_app() wires settings, database, writer and routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__, dashboard
from app.api import (
    callbacks,
    deliveries,
    messages,
    numbers,
    ops,
    rejected,
    stats,
    subscriptions,
)
from app.api.auth import ApiKeyMiddleware, require_api_key
from app.api.errors import install_error_handlers
from app.api.openapi import refine
from app.api.params import reject_nul
from app.core import redact
from app.core.metrics import Metrics
from app.core.paths import route_template
from app.core.settings import Settings, get_settings
from app.dashboard.data import OverviewCache
from app.db.engine import shown_url
from app.db.migrate import schema_problem
from app.db.numbers import suppress_reached
from app.db.partitions import maintain_periodically
from app.db.retention import retention_job
from app.db.throttle import KeyThrottle
from app.events.dispatcher import Dispatcher
from app.gateway import MboxiiClient
from app.gateway.budget import SendBudget
from app.gateway.reconcile import Reconciler
from app.ingest.endpoint import CallbackEndpoint
from app.read.backlog import observe_pending
from app.state import AppState, open_storage
from app.web.headers import SecurityHeadersMiddleware, page_csp
from app.web.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.web.overload import install_overload_answer

log = logging.getLogger("mboxii_dlr")

DOCS_ASSETS = "/docs/assets"
SWAGGER_UI_FILES = str(resources.files("fastapi_offline") / "static")

# How often each process checks that the months ahead have their partitions of reports.
PARTITIONS_INTERVAL = 24 * 3600.0

# Request bodies of the API and the dashboard (the largest, POST /v1/messages, is a few KiB).
API_MAX_BODY_BYTES = 64 * 1024

DESCRIPTION = """
Receives SMS delivery reports from the MboxII gateway, keeps every one of them, and answers
questions about them.

* **Callback**: give MboxII `https://<host>/callbacks/mboxii/<token>` as the `Value` of each
  send. A report is acknowledged (`200`, body `DLR_CALLBACK_ACK`) only once it is committed.
* **Sending** (`/v1/messages`, only when a gateway account is configured): send now or
  schedule through MboxII with this service's callback URL; reconciliation asks the gateway
  (CheckSMS) about reports that never came.
* **Read API** (`/v1`): needs `Authorization: Bearer <key>` or `X-API-Key: <key>` when
  keys are set: a key of `DLR_API_KEYS` reads, one of `DLR_SEND_API_KEYS` also sends and
  cancels (`403` for a read key). `/metrics` takes the same keys unless it is public.
  Times are ISO 8601 in UTC; parameters without an offset are in the gateway zone. Errors
  are JSON `{"error": "<code>", ...}`; a bad parameter is a `422`
  `{"error": "invalid_parameters", "errors": [{"field": "...", "message": "..."}]}`.
* **Browsers**: set `DLR_CORS_ORIGINS` (comma separated origins) to let dashboards served
  from those origins call the read API.
"""


class DlrApp(FastAPI):
    """FastAPI, with the gateway's callback served in front of its middleware stack.

    The callback is the hot path (thousands of requests a second after a campaign); it
    needs none of the framework's routing, validation or exception telemetry, only our
    request context (request id, metrics, access log). Everything else goes through
    FastAPI as usual."""

    callback_app: ASGIApp
    #: what the routes share; they read it through the dependencies in app/state.py
    app_state: AppState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_template(scope["path"]) is not None:
            scope["app"] = self
            await self.callback_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None, gateway_transport: httpx.AsyncBaseTransport | None = None
) -> DlrApp:
    """Build the application; nothing connects to the database until it starts.
    `gateway_transport` carries the gateway client's requests elsewhere (tests)."""
    settings = settings or get_settings()
    metrics = Metrics()
    state = AppState(
        settings=settings,
        metrics=metrics,
        dashboard_cache=OverviewCache(),
        ack_body=settings.callback_ack.encode("utf-8"),
        send_budget=SendBudget(settings.send_rate),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything entered here is left in reverse order at shutdown, process-wide changes
        # included, so an app that stopped leaves the process as it found it.
        async with contextlib.AsyncExitStack() as stack:
            # Each worker process builds its app here, so these hold for every worker.
            stack.callback(redact.install(settings.secret_values))
            stack.callback(install_overload_answer(settings.retry_after_seconds))
            stack.callback(metrics.close)
            warn_about_secrets(settings)
            state.storage = await stack.enter_async_context(open_storage(settings, metrics))
            state.key_throttle = KeyThrottle(state.engine)
            state.dispatcher = Dispatcher(state.engine, settings, metrics, state.outbox)
            if settings.webhook_dispatch:
                state.dispatcher.start()
            # Left before the storage: the writer may still commit events for the others.
            stack.push_async_callback(state.dispatcher.stop)
            await report_database(state.engine, settings.database_url)
            if settings.suppress_after_failures:
                await suppress_at_start(state.engine, settings.suppress_after_failures, metrics)
            if settings.mboxii_configured:
                gateway = MboxiiClient.from_settings(
                    settings,
                    transport=gateway_transport,
                    observe=lambda interface, result: metrics.gateway_requests.labels(
                        interface, result
                    ).inc(),
                )
                stack.push_async_callback(gateway.aclose)
                warn_about_plain_http(settings)
                reconciler = Reconciler(
                    settings, state.engine, state.sessionmaker, state.writer, gateway
                )
                reconciler.start()
                stack.push_async_callback(reconciler.stop)
                state.gateway, state.reconciler = gateway, reconciler
            if state.engine.dialect.name == "postgresql":
                # Every process keeps the months ahead created (each check is one query
                # under a lock; the first to find a month missing creates it).
                months = asyncio.create_task(
                    maintain_periodically(state.engine, PARTITIONS_INTERVAL),
                    name="mboxii-dlr-partitions",
                )
                stack.push_async_callback(cancel_and_wait, months)
            backlog = asyncio.create_task(
                observe_pending(state.engine, metrics), name="mboxii-dlr-backlog"
            )
            stack.push_async_callback(cancel_and_wait, backlog)
            if settings.retention_days:
                interval = settings.retention_interval_seconds
                # Every process offers; one per interval, across the deployment, runs it.
                purger = asyncio.create_task(
                    retention_job(
                        state.engine,
                        settings.retention_days,
                        interval,
                        first_delay=min(30.0, interval),
                    ).run_forever(),
                    name="mboxii-dlr-retention",
                )
                stack.push_async_callback(cancel_and_wait, purger)
            # Everything built so far lives as long as the process: keep it out of the cyclic
            # garbage collector's full passes, which otherwise stall requests for tens of ms.
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
            yield

    app = DlrApp(
        title="mboxii-dlr",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
        # /docs is served below with a CSP made for it; ReDoc would need another one.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.app_state = state
    install_error_handlers(app, settings)
    app.include_router(ops.router)
    # Documentation only: DlrApp serves these paths before FastAPI routes anything.
    app.include_router(callbacks.router)
    # Every /v1 route sits behind the API keys (when there are any); the callback path never
    # does. ApiKeyMiddleware checks them first; the dependency documents and re-checks.
    keys = [Depends(require_api_key)] if settings.read_keys else []
    app.include_router(ops.metrics_router, dependencies=[] if settings.metrics_open else keys)
    v1 = [*keys, Depends(reject_nul)]
    for router in (stats.router, rejected.router, numbers.router, subscriptions.router):
        app.include_router(router, dependencies=v1)
    app.include_router(deliveries.router, dependencies=v1)
    # The dashboard checks the same keys itself, through a login form and a session cookie.
    app.include_router(dashboard.router)
    if settings.mboxii_configured:
        # Without an account there is nothing to send with: the paths do not exist.
        app.include_router(messages.router, dependencies=v1)
    # Innermost, so CORS preflights (answered outside it) need no key.
    app.add_middleware(ApiKeyMiddleware, state=state)
    if settings.cors_origins:
        # Browser dashboards on other origins; preflights are answered here, before the
        # API key check, as browsers send them without credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Content-Disposition", "Retry-After", "WWW-Authenticate"],
            max_age=600,
        )
    # Nothing the API or the dashboard takes comes near this; the callback has its own limit.
    app.add_middleware(BodyLimitMiddleware, limit=API_MAX_BODY_BYTES)
    # Callback answers stay minimal: they never pass through this stack (see DlrApp).
    app.add_middleware(
        SecurityHeadersMiddleware, no_store_prefixes=("/v1", "/healthz", "/readyz", "/metrics")
    )
    # Added last, so it is the outermost; the callback gets its own copy (see DlrApp).
    app.add_middleware(RequestContextMiddleware, settings=settings, metrics=metrics)
    app.callback_app = RequestContextMiddleware(
        CallbackEndpoint(state), settings=settings, metrics=metrics
    )

    # The Swagger UI's files come with the fastapi-offline package, so /docs works without
    # reaching a CDN (offline, or behind a strict egress policy).
    app.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_UI_FILES), name="docs-assets")
    docs = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API documentation",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        # No validator badge: it would load an image from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    docs_headers = {"Content-Security-Policy": page_csp(bytes(docs.body).decode())}

    @app.get("/docs", include_in_schema=False)
    async def get_docs() -> HTMLResponse:
        """Serve the Swagger UI with a CSP that allows exactly what it loads."""
        return HTMLResponse(bytes(docs.body), headers=docs_headers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def warn_about_secrets(settings: Settings) -> None:
    if not settings.callback_tokens:
        log.warning(
            "DLR_CALLBACK_TOKENS is empty: callbacks are accepted on /callbacks/mboxii "
            "without a secret; set tokens before exposing this service"
        )
    for name, problem in settings.weak_secrets():
        # Production refuses these (app.core.settings); a trial setup is only told.
        log.warning(
            "%s holds %s, which can be guessed (DLR_ENV=production refuses it); use long "
            "random ones (python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            name,
            problem,
        )


def warn_about_plain_http(settings: Settings) -> None:
    if settings.mboxii_base_url.startswith("http://"):
        log.warning(
            "DLR_MBOXII_BASE_URL is plain http: MboxII's API speaks only HTTP on port 80, so "
            "the account password and every message cross the network in clear; send from a "
            "network path you trust, or use an https base URL if your gateway offers one"
        )


async def report_database(engine: AsyncEngine, database_url: str) -> None:
    """Say at start-up when the database cannot serve; the app starts all the same (it
    answers 503 meanwhile, and /readyz says why) and recovers once the database does."""
    problem = await schema_problem(engine)
    if problem is not None:
        log.error(
            "database %s: %s; serving anyway, /readyz answers 503 until this is fixed",
            shown_url(database_url),
            problem,
        )


async def suppress_at_start(engine: AsyncEngine, threshold: int, metrics: Metrics) -> None:
    """Apply DLR_SUPPRESS_AFTER_FAILURES to the streaks stored before it was set or lowered
    (the write path applies it as streaks grow)."""
    try:
        await suppress_reached(engine, threshold, metrics)
    except (SQLAlchemyError, OSError) as exc:
        log.warning(
            "could not look for numbers whose failure streak already reached "
            "DLR_SUPPRESS_AFTER_FAILURES (%s); each is suppressed at its next failure",
            exc.__class__.__name__,
        )


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


app = create_app()
