"""The dashboard's views: overview and live figures, search, delivery, batch, quarantine and
outbound events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import SubscriptionDisabled
from app.core.mobiles import national, normalize_mobile
from app.core.settings import Settings
from app.core.statuses import DELIVERED_WORDS, FAILED_WORDS, NON_FINAL_WORDS
from app.dashboard import data
from app.dashboard.charts import build_chart
from app.dashboard.pages import (
    PageError,
    Viewer,
    checked_form,
    dashboard_router,
    page,
    redirect,
    settings_of,
)
from app.dashboard.views import delivery_ref, number_url
from app.db.engine import MAX_ROW_ID
from app.db.models import Event, Number, Rejected
from app.events import subscriptions as events_service
from app.ingest.errors import CallbackRejected, IngestUnavailable
from app.ingest.parse import parse_callback
from app.ingest.quarantine import list_rejected, replay
from app.read.aggregates import batch_summary
from app.read.queries import get_delivery
from app.state import AppState, SessionDep, StateDep

log = logging.getLogger("mboxii_dlr.dashboard")

SEARCH_LIMIT = 100
MAX_IDENTIFIER = 64  # no stored msgid or batch ID is longer
BATCH_LIMIT = 200
REJECTED_PAGE = 50
EVENTS_PAGE = 50
DEFAULT_REFRESH = 10

router = dashboard_router()


WORD_MEANINGS = {
    "DELIVRD": "delivered to the handset",
    "EXPIRED": "validity period expired",
    "DELETED": "deleted",
    "UNDELIV": "undeliverable",
    "REJECTD": "rejected",
    "SYNTAXE": "syntax error in the message",
    "UNKNOWN": "invalid state",
    "ACCEPTD": "accepted by customer service",
    "ENROUTE": "on its way (not final)",
}


def word_kind(word: str) -> str:
    if word in DELIVERED_WORDS:
        return "delivered"
    if word in FAILED_WORDS:
        return "failed"
    if word in NON_FINAL_WORDS:
        return "pending"
    return "other"


async def figures_context(state: AppState, session: AsyncSession) -> dict[str, Any]:
    overview = await state.dashboard_cache.get(session, state.settings.zone)
    hours, days = overview.hours, overview.days
    words = sorted(set(hours["totals"]["by_status"]) | set(days["totals"]["by_status"]))
    peak = max((hours["totals"]["by_status"].get(w, 0) for w in words), default=0)
    statuses = [
        {
            "word": word,
            "meaning": WORD_MEANINGS.get(word, "not documented"),
            "kind": word_kind(word),
            "hours": hours["totals"]["by_status"].get(word, 0),
            "days": days["totals"]["by_status"].get(word, 0),
            "share": hours["totals"]["by_status"].get(word, 0) / peak if peak else 0,
        }
        for word in words
    ]
    return {
        "overview": overview,
        "hours_chart": build_chart("hours", "Deliveries per hour, last 24 hours", hours, "hour"),
        "days_chart": build_chart("days", "Deliveries per day, last 30 days", days, "day"),
        "statuses": statuses,
    }


@router.get("/dashboard")
async def show_dashboard(
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: Viewer,
    refresh: Annotated[int, Query(ge=2, le=3600)] = DEFAULT_REFRESH,
) -> HTMLResponse:
    """The overview: rates and volumes over time, status words, failures, quarantine."""
    context = await figures_context(state, session)
    return page(request, "overview.html", {**context, "refresh": refresh}, viewer)


@router.get("/dashboard/fragments/figures")
async def show_figures(
    request: Request, state: StateDep, session: SessionDep, viewer: Viewer
) -> HTMLResponse:
    """The overview's figures alone, which the page fetches to update itself."""
    return page(request, "_figures.html", await figures_context(state, session), viewer)


# ---------------------------------------------------------------- search and views


