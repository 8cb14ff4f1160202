"""The kinds of value the settings hold, each with how it is read from its text and what it
must be: comma lists, durations, URLs, zones, tokens and secrets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, IPvAnyNetwork, SecretStr
from pydantic_settings import NoDecode

from app.core.secret_checks import webhook_key

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]+")
_NUM = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?")


def split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def empty_is_none(value: object) -> object:
    """An empty variable (`DLR_RETENTION_DAYS=`) leaves the setting unset."""
    return None if isinstance(value, str) and not value.strip() else value


def parse_duration(value: object) -> object:
    """Seconds (`90`, `1.5`) or a duration such as `30m`, `1h30m`, `2d`, `500ms`; other
    values (a timedelta, ISO 8601 `PT30M`) are left to pydantic."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    if not isinstance(value, str):
        return value
    text = value.strip().lower().replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return dt.timedelta(seconds=seconds) if math.isfinite(seconds) else value
    if text.endswith("ms") and text[:-2].replace(".", "", 1).isdigit():
        return dt.timedelta(milliseconds=float(text[:-2]))
    match = _DURATION_RE.fullmatch(text)
    if text and match:
        days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
        return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if text.lstrip("-").startswith("p"):
        return value.strip().upper()  # ISO 8601, for pydantic to read
    raise ValueError("must be seconds or a duration such as 90s, 30m, 1h30m or 2d")


def _positive(value: dt.timedelta) -> dt.timedelta:
    if value <= dt.timedelta(0):
        raise ValueError("must be a positive duration, e.g. 90 (seconds), 30m, 1h30m or 2d")
    return value


def _parse_schedule(value: object) -> object:
    if isinstance(value, str):
        return [parse_duration(part) for part in value.split(",") if part.strip()]
    return value


def _check_schedule(value: list[dt.timedelta]) -> list[dt.timedelta]:
    if not value or len(value) > 50:
        raise ValueError("give 1 to 50 waits, comma separated (e.g. 5s,5m,30m)")
    if any(wait <= dt.timedelta(0) for wait in value):
        raise ValueError("every wait must be a positive duration")
    return value


def _check_webhook_secret(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value().strip()
    if secret and webhook_key(secret) is None:
        raise ValueError(
            "must be a Standard Webhooks secret: whsec_ followed by base64 of 24 to 64 "
            "random bytes (python -c 'import base64, secrets; "
            'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\')'
        )
    return SecretStr(secret)


def _check_http_url(value: str) -> str:
    value = value.strip()
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    return value


def _check_account(value: str) -> str:
    value = value.strip()
    if value and not value.isprintable():
        raise ValueError("the account name must be printable text")
    return value


def _check_tokens(value: list[SecretStr]) -> list[SecretStr]:
    for token in value:
        if not _TOKEN_RE.fullmatch(token.get_secret_value()):
            raise ValueError("callback tokens may use only letters, digits, '-', '_', '.', '~'")
    return value


def _check_line(value: str) -> str:
    if not value or any(c in value for c in "\r\n"):
        raise ValueError("the acknowledgement body must be one non-empty line")
    return value


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


def _check_database_url(value: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("not a database URL (postgresql://... or sqlite:///...)") from None
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError("only postgresql:// and sqlite:/// URLs are supported")
    return value


# NoDecode: a list is written comma separated in its variable, not as JSON.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(split_commas)]
NetworkList = Annotated[list[IPvAnyNetwork], NoDecode, BeforeValidator(split_commas)]
TokenList = Annotated[SecretList, AfterValidator(_check_tokens)]
Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]
RetrySchedule = Annotated[
    list[dt.timedelta],
    NoDecode,
    BeforeValidator(_parse_schedule),
    AfterValidator(_check_schedule),
]
WebhookSecret = Annotated[SecretStr, AfterValidator(_check_webhook_secret)]
HttpUrlText = Annotated[str, AfterValidator(_check_http_url)]
AccountName = Annotated[str, AfterValidator(_check_account)]
OneLine = Annotated[str, AfterValidator(_check_line)]
ZoneName = Annotated[str, AfterValidator(_check_zone)]
DatabaseUrl = Annotated[str, AfterValidator(_check_database_url)]
EmptyIsNone = BeforeValidator(empty_is_none)
