"""Numbers and suppressions: which numbers keep failing, and not sending to them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from app.api.auth import require_manage_key
from app.api.errors import error_responses
from app.api.params import (
    MOBILE_SCHEMA,
    FilteredCursorQuery,
    check_cursor,
    instant_query,
    parse_mobile,
    parse_range,
)
from app.api.schemas.numbers import NumberDetail, NumberPage, NumberRead, SuppressionCreate
from app.core.errors import NotFound
from app.gateway.suppressions import lift, suppress
from app.read.csvexport import CsvResponse, csv_chunks
from app.read.cursors import cursor_key
from app.read.numbers import (
    CSV_COLUMNS,
    NumberFilters,
    find_numbers,
    find_suppressions,
    get_number,
    number_view,
    stream_numbers,
)
from app.state import SessionDep, SettingsDep, StateDep

router = APIRouter(prefix="/v1", tags=["numbers"])

MobilePath = Annotated[
    str,
    Path(
        description="A Taiwan mobile number in any accepted form (`0912345678`, "
        "`+886912345678`, `886912345678`, `912345678`, with spaces, dots or dashes)",
        examples=["0912345678"],
        json_schema_extra=dict(MOBILE_SCHEMA),
    ),
]


def number_filters(
    settings: SettingsDep,
    failure_streak_min: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**31 - 1,
            description="Only numbers whose failure streak is at least this",
            examples=[3],
        ),
    ] = None,
    suppressed: Annotated[
        bool | None,
        Query(description="`true`: only suppressed numbers; `false`: only the others"),
    ] = None,
    last_done_from: Annotated[
        str | None,
        instant_query(
            "Only numbers whose latest `done_at` is at or after this time. ",
            "2026-11-01T00:00:00+08:00",
        ),
    ] = None,
    last_done_to: Annotated[
        str | None,
        instant_query(
            "Only numbers whose latest `done_at` is before this time (exclusive). ",
            "2026-12-01T00:00:00+08:00",
        ),
    ] = None,
) -> NumberFilters:
    """Parse the filters shared by the list and the CSV export."""
    start, end = parse_range(
        settings.zone, ("last_done_from", last_done_from), ("last_done_to", last_done_to)
    )
    return NumberFilters(failure_streak_min, suppressed, start, end)


FiltersDep = Annotated[NumberFilters, Depends(number_filters)]
NumberLimitQuery = Annotated[
    int, Query(ge=1, le=1000, description="Numbers per page, 1-1000", examples=[100])
]


@router.get(
    "/numbers",
    response_model=NumberPage,
    summary="Numbers by failure streak",
    responses=error_responses(401, 422, 503),
)
async def list_numbers(
    settings: SettingsDep,
    session: SessionDep,
    filters: FiltersDep,
    limit: NumberLimitQuery = 100,
    cursor: FilteredCursorQuery = None,
) -> dict[str, Any]:
    """Which numbers keep failing: every number that matches the filters, the highest
    `failure_streak` first, then by `mobile`.

    Following `next_cursor` until it is null visits every number that matched when the
    walk began once, unless its streak changed during the walk."""
    key = cursor_key(settings)
    rows, next_cursor = await find_numbers(
        session, filters, limit=limit, cursor=check_cursor(cursor), key=key
    )
    return {"items": [number_view(row) for row in rows], "next_cursor": next_cursor}


CSV_EXAMPLE = (
    ",".join(CSV_COLUMNS) + "\r\n"
    "+886912345678,12,7,5,0,2026-10-02T01:15:09Z,2026-11-26T03:09:58Z,UNDELIV,failed,"
    "2026-11-19T08:40:12Z,5,automatic,5 failed deliveries in a row,2026-11-26T03:10:00Z\r\n"
)


@router.get(
    "/numbers.csv",
    response_class=CsvResponse,
    summary="Export numbers as CSV",
    responses={
        200: {
            "description": "Every matching number, one per line, in the order of the list",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE}},
        },
        **error_responses(401, 422, 503),
    },
)
async def export_numbers(state: StateDep, filters: FiltersDep) -> CsvResponse:
    """Download every number that matches the filters (those of the list; no `limit` or
    `cursor`) as CSV: the Number's fields, its `suppressed` object as the three columns
    `suppressed_source`, `suppressed_reason` and `suppressed_since` (empty when it is not
    suppressed). Written like the deliveries export (UTF-8, RFC 4180, times in UTC, cells
    a spreadsheet would run as a formula prefixed with `'`), streamed as it is read."""
    batches = stream_numbers(state.engine, filters)
    # The query runs before the 200, so an unreachable database is an error answer.
    first = await anext(batches, None)
    return CsvResponse(csv_chunks(CSV_COLUMNS, first, batches), filename="numbers.csv")


@router.get(
    "/numbers/{mobile}",
    response_model=NumberDetail,
    summary="One number with its latest deliveries",
    responses=error_responses(401, 404, 422, 503),
)
async def read_number(session: SessionDep, mobile: MobilePath) -> dict[str, Any]:
    """A number's summary and its latest 20 deliveries; 404 if it was never seen nor
    suppressed."""
    e164 = parse_mobile(mobile)
    assert e164 is not None
    number = await get_number(session, e164)
    if number is None:
        raise NotFound("no delivery to this number and no suppression of it")
    return number


@router.get(
    "/suppressions",
    response_model=NumberPage,
    summary="Suppressed numbers",
    responses=error_responses(401, 422, 503),
)
async def list_suppressions(
    settings: SettingsDep,
    session: SessionDep,
    limit: NumberLimitQuery = 100,
    cursor: FilteredCursorQuery = None,
) -> dict[str, Any]:
    """The numbers no message goes to, latest suppressed first."""
    key = cursor_key(settings)
    rows, next_cursor = await find_suppressions(
        session, limit=limit, cursor=check_cursor(cursor), key=key
    )
    return {"items": [number_view(row) for row in rows], "next_cursor": next_cursor}


@router.put(
    "/suppressions/{mobile}",
    response_model=NumberRead,
    summary="Suppress a number",
    dependencies=[Depends(require_manage_key)],
    responses=error_responses(400, 401, 403, 422, 503),
)
async def suppress_number(
    state: StateDep, session: SessionDep, mobile: MobilePath, body: SuppressionCreate
) -> dict[str, Any]:
    """Stop sending to a number: POST /v1/messages leaves it out (unless
    `include_suppressed`). A number suppressed automatically becomes a manual suppression;
    one already suppressed by hand keeps its `since` and takes the new reason. With
    DLR_SEND_API_KEYS set, needs one of its keys."""
    e164 = parse_mobile(mobile)
    assert e164 is not None
    now = dt.datetime.now(dt.UTC)
    number = await suppress(session, e164, body.reason, now, state.metrics)
    return number_view(number)


@router.delete(
    "/suppressions/{mobile}",
    response_model=NumberRead,
    summary="Lift a suppression",
    dependencies=[Depends(require_manage_key)],
    responses=error_responses(401, 403, 404, 422, 503),
)
async def lift_suppression(
    state: StateDep, session: SessionDep, mobile: MobilePath
) -> dict[str, Any]:
    """Send to a number again (its suppression manual or automatic): its `failure_streak`
    starts again from 0. 404 if it is not suppressed. With DLR_SEND_API_KEYS set, needs
    one of its keys."""
    e164 = parse_mobile(mobile)
    assert e164 is not None
    now = dt.datetime.now(dt.UTC)
    number = await lift(session, e164, now, state.metrics)
    if number is None:
        raise NotFound("this number is not suppressed")
    return number_view(number)
