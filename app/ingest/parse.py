"""Parsing and validation of a gateway callback: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from app.core import mobiles
from app.core.mobiles import normalize_mobile
from app.core.statuses import classify
from app.ingest.errors import CallbackRejected
from app.ingest.forms import body_pairs, parse_urlencoded

FIELDS = ("ID", "msgid", "type", "mobile", "donetime", "statuscode", "statusstr")
_NAMES = {name.lower(): name for name in FIELDS} | {"status": "statuscode"}

TYPES = {"now": "now", "dlv": "scheduled"}
EARLIEST = (2000, 1, 1)
MAX_DONETIME_LENGTH = 40
LATEST_AHEAD = dt.timedelta(hours=24)

_STATUSSTR_RE = re.compile(r"[A-Za-z0-9_]{1,16}")
_SLASH_RE = re.compile(r"(\d{4})/(\d{2})/(\d{2})[ T]+(\d{2}):(\d{2})(?::(\d{2}))?")
_DASH_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2}) +(\d{2}):(\d{2}):(\d{2})")
_ISO_TIME_RE = re.compile(r"\d[Tt ]\d")


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """A valid, normalised report, ready to store."""

    batch_id: str
    msgid: str
    mobile: str
    type: str
    done_at: dt.datetime
    statuscode: int
    status: str
    outcome: str
    final: bool
    inconsistent: bool
    key: int


# ---------------------------------------------------------------- body and query parsing


# ---------------------------------------------------------------- field rules


def _text(value: Any) -> str | None:
    """A field value as trimmed text; None when its JSON type is not string or number."""
    if isinstance(value, str):
        return value.strip()
    return None


def collect_fields(
    pairs_in_order: list[tuple[str, Any]], errors: list[dict[str, str]]
) -> dict[str, str]:
    """Map names case-insensitively to the contract's fields; refuse contradicting copies."""
    values: dict[str, str] = {}
    for name, raw in pairs_in_order:
        field = _NAMES.get(name.strip().lower())
        if field is None:
            continue
        value = _text(raw)
        if value is None:
            errors.append({"field": field, "message": "must be a string or a number"})
            values[field] = ""
            continue
        previous = values.get(field)
        if previous is None:
            values[field] = value
        elif previous != value:
            errors.append({"field": field, "message": "given twice with different values"})
    return values


def _is_identifier(value: str) -> bool:
    return 0 < len(value) <= 64 and value.isprintable() and " " not in value


def _local(zone: ZoneInfo, *parts: str | None) -> dt.datetime:
    year, month, day, hour, minute, second = (int(p) if p else 0 for p in parts)
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=zone)


def parse_donetime(value: str, zone: ZoneInfo, received_at: dt.datetime) -> dt.datetime:
    """Parse any accepted donetime spelling into a UTC instant; raise ValueError if invalid."""
    if len(value) > MAX_DONETIME_LENGTH:
        # Before the cache, whose keys must stay short (the slash format allows any run of
        # spaces between date and time).
        raise ValueError(f"is longer than {MAX_DONETIME_LENGTH} characters")
    instant = _donetime_instant(value, zone)
    if instant < dt.datetime(*EARLIEST, tzinfo=zone):
        raise ValueError("is before 2000-01-01")
    if instant > received_at + LATEST_AHEAD:
        raise ValueError("is more than 24 hours after receipt")
    return instant


# A campaign's reports settle within the same seconds, so their donetimes repeat. Keys are at
# most MAX_DONETIME_LENGTH characters (parse_donetime): ~8192 * 150 bytes at most.
@lru_cache(maxsize=8192)
def _donetime_instant(value: str, zone: ZoneInfo) -> dt.datetime:
    """The UTC instant a donetime spelling names (no range check)."""
    try:
        if value.isdigit():
            if len(value) == 14:
                when = _local(
                    zone, value[:4], value[4:6], value[6:8], value[8:10], value[10:12], value[12:14]
                )
            elif len(value) == 12:
                when = _local(
                    zone, value[:4], value[4:6], value[6:8], value[8:10], value[10:12], None
                )
            elif len(value) == 10:
                when = _local(
                    zone, "20" + value[:2], value[2:4], value[4:6], value[6:8], value[8:10], None
                )
            else:
                raise ValueError("not a known time format")
        elif (m := _SLASH_RE.fullmatch(value)) or (m := _DASH_RE.fullmatch(value)):
            when = _local(zone, *m.groups())
        elif _ISO_TIME_RE.search(value):
            when = dt.datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=zone)
        else:
            raise ValueError("not a known time format")
    except ValueError as exc:
        if "known time format" in str(exc):
            raise
        raise ValueError(f"not a valid time: {exc}") from None
    return when.astimezone(dt.UTC)


