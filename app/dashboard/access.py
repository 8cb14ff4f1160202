"""The way in: the root redirect, login and logout, and the dashboard's static files."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from app.dashboard.pages import (
    PageError,
    Viewer,
    checked_form,
    dashboard_router,
    page,
    redirect,
    set_cookie,
    settings_of,
)
from app.dashboard.sessions import (
    COOKIE,
    COOKIE_PATH,
    current_session,
    is_https,
    issue,
    matching_key,
    same_origin,
)
from app.dashboard.views import static_files
from app.db.revoked import revoke
from app.state import get_state
from app.web.security import caller_address, client_key

log = logging.getLogger("mboxii_dlr.dashboard")

router = dashboard_router()


@router.get("/")
async def redirect_root() -> RedirectResponse:
    """Send people who open the service's address to the dashboard."""
    return redirect("/dashboard")


@router.get("/dashboard/")
async def redirect_slash() -> RedirectResponse:
    """The dashboard lives at /dashboard, without the slash."""
    return redirect("/dashboard")


def safe_next(target: object) -> str:
    """Where to go after logging in: only a dashboard page of this site."""
    if (
        isinstance(target, str)
        and target.startswith("/dashboard")
        and not target.startswith("/dashboard/login")
        and "\\" not in target
        and "//" not in target
        and "/.." not in target
        and target.isprintable()
    ):
        return target
    return "/dashboard"


@router.get("/dashboard/login")
async def show_login(request: Request, next: str = "/dashboard") -> Response:
    """Show the login form (or go on when no key is needed or the session is valid)."""
    settings = settings_of(request)
    if not settings.read_keys or await current_session(request) is not None:
        return redirect(safe_next(next))
    return page(request, "login.html", {"next": safe_next(next), "failed": False})


@router.post("/dashboard/login")
async def log_in(request: Request) -> Response:
    """Check the API key typed into the form and start a session for it."""
    settings = settings_of(request)
    form = await request.form()
    target = safe_next(form.get("next"))
    if not settings.read_keys:
        return redirect(target)
    if not same_origin(request):
        raise PageError(403, "Form refused", "This login form was sent from another site.")
    throttle = get_state(request).key_throttle
    client = client_key(caller_address(request.scope, settings.trusted_proxies))
    # Checked before the key, so that a locked client learns nothing of its guesses.
    wait, everyone = await throttle.retry_after(client), False
    if wait is None:
        wait = await throttle.logins_retry_after()
        everyone = wait is not None
    if wait is not None:
        reason = "from all addresses together" if everyone else "from this address"
        log.warning("dashboard: login refused from %s (too many failed logins %s)", client, reason)
        context = {"next": target, "failed": False, "wait": wait, "everyone": everyone}
        locked = page(request, "login.html", context, status=429)
        locked.headers["Retry-After"] = str(wait)
        return locked
    given = form.get("key")
    key = matching_key(given, settings.read_keys) if isinstance(given, str) and given else None
    if key is None:
        await throttle.failed(client, "login")
        log.warning("dashboard: login refused from %s (wrong API key)", client)
        return page(request, "login.html", {"next": target, "failed": True}, status=401)
    await throttle.succeeded(client)
    session = issue(settings, key)
    log.info("dashboard: login (key %s)", session.key_id)
    response = redirect(target)
    set_cookie(response, request, session)
    return response


@router.post("/dashboard/logout")
async def log_out(request: Request, session: Viewer) -> Response:
    """End the session: revoke it for every process, forget the cookie, show the login."""
    await checked_form(request, session)
    await revoke(get_state(request).engine, session.id, session.expires)
    log.info("dashboard: logout (key %s)", session.key_id)
    response = redirect("/dashboard/login")
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=is_https(request)
    )
    return response


@router.get("/dashboard/static/{name}")
async def get_static(name: str, v: str | None = None) -> Response:
    """Serve one of the dashboard's own CSS, script or icon files."""
    file = static_files().get(name)
    if file is None:
        return PlainTextResponse("not found", status_code=404)
    # A URL carrying the content's version never changes; any other may.
    cache = "public, max-age=31536000, immutable" if v == file.version else "no-cache"
    return Response(
        file.body,
        media_type=file.media_type,
        headers={
            "Cache-Control": cache,
            "ETag": f'"{file.version}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