@router.get("/dashboard/search")
async def search_deliveries(
    request: Request, session: SessionDep, viewer: Viewer, q: str = ""
) -> Response:
    """Find a number (any accepted form), a delivery by msgid, or a batch ID."""
    query = q.strip()[:128]
    if not query:
        return redirect("/dashboard")
    settings = settings_of(request)
    mobile = normalize_mobile(query)
    by_mobile = await data.deliveries_to(session, mobile, SEARCH_LIMIT + 1) if mobile else []
    number = await session.get(Number, mobile) if mobile else None
    by_msgid = await data.deliveries_with_msgid(session, query, SEARCH_LIMIT + 1)
    batch = await batch_summary(session, query)
    found = [
        kind
        for kind, hit in (("mobile", by_mobile or number), ("msgid", by_msgid), ("batch", batch))
        if hit
    ]
    if found == ["batch"]:
        return redirect(f"/dashboard/batches/{quote(query, safe='')}")
    if found == ["mobile"] and number is not None:
        return redirect(number_url(settings, number.mobile))
    only = by_mobile if found == ["mobile"] else by_msgid if found == ["msgid"] else []
    if len(only) == 1:
        ref = delivery_ref(settings, only[0].mobile)
        return redirect(f"/dashboard/deliveries/{quote(only[0].msgid, safe='')}?ref={ref}")
    context = {
        "query": query,
        "mobile": national(mobile) if mobile else None,
        "by_mobile": by_mobile[:SEARCH_LIMIT],
        "by_msgid": by_msgid[:SEARCH_LIMIT],
        "batch": batch,
        "limit": SEARCH_LIMIT,
        "more_mobile": len(by_mobile) > SEARCH_LIMIT,
        "number_page": number_url(settings, number.mobile) if number is not None else None,
    }
    return page(request, "search.html", context, viewer, 200 if found else 404)


@router.get("/dashboard/deliveries/{msgid:path}")
async def show_delivery(
    request: Request,
    session: SessionDep,
    viewer: Viewer,
    msgid: str,
    ref: Annotated[str | None, Query(max_length=64)] = None,
    reveal: bool = False,
) -> HTMLResponse:
    """One delivery: its current state and its history of reports; the number masked."""
    settings = settings_of(request)
    if len(msgid) > MAX_IDENTIFIER:
        raise PageError(404, "No such delivery", "No delivery has this msgid.")
    rows = await data.deliveries_with_msgid(session, msgid, SEARCH_LIMIT + 1)
    if ref is not None:
        rows = [d for d in rows if delivery_ref(settings, d.mobile) == ref]
    if not rows:
        raise PageError(404, "No such delivery", "No delivery has this msgid.")
    if len(rows) > 1:
        context: dict[str, Any] = {
            "query": msgid,
            "mobile": None,
            "by_mobile": [],
            "by_msgid": rows,
            "batch": None,
            "limit": SEARCH_LIMIT,
            "more_mobile": False,
            "number_page": None,
        }
        return page(request, "search.html", context, viewer)
    delivery = rows[0]
    detail = await get_delivery(session, delivery.msgid, delivery.mobile)
    if reveal:
        # Who saw a number is worth knowing; the number itself stays out of the logs.
        log.info("dashboard: number of delivery msgid=%r revealed (key %s)", msgid, viewer.key_id)
    context = {
        "delivery": delivery,
        "history": detail["history"],
        "reveal": reveal,
        "ref": delivery_ref(settings, delivery.mobile),
    }
    return page(request, "delivery.html", context, viewer)


@router.get("/dashboard/batches/{batch_id:path}")
async def show_batch(
    request: Request, session: SessionDep, viewer: Viewer, batch_id: str
) -> HTMLResponse:
    """One send (batch ID): its counts by outcome and status word, and its deliveries."""
    if len(batch_id) > MAX_IDENTIFIER:
        raise PageError(404, "No such batch", "No report names this batch ID.")
    summary = await batch_summary(session, batch_id)
    if summary is None:
        raise PageError(404, "No such batch", "No report names this batch ID.")
    deliveries = await data.batch_deliveries(session, batch_id, BATCH_LIMIT)
    context = {"summary": summary, "deliveries": deliveries, "limit": BATCH_LIMIT}
    return page(request, "batch.html", context, viewer)


# ---------------------------------------------------------------- quarantine


def request_text(row: Rejected) -> str:
    """The stored request as text (bytes that are not UTF-8 shown as replacement marks)."""
    lines = [f"{row.method} ?{row.query}" if row.query else row.method]
    if row.content_type:
        lines.append(f"Content-Type: {row.content_type}")
    text = "\n".join(lines)
    if row.body:
        text += "\n\n" + row.body[:4000].decode("utf-8", "replace")
        if len(row.body) > 4000:
            text += f"\n… ({len(row.body)} bytes in all)"
    return text


