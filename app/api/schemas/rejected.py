"""Models of the quarantine: a rejected callback request, kept whole, and a page of them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.api.schemas.common import FieldError, UtcTime

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
