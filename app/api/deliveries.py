"""Read API over deliveries: the filtered list, its CSV export, one delivery."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from app.api.errors import error_responses
from app.api.params import (
    IDENTIFIER_PATTERN,
    MOBILE_SCHEMA,
    STATUS_PATTERN,
    FilteredCursorQuery,
    check_cursor,
    check_identifier,
    check_status,
    instant_query,
    parse_mobile,
    parse_range,
    pattern,
)
from app.api.schemas.common import MessageType, Outcome
from app.api.schemas.deliveries import AmbiguousRead, DeliveryDetail, DeliveryPage, DeliveryRead
from app.read.csvexport import CsvResponse, csv_chunks
from app.read.cursors import cursor_key
from app.read.queries import DeliveryFilters, find_deliveries, get_delivery, stream_deliveries
from app.state import SessionDep, SettingsDep, StateDep

router = APIRouter(prefix="/v1", tags=["deliveries"])

CSV_FIELDS = list(DeliveryRead.model_fields)

MobileQuery = Annotated[
    str | None,
    Query(
        description="A Taiwan mobile number in any accepted form "
        "(`0912345678`, `+886912345678`, `886912345678`, `912345678`, with spaces, dots or "
        "dashes)",
        examples=["0922161529"],
        json_schema_extra=dict(MOBILE_SCHEMA),
    ),
]


async def delivery_filters(
    settings: SettingsDep,
    mobile: MobileQuery = None,
    msgid: Annotated[
        str | None,
        Query(
            description="The carrier's message id",
            examples=["208217564"],
            json_schema_extra=pattern(IDENTIFIER_PATTERN),
        ),
    ] = None,
    batch_id: Annotated[
        str | None,
        Query(
            description="The `ID` the gateway returned for the send",
            examples=["123456"],
            json_schema_extra=pattern(IDENTIFIER_PATTERN),
        ),
    ] = None,
    status: Annotated[
        list[str] | None,
        Query(
            description="Status word of the current state, any case (`DELIVRD`, `EXPIRED`, "
            "`UNDELIV`, ...). Repeat it to match any of several: "
            "`?status=EXPIRED&status=UNDELIV`",
            examples=[["EXPIRED", "UNDELIV"]],
            json_schema_extra={"items": {"type": "string", "pattern": STATUS_PATTERN}},
        ),
    ] = None,
    outcome: Annotated[
        Outcome | None,
        Query(description="`delivered`, `failed` or `pending` (not final yet)"),
    ] = None,
    kind: Annotated[
        MessageType | None,
        Query(alias="type", description="`now` (immediate sends) or `scheduled`"),
    ] = None,
    done_from: Annotated[
        str | None,
        instant_query(
            "Only deliveries whose `done_at` is at or after this time. ",
            "2026-11-01T00:00:00+08:00",
        ),
    ] = None,
    done_to: Annotated[
        str | None,
        instant_query(
            "Only deliveries whose `done_at` is before this time (exclusive). ",
            "2026-12-01T00:00:00+08:00",
        ),
    ] = None,
) -> DeliveryFilters:
    """Parse and normalise the filters shared by the list and the CSV export."""
    words = {check_status(word) for word in status or ()}
    start, end = parse_range(settings.zone, ("done_from", done_from), ("done_to", done_to))
    return DeliveryFilters(
        mobile=parse_mobile(mobile),
        msgid=check_identifier("msgid", msgid),
        batch_id=check_identifier("batch_id", batch_id),
        statuses=tuple(sorted(words)),
        outcome=outcome,
        type=kind,
        done_from=start,
        done_to=end,
    )


FiltersDep = Annotated[DeliveryFilters, Depends(delivery_filters)]


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    summary="List deliveries",
    responses=error_responses(401, 422, 503),
)
async def list_deliveries(
    settings: SettingsDep,
    session: SessionDep,
    filters: FiltersDep,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="Deliveries per page, 1-1000", examples=[100])
    ] = 100,
    cursor: FilteredCursorQuery = None,
) -> dict[str, Any]:
    """Page through the deliveries that match every given filter.

    Newest `done_at` first; deliveries with the same `done_at` by `msgid`, then `mobile`.
    Following `next_cursor` until it is null visits every delivery that matched when the
    walk began exactly once, even while new reports arrive (a delivery whose state changes
    during the walk may move to a page already read, or show up twice)."""
    key = cursor_key(settings)
    items, next_cursor = await find_deliveries(
        session, filters, limit=limit, cursor=check_cursor(cursor), key=key
    )
    return {"items": items, "next_cursor": next_cursor}


CSV_EXAMPLE = (
    ",".join(CSV_FIELDS) + "\r\n"
    "208217564,123456,+886922161529,now,DELIVRD,1,delivered,true,false,"
    "2003-05-22T05:48:50Z,2003-05-22T05:48:52Z,2003-05-22T05:49:10Z,2\r\n"
)


@router.get(
    "/deliveries.csv",
    response_class=CsvResponse,
    summary="Export deliveries as CSV",
    responses={
        200: {
            "description": "Every matching delivery, one per line, in the order of the list",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE}},
        },
        **error_responses(401, 422, 503),
    },
)
async def export_deliveries(state: StateDep, filters: FiltersDep) -> CsvResponse:
    """Download every delivery that matches the filters (those of the list; no `limit`
    or `cursor`) as a CSV file.

    UTF-8, RFC 4180 (CRLF line ends; a field holding a comma, a quote or a line break is
    quoted, quotes doubled), a header row of the Delivery field names in the order of the
    JSON, booleans `true`/`false`, times ISO 8601 in UTC (`2003-05-22T05:48:50Z`). The
    file is streamed as it is read, so an export of millions of rows works.

    Spreadsheet safety: a text cell that a spreadsheet would run as a formula, that is one
    starting with `=`, `@`, a tab or a carriage return, or with `+` or `-` followed by
    anything but a plain number, is written with a leading `'`. E.164 numbers
    (`+886922161529`) and every other value are written unchanged."""
    batches = stream_deliveries(state.engine, filters, CSV_FIELDS)
    # Run the query before answering 200, so an unreachable database is an error answer
    # rather than a truncated file.
    first = await anext(batches, None)
    return CsvResponse(csv_chunks(CSV_FIELDS, first, batches), filename="deliveries.csv")


@router.get(
    "/deliveries/{msgid:path}",
    response_model=DeliveryDetail,
    summary="One delivery with its history",
    responses={
        **error_responses(401, 404, 422),
        409: {"model": AmbiguousRead, "description": "Several numbers share this msgid"},
    },
)
async def read_delivery(
    session: SessionDep,
    msgid: Annotated[
        str,
        Path(
            description="The carrier's message id",
            examples=["208217564"],
            json_schema_extra=pattern(IDENTIFIER_PATTERN),
        ),
    ],
    mobile: MobileQuery = None,
) -> dict[str, Any]:
    """Show the current state of one message and every report received for it."""
    check_identifier("msgid", msgid)
    return await get_delivery(session, msgid, parse_mobile(mobile))
