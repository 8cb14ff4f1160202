"""Parameters of the API: each one's pattern (put in the OpenAPI document as it is checked),
and the parsing shared by several routes."""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from fastapi import Query, Request

from app.core import mobiles
from app.core.errors import InvalidParameters
from app.core.mobiles import INPUT_PATTERN as MOBILE_PATTERN
from app.core.settings import Settings
from app.events.urls import BadUrl, check_destination

# Patterns use explicit character classes (never \d, \s or \w) so that the OpenAPI
# document's readers (ECMA-262, Rust and Python engines) all agree with the server.

# Years 2 to 9998: an instant in any zone stays inside the calendar once written in UTC.
_YEAR = r"(?:000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])"
_MONTH_DAY = (
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|(?:0[13578]|1[02])-31)"
)
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])"
#: An ISO 8601 date, or date and time with an optional offset (`T` or a space between).
INSTANT_PATTERN = rf"^{_DATE}(?:[T ]{_TIME}{_OFFSET}?)?$"
INSTANT_DESCRIPTION = (
    "ISO 8601: `2026-11-26`, `2026-11-26T08:00`, `2026-11-26T08:00:00+08:00` or with `Z`; "
    "without an offset it is in the gateway zone"
)
#: A message id or batch ID as stored: 1-64 characters, no spaces or control characters.
IDENTIFIER_PATTERN = r"^[^\x00-\x20\x7f-\x9f]{1,64}$"
#: A status word: 1-16 letters, digits or underscores, any case.
STATUS_PATTERN = r"^[A-Za-z0-9_]{1,16}$"
#: A cursor this service issued: a position and its signature, base64url, dot separated.
CURSOR_PATTERN = r"^[.]?[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$"
CURSOR_MAX_LENGTH = 1024
#: The schema of a mobile number parameter, as checked.
MOBILE_SCHEMA = {"pattern": MOBILE_PATTERN, "maxLength": mobiles.MAX_LENGTH}

_INSTANT_RE = re.compile(INSTANT_PATTERN)
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)
_STATUS_RE = re.compile(STATUS_PATTERN)
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def invalid(field: str, message: str) -> InvalidParameters:
    return InvalidParameters(errors=[{"field": field, "message": message}])


def pattern(value: str, max_length: int | None = None) -> dict[str, str | int]:
    """`json_schema_extra` of a parameter checked against the pattern `value` (and a length)."""
    return {"pattern": value} if max_length is None else {"pattern": value, "maxLength": max_length}


#: The page size and cursor of a list without filters of its own to repeat.
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="Items per page")]
CursorQuery = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page, with the same filters",
        json_schema_extra=pattern(CURSOR_PATTERN, CURSOR_MAX_LENGTH),
    ),
]
#: The cursor of a filtered list (deliveries, numbers).
FilteredCursorQuery = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page. Send the same filters with it "
        "(only `limit` may change); a cursor from other filters, or altered, is a 422",
        json_schema_extra=pattern(CURSOR_PATTERN, CURSOR_MAX_LENGTH),
    ),
]


def check_identifier(field: str, value: str | None) -> str | None:
    """A msgid or batch ID parameter as given; 422 unless it is 1-64 characters without
    spaces or control characters (no stored identifier has them)."""
    if value is not None and not _IDENTIFIER_RE.fullmatch(value):
        raise invalid(field, "must be 1-64 characters without spaces or control characters")
    return value


def check_status(value: str) -> str:
    """A status word, upper case; 422 unless it is 1-16 letters, digits or underscores."""
    if not _STATUS_RE.fullmatch(value):
        raise invalid("status", "must be 1-16 letters, digits or underscores")
    return value.upper()


def check_cursor(value: str | None) -> str | None:
    """A cursor's shape (its signature is checked where it is read)."""
    if value is not None and (len(value) > CURSOR_MAX_LENGTH or not _CURSOR_RE.fullmatch(value)):
        raise invalid("cursor", "is not a cursor this service issued")
    return value


def parse_instant(field: str, value: str | None, zone: ZoneInfo) -> dt.datetime | None:
    """An ISO 8601 parameter as an aware UTC instant; without an offset it is in `zone`."""
    if value is None:
        return None
    if not _INSTANT_RE.fullmatch(value):
        raise invalid(
            field,
            "must be an ISO 8601 time in the years 2 to 9998, e.g. 2026-11-26T08:00:00+08:00",
        )
    when = dt.datetime.fromisoformat(value.replace(" ", "T", 1))
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return when.astimezone(dt.UTC)


def instant_query(description: str, example: str) -> Any:
    """The Query of an instant parameter (read by parse_instant): what it means, then how an
    instant is written."""
    return Query(
        description=description + INSTANT_DESCRIPTION,
        examples=[example],
        json_schema_extra=pattern(INSTANT_PATTERN),
    )


def parse_range(
    zone: ZoneInfo, start: tuple[str, str | None], end: tuple[str, str | None]
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Two instant parameters, (name, value) each, bounding [start, end); 422 unless the end
    is later than the start."""
    since = parse_instant(start[0], start[1], zone)
    until = parse_instant(end[0], end[1], zone)
    if since is not None and until is not None and since >= until:
        raise invalid(end[0], f"must be later than {start[0]}")
    return since, until


def parse_mobile(value: str | None, field: str = "mobile") -> str | None:
    """A number in any accepted form as E.164 (422 when it is not a Taiwan mobile)."""
    if value is None:
        return None
    if len(value) > mobiles.MAX_LENGTH:
        raise invalid(field, mobiles.TOO_LONG)
    mobile = mobiles.from_input(value)
    if mobile is None:
        raise invalid(field, "not a Taiwan mobile number (e.g. 0912345678 or +886912345678)")
    return mobile


@lru_cache(maxsize=1)
def zone_names() -> list[str]:
    """Every IANA zone name this machine knows (the `tz` parameter's enumeration)."""
    return sorted(available_timezones())


def parse_zone(name: str, field: str = "tz") -> ZoneInfo:
    """An IANA zone by name; 422 when there is no such zone."""
    if name not in zone_names():
        raise invalid(field, "unknown IANA time zone (e.g. Asia/Taipei)")
    return ZoneInfo(name)


def reject_nul(request: Request) -> None:
    """Refuse a NUL character anywhere in the path or the parameters with a 422: no stored
    value contains one, and PostgreSQL refuses it in any text it is asked to compare."""
    if "\x00" in request.url.path or any(
        "\x00" in name or "\x00" in value for name, value in request.query_params.multi_items()
    ):
        raise invalid("request", "NUL characters are not allowed in the path or parameters")


async def checked_url(settings: Settings, url: str, field: str = "url") -> str:
    """A destination URL as stored; 422 for a bad one (or one resolving to a private
    address)."""
    try:
        return await check_destination(
            url,
            allow_private=settings.webhook_allow_private,
            seconds=settings.webhook_timeout_seconds,
        )
    except BadUrl as exc:
        raise invalid(field, str(exc)) from None
