"""Models of sending: a message to send, a recorded send, and the gateway's refusals."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.params import INSTANT_PATTERN, MOBILE_SCHEMA
from app.api.schemas.common import ErrorRead, MessageType, UtcTime
from app.gateway.rules import MAX_NUMBERS, TEXT_PATTERN

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
    # strict: "yes" or "1" for it is a 422, not a send to suppressed numbers
    include_suppressed: bool = Field(
        default=False,
        strict=True,
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
