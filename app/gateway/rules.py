"""A message checked against the gateway's rules before anything is sent: pure, no I/O."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from app.core import mobiles

Language = Literal["english", "chinese"]
SendType = Literal["now", "scheduled"]

MAX_NUMBERS = 80
#: Characters per message by language and send type (English is longer when scheduled).
MAX_LENGTH: dict[tuple[Language, SendType], int] = {
    ("english", "now"): 140,
    ("english", "scheduled"): 160,
    ("chinese", "now"): 70,
    ("chinese", "scheduled"): 70,
}
STEP_MINUTES = 5
#: How far ahead a send may be scheduled (a bound, so that no date arithmetic overflows).
MAX_AHEAD = dt.timedelta(days=3653)
MAX_AHEAD_TEXT = "ten years"

# Patterns use explicit character classes so that every regex engine reading the OpenAPI
# document (ECMA-262, Rust, Python) agrees with the checks here.
# Control characters (C0 but line breaks, DEL, C1): an SMS has no use for them and
# PostgreSQL refuses NUL, which would fail the record after the gateway has sent.
_CONTROL = r"\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f"
# Whitespace as str.isspace() knows it, beyond the control characters.
_SPACE = r"\x0a\x0d\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: Message text: no control characters but line breaks, and something besides whitespace.
TEXT_PATTERN = rf"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*$"
# The two halves of TEXT_PATTERN, each a linear search (the pattern itself backtracks).
# Lone surrogates too (JSON can escape them): no gateway request can encode one. JSON Schema
# validators cannot read them at all, so they stay out of TEXT_PATTERN.
_CONTROL_RE = re.compile(f"[{_CONTROL}\ud800-\udfff]")
_VISIBLE_RE = re.compile(f"[^{_CONTROL}{_SPACE}]")


class InvalidMessage(ValueError):
    """The gateway would refuse this message; `errors` lists `{field, message}`."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message the gateway will accept: E.164 numbers, text, language, schedule time."""

    numbers: tuple[str, ...]
    text: str
    language: Language
    send_at: dt.datetime | None  # UTC; None sends now

    @property
    def type(self) -> SendType:
        return "now" if self.send_at is None else "scheduled"

    def gateway_numbers(self) -> str:
        """N: the numbers as the gateway writes them (`0920222111`), comma separated."""
        return ",".join(gateway_mobile(m) for m in self.numbers)

    def gateway_language(self) -> str:
        """L: `E` for English, empty for Chinese."""
        return "E" if self.language == "english" else ""

    def gateway_time(self, zone: ZoneInfo) -> str:
        """T: `YYYYMMDDHHII` in the gateway's zone."""
        assert self.send_at is not None
        return self.send_at.astimezone(zone).strftime("%Y%m%d%H%M")


def gateway_mobile(e164: str) -> str:
    """`+886920222111` -> `0920222111`, the form the gateway asks for."""
    return "0" + e164.removeprefix("+886")


def parse_send_at(value: str | dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """An ISO 8601 time (without an offset: in the gateway zone) as a UTC instant."""
    if isinstance(value, str):
        when = dt.datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    else:
        when = value
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return when.astimezone(dt.UTC)


def choose_language(text: str, language: Language | None) -> Language:
    """The language asked for, or English for ASCII-only text and Chinese otherwise."""
    if language is not None:
        return language
    return "english" if text.isascii() else "chinese"


def prepare_message(
    numbers: Sequence[str],
    text: str,
    *,
    zone: ZoneInfo,
    now: dt.datetime,
    send_at: str | dt.datetime | None = None,
    language: Language | None = None,
) -> OutboundMessage:
    """Check every rule of the gateway; raise InvalidMessage listing every problem."""
    errors: list[dict[str, str]] = []

    if not numbers:
        errors.append({"field": "numbers", "message": "at least one number is required"})
    elif len(numbers) > MAX_NUMBERS:
        errors.append(
            {
                "field": "numbers",
                "message": f"at most {MAX_NUMBERS} numbers per send (the gateway's limit); "
                f"got {len(numbers)}",
            }
        )
    normalized: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(numbers):
        if isinstance(raw, str) and len(raw) > mobiles.MAX_LENGTH:
            errors.append({"field": f"numbers.{i}", "message": mobiles.TOO_LONG})
            continue
        mobile = mobiles.from_input(raw) if isinstance(raw, str) else None
        if mobile is None:
            errors.append(
                {
                    "field": f"numbers.{i}",
                    "message": "not a Taiwan mobile number (e.g. 0912345678 or +886912345678)",
                }
            )
            continue
        if mobile in seen:
            # One report per number and send: a number twice would be two messages that
            # no report can tell apart.
            errors.append(
                {"field": f"numbers.{i}", "message": f"the same number as numbers.{seen[mobile]}"}
            )
            continue
        seen[mobile] = i
        normalized.append(mobile)

    when: dt.datetime | None = None
    if send_at is not None:
        try:
            when = parse_send_at(send_at, zone)
        except (ValueError, OverflowError):
            errors.append(
                {
                    "field": "send_at",
                    "message": "must be an ISO 8601 time, e.g. 2026-11-26T15:30:00+08:00",
                }
            )
        else:
            local = when.astimezone(zone)
            if local.minute % STEP_MINUTES or local.second or local.microsecond:
                errors.append(
                    {
                        "field": "send_at",
                        "message": f"must fall on a {STEP_MINUTES}-minute step in the gateway "
                        f"zone {zone.key} (e.g. {local.strftime('%H')}:"
                        f"{local.minute - local.minute % STEP_MINUTES:02d}), "
                        "with no seconds",
                    }
                )
            elif when <= now:
                errors.append({"field": "send_at", "message": "must be in the future"})
            elif when > now + MAX_AHEAD:
                errors.append(
                    {
                        "field": "send_at",
                        "message": f"must be at most {MAX_AHEAD_TEXT} ahead",
                    }
                )

    chosen = choose_language(text, language)
    kind: SendType = "now" if send_at is None else "scheduled"
    if _CONTROL_RE.search(text):
        errors.append(
            {
                "field": "text",
                "message": "must not hold control characters (NUL and the like); "
                "line breaks are fine",
            }
        )
    elif not _VISIBLE_RE.search(text):
        errors.append({"field": "text", "message": "must not be empty"})
    elif chosen == "english" and not text.isascii():
        errors.append(
            {
                "field": "text",
                "message": "English text may hold only ASCII characters; "
                "send it as Chinese (language chinese, 70 characters)",
            }
        )
    else:
        limit = MAX_LENGTH[(chosen, kind)]
        if len(text) > limit:
            errors.append(
                {
                    "field": "text",
                    "message": f"{len(text)} characters; {chosen} text "
                    f"{'sent now' if kind == 'now' else 'scheduled'} may have at most {limit}",
                }
            )

    if errors:
        raise InvalidMessage(errors)
    return OutboundMessage(numbers=tuple(normalized), text=text, language=chosen, send_at=when)
