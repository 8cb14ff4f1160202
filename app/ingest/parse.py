"""Parsing and validation of a gateway callback: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes
from zoneinfo import ZoneInfo

from python_multipart.multipart import MultipartParser, parse_options_header

from app.core import mobiles
from app.core.mobiles import mask_mobile as mask_mobile  # the ingest writer's import
from app.core.mobiles import normalize_mobile

FIELDS = ("ID", "msgid", "type", "mobile", "donetime", "statuscode", "statusstr")
_NAMES = {name.lower(): name for name in FIELDS} | {"status": "statuscode"}

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON_TYPE = "application/json"

DELIVERED_WORDS = frozenset({"DELIVRD"})
FAILED_WORDS = frozenset({"EXPIRED", "DELETED", "UNDELIV", "REJECTD", "SYNTAXE", "UNKNOWN"})
NON_FINAL_WORDS = frozenset({"ENROUTE"})
# Words the metrics name; anything else is counted as OTHER.
KNOWN_WORDS = DELIVERED_WORDS | FAILED_WORDS | NON_FINAL_WORDS | {"ACCEPTD"}

TYPES = {"now": "now", "dlv": "scheduled"}
EARLIEST = (2000, 1, 1)
MAX_DONETIME_LENGTH = 40
LATEST_AHEAD = dt.timedelta(hours=24)

_STATUSSTR_RE = re.compile(r"[A-Za-z0-9_]{1,16}")
_SLASH_RE = re.compile(r"(\d{4})/(\d{2})/(\d{2})[ T]+(\d{2}):(\d{2})(?::(\d{2}))?")
_DASH_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2}) +(\d{2}):(\d{2}):(\d{2})")
_ISO_TIME_RE = re.compile(r"\d[Tt ]\d")


class CallbackRejected(Exception):
    """The request cannot become a report; `reason` is one of the quarantine reasons."""

    def __init__(self, reason: str, errors: list[dict[str, str]]) -> None:
        super().__init__(reason, errors)
        self.reason = reason
        self.errors = errors


def _malformed(message: str) -> CallbackRejected:
    return CallbackRejected("malformed_body", [{"field": "body", "message": message}])


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


def _unquote(part: bytes) -> str:
    if b"%" in part or b"+" in part:
        return unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
    return part.decode("utf-8")  # most names and values need no unquoting


def parse_urlencoded(data: bytes) -> list[tuple[str, str]]:
    """Split an urlencoded string; a segment without '=' is a name with an empty value."""
    pairs: list[tuple[str, str]] = []
    try:
        for segment in data.split(b"&"):
            if segment:
                name, _, value = segment.partition(b"=")
                pairs.append((_unquote(name), _unquote(value)))
    except UnicodeDecodeError:
        raise _malformed("urlencoded data is not UTF-8") from None
    return pairs


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _JsonObject(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


def parse_json(body: bytes) -> list[tuple[str, Any]]:
    """Parse a JSON object body, keeping duplicate keys and numbers as their literal text."""
    try:
        text = body.decode("utf-8-sig")
        # pairs (not a dict) so a key given twice is seen; numbers stay text, so that
        # a 5,000-digit integer costs nothing and "1" and 1 read alike
        value = json.loads(
            text,
            object_pairs_hook=_JsonObject,
            parse_int=str,
            parse_float=str,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError:
        raise _malformed("the JSON body is not UTF-8") from None
    except RecursionError:
        raise _malformed("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise _malformed(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, _JsonObject):
        raise _malformed("the JSON body must be an object")
    return list(value)


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[str, str]]:
    """Parse a multipart/form-data body into (name, value) pairs."""
    pairs: list[tuple[str, str]] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["data"] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = b""
        state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        disposition = state["headers"].get(b"content-disposition")
        if disposition is None:
            raise _malformed("a multipart part has no Content-Disposition")
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        if name is None:
            raise _malformed("a multipart part has no name")
        try:
            pairs.append((name.decode("utf-8"), b"".join(state["data"]).decode("utf-8")))
        except UnicodeDecodeError:
            raise _malformed("a multipart field is not UTF-8") from None

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        written = parser.write(body)
        parser.finalize()
    except CallbackRejected:
        raise
    except Exception as exc:  # python-multipart raises several error types
        raise _malformed(f"the multipart body does not parse: {exc}") from None
    # The closing boundary must have been seen, else the body was cut short.
    if written != len(body) or parser.state.name != "END":
        raise _malformed("the multipart body is incomplete")
    return pairs


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into its lower-case media type and its parameters (names
    in lower case, quoted values unquoted)."""
    try:
        mtype, options = parse_options_header(content_type)
    except UnicodeEncodeError:  # beyond latin-1: no header value, no media type we know
        return content_type.strip().lower(), {}
    params = {k.decode("latin-1").strip().lower(): v.decode("latin-1") for k, v in options.items()}
    return mtype.decode("latin-1").strip(), params


def body_pairs(content_type: str, body: bytes) -> list[tuple[str, Any]]:
    """The fields of a non-empty body, by its content type."""
    mtype, options = media_type(content_type)
    if mtype == FORM:
        return parse_urlencoded(body)
    if mtype == JSON_TYPE or (mtype.startswith("application/") and mtype.endswith("+json")):
        return parse_json(body)
    if mtype == MULTIPART:
        boundary = options.get("boundary", "")
        if not boundary or len(boundary) > 200:
            raise _malformed("multipart/form-data without a usable boundary")
        return parse_multipart(body, boundary.encode("latin-1", "replace"))
    raise CallbackRejected(
        "unsupported_media_type",
        [
            {
                "field": "content-type",
                "message": f"{content_type or 'no content type'} is not form, multipart or JSON",
            }
        ],
    )


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


def classify(status: str, statuscode: int) -> tuple[str, bool, bool]:
    """(outcome, final, inconsistent) of a status word and code."""
    if status in DELIVERED_WORDS:
        return "delivered", True, statuscode == 0
    if status in FAILED_WORDS:
        return "failed", True, statuscode == 1
    if status in NON_FINAL_WORDS:
        return "pending", False, False
    return ("delivered" if statuscode == 1 else "failed"), True, False


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
