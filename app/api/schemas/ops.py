"""Models of the probes: liveness and readiness."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HealthRead(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyRead(BaseModel):
    status: str = Field(examples=["ready"])
    database: str
    schema_revision: str | None = None
    expected_revision: str