def report_key(
    batch_id: str, msgid: str, mobile: str, statuscode: int, status: str, done_at: dt.datetime
) -> int:
    """The identity of a report: equal for every retry of it, however it was spelled.

    A signed 64-bit blake2b of the normalised fields. Storage keeps it unique together with
    msgid, so only the few reports of one message could ever collide (odds ~k^2 / 2^65)."""
    instant = done_at.astimezone(dt.UTC).isoformat(timespec="microseconds")
    # \x1f cannot occur inside a field: identifiers must be printable.
    raw = f"{batch_id}\x1f{msgid}\x1f{mobile}\x1f{statuscode}\x1f{status}\x1f{instant}"
    digest = hashlib.blake2b(raw.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def validate_fields(
    values: dict[str, str],
    zone: ZoneInfo,
    received_at: dt.datetime,
    errors: list[dict[str, str]] | None = None,
) -> ParsedReport:
    """Check every field rule; raise CallbackRejected listing every bad field."""
    errors = [] if errors is None else errors
    flagged = {e["field"] for e in errors}

    def get(field: str) -> str | None:
        if field in flagged:
            return None
        value = values.get(field)
        if value is None or value == "":
            errors.append({"field": field, "message": "is required"})
            return None
        return value

    batch_id = get("ID")
    if batch_id is not None and not _is_identifier(batch_id):
        errors.append({"field": "ID", "message": "must be 1-64 printable characters, no spaces"})
    msgid = get("msgid")
    if msgid is not None and not _is_identifier(msgid):
        errors.append({"field": "msgid", "message": "must be 1-64 printable characters, no spaces"})
    raw_type = get("type")
    kind = TYPES.get(raw_type.lower()) if raw_type is not None else None
    if raw_type is not None and kind is None:
        errors.append({"field": "type", "message": "must be Now or dlv"})
    raw_mobile = get("mobile")
    mobile = normalize_mobile(raw_mobile) if raw_mobile is not None else None
    if raw_mobile is not None and len(raw_mobile) > mobiles.MAX_LENGTH:
        errors.append({"field": "mobile", "message": mobiles.TOO_LONG})
    elif raw_mobile is not None and mobile is None:
        errors.append(
            {"field": "mobile", "message": "must be a Taiwan mobile number such as 0912345678"}
        )
    raw_done = get("donetime")
    done_at = None
    if raw_done is not None:
        try:
            done_at = parse_donetime(raw_done, zone, received_at)
        except ValueError as exc:
            errors.append({"field": "donetime", "message": str(exc)})
    raw_code = get("statuscode")
    if raw_code is not None and raw_code not in ("0", "1"):
        errors.append({"field": "statuscode", "message": "must be 0 or 1"})
    raw_word = get("statusstr")
    if raw_word is not None and not _STATUSSTR_RE.fullmatch(raw_word):
        errors.append(
            {"field": "statusstr", "message": "must be 1-16 letters, digits or underscores"}
        )
    if errors:
        raise CallbackRejected("invalid_fields", errors)

    assert batch_id and msgid and kind and mobile and done_at and raw_code and raw_word
    statuscode = int(raw_code)
    status = raw_word.upper()
    outcome, final, inconsistent = classify(status, statuscode)
    return ParsedReport(
        batch_id=batch_id,
        msgid=msgid,
        mobile=mobile,
        type=kind,
        done_at=done_at,
        statuscode=statuscode,
        status=status,
        outcome=outcome,
        final=final,
        inconsistent=inconsistent,
        key=report_key(batch_id, msgid, mobile, statuscode, status, done_at),
    )


def parse_callback(
    content_type: str,
    body: bytes,
    query: bytes,
    zone: ZoneInfo,
    received_at: dt.datetime,
) -> ParsedReport:
    """Turn one callback request into a report, or raise CallbackRejected."""
    pairs: list[tuple[str, Any]] = body_pairs(content_type, body) if body else []
    if query:
        pairs.extend(parse_urlencoded(query))
    errors: list[dict[str, str]] = []
    values = collect_fields(pairs, errors)
    return validate_fields(values, zone, received_at, errors)