def current_errors(row: Rejected, settings: Settings) -> list[dict[str, str]]:
    """What validation says of a quarantined request today, as a replay would see it."""
    try:
        parse_callback(
            row.content_type, row.body, row.query.encode("latin-1"), settings.zone, row.received_at
        )
    except CallbackRejected as rejected:
        return rejected.errors
    return []


@router.get("/dashboard/rejected")
async def list_rejected_requests(
    request: Request,
    session: SessionDep,
    viewer: Viewer,
    before: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    replayed: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    result: Annotated[str | None, Query(max_length=16)] = None,
    msgid: Annotated[str | None, Query(max_length=64)] = None,
    ref: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    """The quarantine, newest first, with a replay button for each request."""
    rows: Sequence[Rejected] = await list_rejected(session, REJECTED_PAGE + 1, before_id=before)
    notice: dict[str, Any] | None = None
    if replayed is not None:
        notice = {"id": replayed, "result": result, "msgid": msgid, "ref": ref, "errors": []}
        if result == "invalid":
            row = await session.get(Rejected, replayed)
            if row is not None:
                notice["errors"] = current_errors(row, settings_of(request))
    counts = await data.quarantine_counts(session)
    context = {
        "rows": rows[:REJECTED_PAGE],
        "older": rows[REJECTED_PAGE - 1].id if len(rows) > REJECTED_PAGE else None,
        "request_text": request_text,
        "notice": notice,
        "counts": counts,
    }
    return page(request, "rejected.html", context, viewer)


@router.post("/dashboard/rejected/{id}/replay")
async def replay_request(
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: Viewer,
    id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)],
) -> RedirectResponse:
    """Validate a quarantined request again and store its report when it now passes."""
    await checked_form(request, viewer)
    row = await session.get(Rejected, id)
    if row is None:
        raise PageError(404, "No such request", f"The quarantine holds no request #{id}.")
    try:
        outcome = await replay(session, state.writer, state.settings.zone, row)
    except IngestUnavailable:
        raise PageError(
            503,
            "Storage unavailable",
            "The database does not answer; nothing was stored. Try again in a moment.",
        ) from None
    params = {"replayed": str(id)}
    if outcome.report is None:
        params["result"] = "invalid"
    else:
        params["result"] = "stored" if outcome.new else "duplicate"
        params["msgid"] = outcome.report.msgid
        params["ref"] = delivery_ref(state.settings, outcome.report.mobile)
    log.info("dashboard: quarantined request #%d replayed: %s", id, params["result"])
    return redirect("/dashboard/rejected?" + urlencode(params) + f"#rejected-{id}")


# ---------------------------------------------------------------- outbound events


@router.get("/dashboard/events")
async def list_outbound_events(
    request: Request,
    session: SessionDep,
    viewer: Viewer,
    retried: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
) -> HTMLResponse:
    """Outbound events still waiting and those that failed, each with a retry button."""
    counts = await data.event_counts(session)
    waiting = await events_service.list_events(session, EVENTS_PAGE, status="pending")
    failed = await events_service.list_events(session, EVENTS_PAGE, status="failed")
    context = {
        "counts": counts,
        "waiting": waiting,
        "failed": failed,
        "retried": retried,
        "limit": EVENTS_PAGE,
    }
    return page(request, "events.html", context, viewer)


@router.post("/dashboard/events/{id}/retry")
async def retry_outbound_event(
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: Viewer,
    id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)],
) -> RedirectResponse:
    """Send an event to its destination again now; its attempts start over."""
    await checked_form(request, viewer)
    if await session.get(Event, id) is None:
        raise PageError(404, "No such event", f"No outbound event #{id}.")
    try:
        await events_service.retry_event(session, id)
    except SubscriptionDisabled as exc:
        raise PageError(409, "Not sent again", exc.message) from None
    state.dispatcher.wake()
    log.info("dashboard: outbound event #%d sent again", id)
    return redirect(f"/dashboard/events?retried={id}")
