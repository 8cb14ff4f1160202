"""Pydantic response models of the read API (they are also its OpenAPI schemas)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.config import JsonDict

from app.api.params import INSTANT_PATTERN, MOBILE_SCHEMA
from app.core.times import utc_z
from app.gateway.rules import MAX_NUMBERS, TEXT_PATTERN

Outcome = Literal["delivered", "failed", "pending"]
MessageType = Literal["now", "scheduled"]


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


# ---------------------------------------------------------------- aggregates

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


# ---------------------------------------------------------------- quarantine

RejectReason = Literal[
    "invalid_fields", "malformed_body", "unsupported_media_type", "storage_refused"
]


REJECTED_EXAMPLE: JsonDict = {
    "id": 17,
    "received_at": "2026-11-26T03:00:01Z",
    "last_seen_at": "2026-11-26T03:05:01Z",
    "count": 3,
    "reason": "invalid_fields",
    "errors": [{"field": "donetime", "message": "is more than 24 hours after receipt"}],
    "method": "POST",
    "query": "",
    "content_type": "application/x-www-form-urlencoded",
    "body": "ID=123456&msgid=208217564&type=Now&mobile=0922161529"
    "&donetime=2026%2F11%2F28+11%3A00%3A00&statuscode=1&statusstr=DELIVRD",
    "body_encoding": "utf-8",
    "replayed_at": None,
    "source_address": "203.0.113.7",
}


class RejectedRead(BaseModel):
    """A quarantined callback request, kept whole; identical requests share one row."""

    model_config = ConfigDict(json_schema_extra={"example": REJECTED_EXAMPLE})

    id: int
    received_at: UtcTime = Field(description="When it was first received (UTC)")
    last_seen_at: UtcTime = Field(description="When an identical request last arrived (UTC)")
    count: int = Field(description="How many identical requests arrived")
    reason: str = Field(
        description="`invalid_fields`, `malformed_body`, `unsupported_media_type` or "
        "`storage_refused` (the database refused a report that passed validation)"
    )
    errors: list[FieldError]
    method: str
    query: str = Field(description="The raw query string")
    content_type: str
    body: str = Field(description="The raw body: text, or base64 (see `body_encoding`)")
    body_encoding: Literal["utf-8", "base64"]
    replayed_at: UtcTime | None = Field(description="When a replay stored it; null if never")
    source_address: str = Field(description="The caller's address")


class RejectedPage(BaseModel):
    """One page of the quarantine, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "items": [REJECTED_EXAMPLE],
                "next_cursor": "x3Rk9Qp0bL2vYc7WmN4hZeyJwIjpbMTddLCJmIjoiNGQ5YjE2In0",
            }
        }
    )

    items: list[RejectedRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


# ---------------------------------------------------------------- sending

Language = Literal["english", "chinese"]


class MessageCreate(BaseModel):
    """A message to send now, or at `send_at`, through the gateway."""

    # The constraints are checked by the gateway rules (app.gateway.rules), which name every
    # problem at once; here they are only written into the OpenAPI document.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"numbers": ["0912345678", "+886922161529"], "text": "Your code is 123456"}
        },
    )

    numbers: list[Annotated[str, Field(json_schema_extra=dict(MOBILE_SCHEMA))]] = Field(
        description="1-80 Taiwan mobile numbers in any accepted form (`0912345678`, "
        "`+886912345678`, `886912345678`, `912345678`, with spaces, dots or dashes), "
        "each number at most once whatever its spelling",
        json_schema_extra={"minItems": 1, "maxItems": MAX_NUMBERS, "uniqueItems": True},
    )
    text: str = Field(
        description="English (ASCII only): 140 characters now, 160 scheduled; Chinese: 70 "
        "characters. No control characters but line breaks; not only whitespace",
        json_schema_extra={"minLength": 1, "maxLength": 160, "pattern": TEXT_PATTERN},
    )
    send_at: Annotated[str, Field(json_schema_extra={"pattern": INSTANT_PATTERN})] | None = Field(
        default=None,
        description="Schedules the send. ISO 8601 (`YYYY-MM-DDTHH:MM[:SS][offset]`; without an "
        "offset it is in the gateway zone), in the future but at most ten years ahead, on a "
        "5-minute step of the gateway zone with no seconds: for example tomorrow at 09:00 in "
        "Taipei is `<tomorrow's date>T09:00:00+08:00`",
    )
    language: Language | None = Field(
        default=None, description="Default: english for ASCII-only text, else chinese"
    )
    status_callback: str | None = Field(
        default=None,
        max_length=2048,
        description="A URL that also gets this send's delivery.updated events, signed with "
        "DLR_STATUS_CALLBACK_SECRET (a 422 while that is unset)",
        examples=["https://app.example.com/sms-status"],
    )
    include_suppressed: bool = Field(
        default=False,
        description="Send to suppressed numbers too (see /v1/suppressions); by default they "
        "are left out and listed in the answer's `suppressed`",
    )


