"""Read API over the quarantine: list rejected callback requests and replay them."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from app.api.errors import error_responses
from app.api.params import CursorQuery, LimitQuery, check_cursor
from app.api.schemas.common import ValidationErrorRead
from app.api.schemas.deliveries import DeliveryRead
from app.api.schemas.rejected import RejectedPage, RejectReason
from app.core.errors import InvalidCallback, NotFound, Unavailable
from app.db.engine import MAX_ROW_ID
from app.db.models import Delivery, Rejected
from app.ingest.errors import IngestUnavailable
from app.ingest.quarantine import list_rejected, replay
from app.read.cursors import cursor_key, id_position, next_page
from app.state import SessionDep, SettingsDep, StateDep

router = APIRouter(prefix="/v1", tags=["quarantine"])


def rejected_item(row: Rejected) -> dict[str, Any]:
    """A quarantine row as the API shows it: the body as text when it is UTF-8."""
    try:
        body, encoding = row.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(row.body).decode("ascii"), "base64"
    return {
        "id": row.id,
        "received_at": row.received_at,
        "last_seen_at": row.last_seen_at,
        "count": row.count,
        "reason": row.reason,
        "errors": row.errors,
        "method": row.method,
        "query": row.query,
        "content_type": row.content_type,
        "body": body,
        "body_encoding": encoding,
        "replayed_at": row.replayed_at,
        "source_address": row.source_address,
    }


@router.get(
    "/rejected",
    response_model=RejectedPage,
    summary="Quarantined callback requests",
    responses=error_responses(401, 422),
)
async def list_quarantine(
    settings: SettingsDep,
    session: SessionDep,
    reason: Annotated[
        RejectReason | None, Query(description="Only requests rejected for this reason")
    ] = None,
    limit: LimitQuery = 100,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """List quarantined callback requests, newest first."""
    key = cursor_key(settings)
    filters = {"list": "rejected", "reason": reason}
    before_id = id_position(key, check_cursor(cursor), filters)
    rows = await list_rejected(session, limit + 1, reason=reason, before_id=before_id)
    page, next_cursor = next_page(rows, limit, key, filters, lambda last: [last.id])
    return {"items": [rejected_item(row) for row in page], "next_cursor": next_cursor}


@router.post(
    "/rejected/{id}/replay",
    response_model=DeliveryRead,
    operation_id="replay_rejected",
    summary="Replay a quarantined callback request",
    description="Validates the stored request again under the current settings, as of its "
    "original receipt time. When it passes, the report is stored through the callback's "
    "ingest path (same dedup and ordering; replaying again is harmless) and the answer is "
    "the delivery's state afterwards. When it still fails, 422 lists the errors.",
    responses={
        **error_responses(401, 404, 503),
        422: {"model": ValidationErrorRead, "description": "The request is still invalid"},
    },
)
async def replay_rejected(
    state: StateDep,
    session: SessionDep,
    id: Annotated[
        int, Path(ge=1, le=MAX_ROW_ID, description="The quarantine row's id", examples=[17])
    ],
) -> DeliveryRead:
    """Validate a quarantined request again and store its report when it now passes."""
    row = await session.get(Rejected, id)
    if row is None:
        raise NotFound(f"no quarantined request #{id}")
    try:
        result = await replay(session, state.writer, state.settings.zone, row)
    except IngestUnavailable as exc:
        raise Unavailable(
            f"storage unavailable ({exc.cause}); retry later",
            headers={"Retry-After": str(state.settings.retry_after_seconds)},
        ) from None
    if result.report is None:
        raise InvalidCallback(errors=result.errors)
    delivery = await session.scalar(
        select(Delivery).where(
            Delivery.msgid == result.report.msgid, Delivery.mobile == result.report.mobile
        )
    )
    return DeliveryRead.model_validate(delivery)
