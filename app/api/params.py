"""Parsing of read-API parameters shared by several routes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from fastapi import Request

from app.core import mobiles
from app.core.errors import InvalidParameters


def invalid(field: str, message: str) -> InvalidParameters:
    return InvalidParameters(errors=[{"field": field, "message": message}])


def parse_instant(field: str, value: str | None, zone: ZoneInfo) -> dt.datetime | None:
    """An ISO 8601 parameter as an aware UTC instant; without an offset it is in `zone`."""
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except ValueError:
        raise invalid(field, "must be an ISO 8601 time, e.g. 2026-11-26T08:00:00+08:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:  # year 1 or 9999 pushed past the calendar by the zone offset
        raise invalid(field, "lies outside the years 1 to 9999") from None


def parse_mobile(value: str | None, field: str = "mobile") -> str | None:
    """A number in any accepted form as E.164 (422 when it is not a Taiwan mobile)."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > mobiles.MAX_LENGTH:
        raise invalid(field, mobiles.TOO_LONG)
    mobile = mobiles.normalize_mobile(value)
    if mobile is None:
        raise invalid(field, "not a Taiwan mobile number (e.g. 0912345678 or +886912345678)")
    return mobile


def reject_nul(request: Request) -> None:
    """Refuse a NUL character anywhere in the path or the parameters with a 422: no stored
    value contains one, and PostgreSQL refuses it in any text it is asked to compare."""
    if "\x00" in request.url.path or any(
        "\x00" in name or "\x00" in value for name, value in request.query_params.multi_items()
    ):
        raise invalid("request", "NUL characters are not allowed in the path or parameters")