class MessageRead(BaseModel):
    """A send this service made through the gateway."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "batch_id": "123456",
                "type": "scheduled",
                "numbers": ["+886912345678", "+886922161529"],
                "language": "english",
                "text": "Your code is 123456",
                "send_at": "2026-11-26T07:30:00Z",
                "created_at": "2026-11-26T07:12:03.5Z",
                "cancelled_at": None,
                "gateway_answer": "00,123456",
                "pending": 2,
                "next_check_at": "2026-11-26T08:00:00Z",
                "last_checked_at": None,
            }
        }
    )

    batch_id: str = Field(description="The gateway's ID of the send (the reports' `ID`)")
    type: MessageType = Field(description="`now` or `scheduled` (two ID sequences)")
    numbers: list[str] = Field(description="E.164, in the order given")
    language: Language
    text: str
    send_at: UtcTime | None = Field(description="When a scheduled send goes out")
    created_at: UtcTime
    cancelled_at: UtcTime | None
    gateway_answer: str = Field(description="The gateway's answer to the send, as received")
    pending: int = Field(description="Numbers without a final report yet (0 once cancelled)")
    next_check_at: UtcTime | None = Field(
        description="When reconciliation asks CheckSMS next; null when it no longer asks"
    )
    last_checked_at: UtcTime | None
    status_callback: str | None = Field(
        default=None, description="Where this send's delivery.updated events also go"
    )


class MessageSent(MessageRead):
    """A send just made: the recorded send, and the numbers left out of it."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "batch_id": "123456",
                "type": "now",
                "numbers": ["+886912345678"],
                "language": "english",
                "text": "Your code is 123456",
                "send_at": None,
                "created_at": "2026-11-26T07:12:03.5Z",
                "cancelled_at": None,
                "gateway_answer": "00,123456",
                "pending": 1,
                "next_check_at": "2026-11-26T07:42:03.5Z",
                "last_checked_at": None,
                "suppressed": ["+886922161529"],
            }
        }
    )

    suppressed: list[str] = Field(
        description="Numbers given but not sent to, as they are suppressed (E.164); "
        "`numbers` holds only those sent"
    )


class AllSuppressedRead(ErrorRead):
    """A 422 when every number of a send is suppressed: nothing was sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "all_numbers_suppressed",
                "message": "every number is suppressed; nothing was sent",
                "suppressed": ["+886922161529"],
            }
        }
    )

    suppressed: list[str]


class GatewayErrorRead(ErrorRead):
    """A 502 or 504: the gateway refused, could not be reached, or answered nonsense."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "error": "gateway_error",
                "code": "30",
                "meaning": "the account has no messages left to send",
                "interface": "SendSMS",
                "answer": "30",
            }
        },
    )

    code: str | None = None
    meaning: str | None = None
    interface: str | None = None
    answer: str | None = None
