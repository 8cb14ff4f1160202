"""Models of the aggregates: one batch's summary, and the stats by local hour or day."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.config import JsonDict

from app.api.schemas.common import UtcTime

BY_STATUS_DESCRIPTION = "Deliveries by the status word of their current state"


class BatchRead(BaseModel):
    """The deliveries named by the reports of one batch ID, by their current state."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "batch_id": "123456",
                "deliveries": 80,
                "delivered": 76,
                "failed": 3,
                "pending": 1,
                "by_status": {"DELIVRD": 76, "ENROUTE": 1, "EXPIRED": 2, "UNDELIV": 1},
                "first_done_at": "2026-11-26T01:02:03Z",
                "last_done_at": "2026-11-26T01:09:41Z",
            }
        }
    )

    batch_id: str = Field(description="The ID the gateway returned for the send")
    deliveries: int = Field(description="Messages (msgid to mobile) any report of this ID names")
    delivered: int
    failed: int
    pending: int = Field(
        description="Deliveries not final yet (ENROUTE), plus numbers of a recorded send "
        "without any report yet"
    )
    by_status: dict[str, int] = Field(description=BY_STATUS_DESCRIPTION)
    first_done_at: UtcTime | None = Field(
        description="Earliest done_at of these deliveries (UTC); null before the first report"
    )
    last_done_at: UtcTime | None = Field(
        description="Latest done_at of these deliveries (UTC); null before the first report"
    )


class CountsRead(BaseModel):
    """Deliveries by outcome and status word."""

    deliveries: int
    delivered: int
    failed: int
    pending: int
    by_status: dict[str, int] = Field(description=BY_STATUS_DESCRIPTION)
    delivery_rate: float | None = Field(description="delivered / deliveries; null when none")


def _local_iso(value: dt.datetime) -> str:
    return value.isoformat()


LocalTime = Annotated[dt.datetime, PlainSerializer(_local_iso, return_type=str, when_used="json")]


class _BucketStart(BaseModel):
    start: LocalTime = Field(
        description="First instant of the bucket, written in `tz` with its offset",
        examples=["2026-11-26T00:00:00+08:00"],
    )


class BucketRead(CountsRead, _BucketStart):
    """One local hour or day; `start` comes first, then its counts."""


STATS_EXAMPLE: JsonDict = {
    "from": "2026-11-25T16:00:00Z",
    "to": "2026-11-26T16:00:00Z",
    "interval": "day",
    "tz": "Asia/Taipei",
    "totals": {
        "deliveries": 4,
        "delivered": 3,
        "failed": 1,
        "pending": 0,
        "by_status": {"DELIVRD": 3, "UNDELIV": 1},
        "delivery_rate": 0.75,
    },
    "buckets": [
        {
            "start": "2026-11-26T00:00:00+08:00",
            "deliveries": 4,
            "delivered": 3,
            "failed": 1,
            "pending": 0,
            "by_status": {"DELIVRD": 3, "UNDELIV": 1},
            "delivery_rate": 0.75,
        }
    ],
}


class StatsRead(BaseModel):
    """Deliveries by done_at in [from, to): totals and one bucket per local hour or day."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"example": STATS_EXAMPLE})

    from_: UtcTime = Field(alias="from", description="Start of the range, inclusive (UTC)")
    to: UtcTime = Field(description="End of the range, exclusive (UTC)")
    interval: Literal["hour", "day"]
    tz: str = Field(description="The IANA zone whose local hours or days cut the buckets")
    totals: CountsRead
    buckets: list[BucketRead] = Field(description="Every bucket of the range, empty ones too")
