"""The dashboard's number page: a number's summary, its latest deliveries, and suppressing or
lifting it. Links carry the number masked plus an opaque handle, never the number itself."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.mobiles import mask_mobile
from app.core.settings import Settings
from app.dashboard.pages import (
    PageError,
    Viewer,
    checked_form,
    dashboard_router,
    page,
    redirect,
    settings_of,
)
from app.dashboard.sessions import Session
from app.dashboard.views import delivery_ref, number_url
from app.db.models import Number
from app.gateway.suppressions import REASON_MAX_LENGTH, lift, suppress
from app.read.numbers import get_number
from app.state import SessionDep, StateDep
from app.web.security import key_id

log = logging.getLogger("mboxii_dlr.dashboard")

router = dashboard_router()

# What mask_mobile shows of a Taiwan mobile: 0 and its first three digits, then its last three.
_MASKED = re.compile(r"0(9[0-9]{2})\*\*\*([0-9]{3})")
NOTICES = {
    "suppressed": "Suppressed: sends leave this number out until the suppression is lifted.",
    "lifted": "Suppression lifted: sends reach this number again, and its streak starts at 0.",
}


async def find_number(
    session: AsyncSession, settings: Settings, masked: str, ref: str | None
) -> Number:
    """The number behind a masked spelling and its handle: the numbers that share the shown
    digits (at most a thousand) are few, and the handle names one of them."""
    match = _MASKED.fullmatch(masked)
    if match is None or not ref:
        raise PageError(404, "No such number", "No number has this address.")
    head, tail = "+886" + match[1], match[2]
    candidates = await session.scalars(
        select(Number).where(
            Number.mobile >= head + "000000",
            Number.mobile <= head + "999999",
            func.substr(Number.mobile, 11, 3) == tail,
        )
    )
    for number in candidates:
        if hmac.compare_digest(delivery_ref(settings, number.mobile), ref):
            return number
    raise PageError(404, "No such number", "No delivery to this number and no suppression of it.")


def may_manage(settings: Settings, viewer: Session) -> bool:
    """Whether the viewer's key may decide where messages go (suppress or lift), as PUT and
    DELETE /v1/suppressions require: any key while DLR_SEND_API_KEYS is empty, else one of
    its keys."""
    if not settings.read_keys or not settings.send_api_keys:
        return True
    return viewer.key_id in {key_id(k.get_secret_value()) for k in settings.send_api_keys}


async def _number_to_change(
    request: Request, settings: Settings, session: AsyncSession, viewer: Session, masked: str
) -> tuple[dict[str, Any], Number]:
    """The form that suppresses or lifts, and the number it names, once the form's token
    and the viewer's right to send are checked."""
    form = await checked_form(request, viewer)
    if not may_manage(settings, viewer):
        raise PageError(
            403,
            "Not with this key",
            "Suppressing a number or lifting its suppression needs a key of "
            "DLR_SEND_API_KEYS. Log in with one.",
        )
    number = await find_number(session, settings, masked, _text(form.get("ref")))
    return form, number


@router.get("/dashboard/numbers/{masked}")
async def show_number(
    request: Request,
    session: SessionDep,
    viewer: Viewer,
    masked: str,
    ref: str | None = None,
    reveal: bool = False,
    done: str | None = None,
) -> HTMLResponse:
    """One number: what its deliveries add up to, the latest of them, its suppression."""
    settings = settings_of(request)
    number = await find_number(session, settings, masked, ref)
    summary = await get_number(session, number.mobile)
    assert summary is not None
    if reveal:
        log.info("dashboard: a number revealed on its page (key %s)", viewer.key_id)
    context = {
        "number": summary,
        "reveal": reveal,
        "ref": delivery_ref(settings, number.mobile),
        "notice": NOTICES.get(done or ""),
        "reason_max": REASON_MAX_LENGTH,
        "may_manage": may_manage(settings, viewer),
    }
    return page(request, "number.html", context, viewer)


@router.post("/dashboard/numbers/{masked}/suppress")
async def suppress_number(
    request: Request, state: StateDep, session: SessionDep, viewer: Viewer, masked: str
) -> RedirectResponse:
    """Suppress a number by hand, with a reason."""
    settings = state.settings
    form, number = await _number_to_change(request, settings, session, viewer, masked)
    reason = " ".join(_text(form.get("reason")).split())[:REASON_MAX_LENGTH]
    if not reason or not reason.isprintable():
        raise PageError(422, "A reason is needed", "Say why this number is suppressed.")
    now = dt.datetime.now(dt.UTC)
    await suppress(session, number.mobile, reason, now, state.metrics)
    log.info("dashboard: number %s suppressed (key %s)", mask_mobile(number.mobile), viewer.key_id)
    return redirect(number_url(settings, number.mobile, done="suppressed"))


@router.post("/dashboard/numbers/{masked}/lift")
async def lift_suppression(
    request: Request, state: StateDep, session: SessionDep, viewer: Viewer, masked: str
) -> RedirectResponse:
    """Lift a number's suppression (manual or automatic)."""
    settings = state.settings
    _, number = await _number_to_change(request, settings, session, viewer, masked)
    now = dt.datetime.now(dt.UTC)
    lifted = await lift(session, number.mobile, now, state.metrics)
    if lifted is not None:
        log.info("dashboard: number %s lifted (key %s)", mask_mobile(number.mobile), viewer.key_id)
    return redirect(number_url(settings, number.mobile, done="lifted"))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
