"""Pydantic response models of the read API (they are also its OpenAPI schemas)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.config import JsonDict

Outcome = Literal["delivered", "failed", "pending"]
MessageType = Literal["now", "scheduled"]


def utc_z(value: dt.datetime) -> str:
    """An instant as ISO 8601 in UTC with a `Z`, as every answer writes times."""
    value = value.astimezone(dt.UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


UtcTime = Annotated[dt.datetime, PlainSerializer(utc_z, return_type=str, when_used="json")]

DELIVERY_EXAMPLE: JsonDict = {
    "msgid": "208217564",
    "batch_id": "123456",
    "mobile": "+886922161529",
    "type": "now",
    "status": "DELIVRD",
    "statuscode": 1,
    "outcome": "delivered",
    "final": True,
    "inconsistent": False,
    "done_at": "2003-05-22T05:48:50Z",
    "first_received_at": "2003-05-22T05:48:52Z",
    "last_received_at": "2003-05-22T05:49:10Z",
    "reports": 2,
}


class DeliveryRead(BaseModel):
    """The current state of one message: one msgid to one mobile."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"example": DELIVERY_EXAMPLE})

    msgid: str = Field(description="The carrier's id of this message")
    batch_id: str = Field(description="The ID of the send (the first one reported)")
    mobile: str = Field(description="E.164 number, `+886912345678`")
    type: MessageType = Field(description="`now` (immediate send) or `scheduled`")
    status: str = Field(description="Status word of the newest report, upper case")
    statuscode: int = Field(description="1 success, 0 failure, as the gateway sent it")
    outcome: Outcome
    final: bool = Field(description="False only for non-final words (ENROUTE)")
    inconsistent: bool = Field(description="statuscode contradicts the status word")
    done_at: UtcTime = Field(description="When the message reached this state (UTC)")
    first_received_at: UtcTime
    last_received_at: UtcTime
    reports: int = Field(description="Distinct reports received for this delivery")


class DeliveryPage(BaseModel):
    """One page of deliveries, newest `done_at` first."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"items": [DELIVERY_EXAMPLE], "next_cursor": "q1Z3...signed-cursor"}
        }
    )

    items: list[DeliveryRead]
    next_cursor: str | None = Field(
        description="Pass it as `cursor`, with the same filters, for the next page; "
        "null on the last page"
    )


class HistoryItem(BaseModel):
    """One report of a delivery, as received."""

    model_config = ConfigDict(from_attributes=True)

    batch_id: str
    status: str
    statuscode: int
    outcome: Outcome
    inconsistent: bool
    done_at: UtcTime
    received_at: UtcTime
    source: str = Field(description="`callback`, or `poll` when learnt from CheckSMS")


class DeliveryDetail(DeliveryRead):
    """A delivery with every report that named it, oldest received first."""

    history: list[HistoryItem]


class ErrorRead(BaseModel):
    """Every error answer: a machine-readable code, sometimes more fields."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {"error": "not_found"}})

    error: str
    message: str | None = None


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorRead(ErrorRead):
    """A 422: what was wrong with which parameter or field."""

    errors: list[FieldError] = []


class AmbiguousRead(ErrorRead):
    mobiles: list[str]


class HealthRead(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyRead(BaseModel):
    status: str = Field(examples=["ready"])
    database: str
    schema_revision: str | None = None
    expected_revision: str
