"""Models of the numbers: what the deliveries to a number add up to, and its suppression."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from app.api.schemas.common import Outcome, UtcTime
from app.api.schemas.deliveries import DELIVERY_EXAMPLE, DeliveryRead
from app.gateway.suppressions import REASON_MAX_LENGTH

SUPPRESSION_EXAMPLE: JsonDict = {
    "source": "automatic",
    "reason": "5 failed deliveries in a row",
    "since": "2026-11-26T03:10:00Z",
}
NUMBER_EXAMPLE: JsonDict = {
    "mobile": "+886912345678",
    "deliveries": 12,
    "delivered": 7,
    "failed": 5,
    "pending": 0,
    "first_done_at": "2026-10-02T01:15:09Z",
    "last_done_at": "2026-11-26T03:09:58Z",
    "last_status": "UNDELIV",
    "last_outcome": "failed",
    "last_delivered_at": "2026-11-19T08:40:12Z",
    "failure_streak": 5,
    "suppressed": SUPPRESSION_EXAMPLE,
}


class SuppressionRead(BaseModel):
    """Why and since when no message goes to a number."""

    model_config = ConfigDict(json_schema_extra={"example": SUPPRESSION_EXAMPLE})

    source: Literal["automatic", "manual"] = Field(
        description="`automatic`: its failure streak reached DLR_SUPPRESS_AFTER_FAILURES; "
        "`manual`: suppressed through PUT /v1/suppressions/{mobile} or the dashboard"
    )
    reason: str | None
    since: UtcTime


class NumberRead(BaseModel):
    """What the deliveries to one number add up to, and whether it is suppressed."""

    model_config = ConfigDict(json_schema_extra={"example": NUMBER_EXAMPLE})

    mobile: str = Field(description="E.164, `+886912345678`")
    deliveries: int = Field(description="Messages (msgids) to this number")
    delivered: int
    failed: int
    pending: int = Field(description="Deliveries not final yet (ENROUTE)")
    first_done_at: UtcTime | None = Field(description="Earliest done_at; null without deliveries")
    last_done_at: UtcTime | None = Field(description="Latest done_at; null without deliveries")
    last_status: str | None = Field(description="Status word of the latest delivery")
    last_outcome: Outcome | None = Field(description="Outcome of the latest delivery")
    last_delivered_at: UtcTime | None = Field(
        description="done_at of the latest delivered delivery; null if none was delivered"
    )
    failure_streak: int = Field(
        description="Final failed deliveries done after the latest delivered one (and after "
        "the latest lift of a suppression)"
    )
    suppressed: SuppressionRead | None = Field(description="null when messages go to it")


class NumberDetail(NumberRead):
    """A number with its latest deliveries."""

    model_config = ConfigDict(
        json_schema_extra={"example": {**NUMBER_EXAMPLE, "recent": [DELIVERY_EXAMPLE]}}
    )

    recent: list[DeliveryRead] = Field(description="Its latest 20 deliveries, newest first")


class NumberPage(BaseModel):
    """One page of numbers."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"items": [NUMBER_EXAMPLE], "next_cursor": "q1Z3...signed-cursor"}
        }
    )

    items: list[NumberRead]
    next_cursor: str | None = Field(
        description="Pass it as `cursor`, with the same filters, for the next page; "
        "null on the last page"
    )


class SuppressionCreate(BaseModel):
    """A suppression by hand."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"reason": "the customer asked us to stop"}},
    )

    reason: str = Field(
        min_length=1,
        max_length=REASON_MAX_LENGTH,
        description=f"Why, for whoever looks later: 1-{REASON_MAX_LENGTH} printable characters",
    )

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("must be printable text (no line breaks or control characters)")
        return value
