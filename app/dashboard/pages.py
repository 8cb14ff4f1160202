"""Plumbing of the dashboard's pages: sessions as a dependency, rendering, HTML errors, forms."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.core.settings import Settings
from app.dashboard.charts import percent
from app.dashboard.sessions import (
    COOKIE,
    COOKIE_PATH,
    LIFETIME_SECONDS,
    Session,
    csrf_ok,
    current_session,
    is_https,
    same_origin,
    verify,
)
from app.dashboard.views import delivery_ref, local_time, number_url, render
from app.db.models import Delivery
from app.state import get_state

log = logging.getLogger("mboxii_dlr.dashboard")

# No inline script or style anywhere, so the policy can forbid both.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, fragments answer 401."""


class PageError(Exception):
    """A page that cannot be shown, rendered as an HTML page for the person who asked."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class DashboardRoute(APIRoute):
    """Routes whose failures are HTML pages or redirects for people, not JSON for programs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            if has_nul(request):
                # No stored value holds one, and PostgreSQL refuses it in any comparison.
                return error_page(request, 404, "Not found", "No page has this address.")
            try:
                return await handler(request)
            except RequestValidationError as exc:
                names = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
                return error_page(
                    request,
                    422,
                    "Not a valid address",
                    "This address has a value the dashboard cannot use"
                    + (f" ({', '.join(names)})" if names else "")
                    + ". Go back to the dashboard and follow its links.",
                )
            except LoginRequired:
                if "/fragments/" in request.url.path:
                    # the page's script reloads the page, which then leads to the login
                    return PlainTextResponse("log in again", status_code=401, headers=PAGE_HEADERS)
                target = request.url.path if request.method == "GET" else "/dashboard"
                if request.url.query and request.method == "GET":
                    target += "?" + request.url.query
                return redirect("/dashboard/login?" + urlencode({"next": target}))
            except PageError as exc:
                return error_page(request, exc.status, exc.title, exc.message)
            except (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError):
                log.warning("dashboard: database unreachable")
                return error_page(
                    request,
                    503,
                    "Database unreachable",
                    "The database does not answer; this page will work again once it does.",
                )

        return guarded


def has_nul(request: Request) -> bool:
    """Whether a NUL character is anywhere in the path or the query parameters."""
    return "\x00" in request.url.path or any(
        "\x00" in name or "\x00" in value for name, value in request.query_params.multi_items()
    )


async def viewer(request: Request) -> Session:
    """The session of whoever asks; LoginRequired when API keys are set and there is none."""
    session = await current_session(request)
    if session is None:
        raise LoginRequired
    return session


Viewer = Annotated[Session, Depends(viewer)]


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def set_cookie(response: Response, request: Request, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        session.token,
        max_age=LIFETIME_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def settings_of(request: Request) -> Settings:
    return get_state(request).settings


def page(
    request: Request,
    template: str,
    context: dict[str, Any],
    session: Session | None = None,
    status: int = 200,
) -> HTMLResponse:
    """Render a template with what every page needs, and start the session cookie if new."""
    settings = settings_of(request)
    zone = settings.zone

    def delivery_url(delivery: Delivery, **params: str) -> str:
        query = urlencode({"ref": delivery_ref(settings, delivery.mobile), **params})
        return f"/dashboard/deliveries/{quote(delivery.msgid, safe='')}?{query}"

    body = render(
        template,
        {
            "request_path": request.url.path,
            "session": session,
            "keys_required": bool(settings.read_keys),
            "zone_name": settings.gateway_timezone,
            "local": lambda value: local_time(value, zone),
            "delivery_url": delivery_url,
            "batch_url": lambda batch_id: f"/dashboard/batches/{quote(batch_id, safe='')}",
            "number_url": lambda mobile: number_url(settings, mobile),
            "percent": percent,
            "query": "",
            **context,
        },
    )
    response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
    if session is not None and session.new:
        set_cookie(response, request, session)
    return response


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    # The signature alone decides here (the database may be what failed): the page shows
    # nothing but the error, whoever sees it.
    session = verify(settings_of(request), request.cookies.get(COOKIE))
    return page(request, "error.html", {"title": title, "message": message}, session, status)


async def checked_form(request: Request, session: Session) -> dict[str, Any]:
    """The form of a POST that changes something: same site and this session's CSRF token."""
    form = await request.form()
    if not same_origin(request) or not csrf_ok(session, form.get("csrf")):
        log.warning("dashboard: form refused (cross-site or stale CSRF token)")
        raise PageError(
            403,
            "Form refused",
            "This form was not sent from this dashboard's own page, or it is too old. "
            "Go back, reload the page and try again.",
        )
    return dict(form)


def dashboard_router() -> APIRouter:
    """A router for dashboard pages: HTML errors, hidden from the API's OpenAPI document."""
    return APIRouter(route_class=DashboardRoute, include_in_schema=False)
