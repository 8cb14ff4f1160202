"""Read API over aggregates: per-batch summaries and time-bucketed stats."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from app.api.errors import error_responses
from app.api.params import (
    IDENTIFIER_PATTERN,
    INSTANT_DESCRIPTION,
    INSTANT_PATTERN,
    check_identifier,
    invalid,
    parse_instant,
    parse_zone,
    pattern,
    zone_names,
)
from app.api.schemas.common import MessageType
from app.api.schemas.stats import BatchRead, StatsRead
from app.core.errors import NotFound
from app.read.aggregates import batch_summary, delivery_stats
from app.read.buckets import MAX_BUCKETS, TooManyBuckets
from app.state import SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["aggregates"])

DEFAULT_RANGE = dt.timedelta(hours=24)

TypeQuery = Annotated[
    MessageType | None,
    Query(
        alias="type",
        description="Only immediate (`now`) or scheduled (`scheduled`) sends; the gateway "
        "numbers the two with separate ID sequences",
        examples=["now"],
    ),
]


@router.get(
    "/batches/{batch_id:path}",
    response_model=BatchRead,
    summary="Summary of one send (batch ID)",
    description="The deliveries named by at least one report carrying this ID (a delivery "
    "keeps its first ID, but a later report with another ID names it too), counted by their "
    "current state. `pending` counts deliveries that are not final yet, plus the numbers of a "
    "send made through `POST /v1/messages` that have no report at all yet. 404 when neither "
    "a report nor a recorded send names the ID.",
    responses=error_responses(401, 404, 422),
)
async def read_batch(
    session: SessionDep,
    batch_id: Annotated[
        str,
        Path(
            description="The ID the gateway returned for the send",
            examples=["123456"],
            json_schema_extra=pattern(IDENTIFIER_PATTERN),
        ),
    ],
    message_type: TypeQuery = None,
) -> dict[str, Any]:
    """Count the deliveries named by any report of a batch ID, by their current state."""
    check_identifier("batch_id", batch_id)
    summary = await batch_summary(session, batch_id, message_type)
    if summary is None:
        raise NotFound(f"no report or recorded send names batch ID {batch_id!r}")
    return summary


def stats_range(
    start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """[from, to) with the defaults filled in: the 24 hours before `to`, `to` being now."""
    if end is None:
        end = now
    if start is None:
        start = end - DEFAULT_RANGE
    if start >= end:
        raise invalid("from", "must be before to")
    return start, end


@router.get(
    "/stats",
    response_model=StatsRead,
    summary="Deliveries by local hour or day",
    description="Deliveries by `done_at` in [`from`, `to`), by their current state: totals "
    "and one bucket per local hour or day of `tz`, empty buckets included. The first bucket "
    "holds `from`, the last holds the instant before `to`; a local hour repeated by a "
    "daylight-saving switch is two buckets with different offsets. A range may need at most "
    f"{MAX_BUCKETS:,} buckets. `delivery_rate` is delivered / deliveries, or null.",
    responses=error_responses(401, 422),
)
async def read_stats(
    settings: SettingsDep,
    session: SessionDep,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            description="Start, inclusive. " + INSTANT_DESCRIPTION + " (DLR_GATEWAY_TIMEZONE). "
            "Default: 24 hours before `to`",
            examples=["2026-11-26T00:00:00+08:00"],
            json_schema_extra=pattern(INSTANT_PATTERN),
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(
            description="End, exclusive (same rules as `from`). Default: now",
            examples=["2026-11-27T00:00:00+08:00"],
            json_schema_extra=pattern(INSTANT_PATTERN),
        ),
    ] = None,
    interval: Annotated[
        Literal["hour", "day"],
        Query(description="Bucket size: a local hour or a local day of `tz`"),
    ] = "hour",
    tz: Annotated[
        str | None,
        Query(
            description="IANA zone whose local hours or days cut the buckets "
            "(a daylight-saving day is 23 or 25 hours long). Default: the gateway zone",
            examples=["Asia/Taipei"],
            json_schema_extra={"enum": zone_names()},
        ),
    ] = None,
    message_type: TypeQuery = None,
) -> dict[str, Any]:
    """Count deliveries by done_at in [from, to): totals and one bucket per local interval."""
    zone_name = settings.gateway_timezone if tz is None else tz
    zone = parse_zone(zone_name)
    try:
        start, end = stats_range(
            parse_instant("from", from_, settings.zone),
            parse_instant("to", to, settings.zone),
            dt.datetime.now(dt.UTC),
        )
        stats = await delivery_stats(session, start, end, interval, zone, message_type)
    except TooManyBuckets as exc:
        raise invalid("interval", str(exc)) from None
    except OverflowError:
        raise invalid("from", "the range must lie within the years 1 to 9999") from None
    return {"from": start, "to": end, "interval": interval, "tz": zone_name, **stats}
