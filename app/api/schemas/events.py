"""Models of the outbound events: subscriptions (destinations) and the event log."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from app.api.schemas.common import Outcome, UtcTime

EventType = Literal["delivery.updated", "callback.rejected"]
EventStatus = Literal["pending", "delivered", "failed"]
SubscriptionId = Annotated[str, Field(pattern=r"^sub_[0-9a-f]{24}$", max_length=28)]
_WORD_RE = re.compile(r"[A-Za-z0-9_]{1,16}")
_BATCH_RE = re.compile(r"[!-~]{1,64}")

URL_DESCRIPTION = (
    "http:// or https://, without user info; its host must not resolve to a "
    "private, loopback, link-local, multicast or unspecified address "
    "(unless DLR_WEBHOOK_ALLOW_PRIVATE=true)"
)
URL_EXAMPLE = ["https://hooks.example.com/sms"]


class SubscriptionFilter(BaseModel):
    """Which deliveries' delivery.updated events to send; every given part must match."""

    model_config = ConfigDict(extra="forbid")

    outcome: list[Outcome] | None = Field(
        default=None, max_length=3, description="Only deliveries now of these outcomes"
    )
    status: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,16}$")]] | None = Field(
        default=None, max_length=50, description="Only deliveries now in these status words"
    )
    batch_id: str | None = Field(
        default=None, pattern=r"^[!-~]{1,64}$", description="Only deliveries of this send's `ID`"
    )

    @field_validator("status")
    @classmethod
    def _check_words(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if any(not _WORD_RE.fullmatch(word) for word in value):
            raise ValueError("status words are 1-16 of A-Z, 0-9 and _")
        return sorted({word.upper() for word in value})

    @field_validator("batch_id")
    @classmethod
    def _check_batch(cls, value: str | None) -> str | None:
        if value is not None and not _BATCH_RE.fullmatch(value):
            raise ValueError("a batch ID is 1-64 printable characters without spaces")
        return value

    def stored(self) -> dict[str, Any] | None:
        """The filter as kept: only the parts given, or None for no filter."""
        parts = self.model_dump(exclude_none=True)
        if "outcome" in parts:
            parts["outcome"] = sorted(set(parts["outcome"]))
        return parts or None


EventList = Annotated[list[EventType], Field(min_length=1, max_length=2)]


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "url": "https://hooks.example.com/sms",
                "events": ["delivery.updated"],
                "filter": {"outcome": ["failed"]},
                "description": "failed deliveries to the CRM",
            }
        },
    )

    url: str = Field(max_length=2048, description=URL_DESCRIPTION, examples=URL_EXAMPLE)
    events: EventList | None = Field(default=None, description="Event types; default all")
    filter: SubscriptionFilter | None = None
    description: str | None = Field(default=None, max_length=500)


class SubscriptionUpdate(BaseModel):
    """Any of the fields; those not given stay as they are."""

    model_config = ConfigDict(extra="forbid")

    # Absent leaves it; null is refused (the schema does not offer it).
    url: Annotated[str, Field(max_length=2048)] | SkipJsonSchema[None] = Field(
        default=None, description=URL_DESCRIPTION, examples=URL_EXAMPLE
    )
    events: EventList | None = None
    filter: SubscriptionFilter | None = None
    description: str | None = Field(default=None, max_length=500)
    enabled: Annotated[bool, Strict()] | SkipJsonSchema[None] = None


SUBSCRIPTION_EXAMPLE: JsonDict = {
    "id": "sub_5f0c2a9e4b7d1c3a8e6f9b2d",
    "url": "https://hooks.example.com/sms",
    "events": ["delivery.updated"],
    "filter": {"outcome": ["failed"]},
    "description": "failed deliveries to the CRM",
    "enabled": True,
    "created_at": "2026-11-30T08:00:00Z",
}


class SubscriptionRead(BaseModel):
    """A destination of events (its secret only at creation and from its own endpoint)."""

    model_config = ConfigDict(json_schema_extra={"example": SUBSCRIPTION_EXAMPLE})

    id: str
    url: str
    events: list[EventType]
    filter: dict[str, Any] | None
    description: str | None
    enabled: bool
    created_at: UtcTime
    disabled_reason: str | None = Field(
        default=None, description="Why it is disabled (410 Gone from the receiver, or a PATCH)"
    )


class SubscriptionCreated(SubscriptionRead):
    model_config = ConfigDict(
        json_schema_extra={"example": {**SUBSCRIPTION_EXAMPLE, "secret": "whsec_MfKQ9r8Gkm..."}}
    )

    secret: str = Field(description="The signing secret (Standard Webhooks, `whsec_...`)")


class SubscriptionPage(BaseModel):
    items: list[SubscriptionRead]
    next_cursor: str | None


class SecretRead(BaseModel):
    secret: str = Field(examples=["whsec_MfKQ9r8GkmWbYv3tA1pZ0cVx7nH2sD4e"])


EVENT_EXAMPLE: JsonDict = {
    "id": 4821,
    "event_id": "msg_0193a8b2c4d1e0f9a8b7c6d5e4f3",
    "type": "delivery.updated",
    "created_at": "2026-11-30T08:00:01.25Z",
    "subscription_id": "sub_5f0c2a9e4b7d1c3a8e6f9b2d",
    "url": "https://hooks.example.com/sms",
    "status": "pending",
    "attempts": 2,
    "next_attempt_at": "2026-11-30T08:05:06Z",
    "last_attempt_at": "2026-11-30T08:00:06Z",
    "last_status_code": 500,
    "last_error": "HTTP 500: upstream unavailable",
    "payload": {"type": "delivery.updated", "timestamp": "2026-11-30T08:00:01.25Z", "data": {}},
}


class EventRead(BaseModel):
    """One event to one destination, and how sending it went."""

    model_config = ConfigDict(json_schema_extra={"example": EVENT_EXAMPLE})

    id: int = Field(description="This row's id (for POST /v1/events/{id}/retry)")
    event_id: str = Field(description="The event's id: the webhook-id header")
    type: EventType
    created_at: UtcTime
    subscription_id: str | None = Field(description="null for a send's status_callback")
    url: str
    status: EventStatus
    attempts: int
    next_attempt_at: UtcTime | None
    last_attempt_at: UtcTime | None
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any] = Field(description="The body sent")


class EventPage(BaseModel):
    items: list[EventRead]
    next_cursor: str | None
