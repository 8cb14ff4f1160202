"""What the models of several resources share: the outcome and type words, how an instant
is written, and the error answers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer

from app.core.times import utc_z

Outcome = Literal["delivered", "failed", "pending"]
MessageType = Literal["now", "scheduled"]

UtcTime = Annotated[dt.datetime, PlainSerializer(utc_z, return_type=str, when_used="json")]


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
