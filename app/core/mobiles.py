"""Taiwan mobile numbers: one normalisation (to E.164) and one masking, for every caller."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

#: Longer values are refused before any parsing or caching: the longest accepted spelling,
#: `+886 0912-345-678`, has 17 characters, and a cache keyed by raw text must not hold
#: arbitrarily long keys (callback `mobile`, `?mobile=`, `/v1/messages` numbers).
MAX_LENGTH = 32
TOO_LONG = f"is longer than {MAX_LENGTH} characters"
MASK = "***"

_COMPACT_RE = re.compile(r"(?:\+?8860?|0)?(9[0-9]{8})")
_CHARS_RE = re.compile(r"\+?[0-9][0-9 .\-]*")
_STRIP = str.maketrans("", "", " .-")
# A number in any accepted spelling (0912345678, +886912345678, 886912345678, 912345678,
# +886 0912-345-678, with spaces, dashes or dots), not inside a longer run of digits (ids and
# times stay). Letters around it do not protect it: `mobile0912345678x` is still masked.
IN_TEXT_RE = re.compile(r"(?<![0-9])(?:\+?886[ .\-]?0?|0)?9(?:[ .\-]?\d){8}(?![0-9])")


_SEP = "[ .-]*"
#: A number as a client types it (a query parameter, a number of /v1/messages): every
#: spelling normalize_mobile accepts (0912345678, +886912345678, 886912345678, 912345678,
#: +8860912345678, spaces, dots or dashes between the digits), and leading spaces (a `+` in a
#: query string arrives as one); at most MAX_LENGTH characters in all. Explicit character
#: classes, so that every regex engine reading the OpenAPI document agrees.
INPUT_PATTERN = rf"^ *(?:\+?8{_SEP}8{_SEP}6{_SEP}(?:0{_SEP})?|0{_SEP})?9(?:{_SEP}[0-9]){{8}}{_SEP}$"
_INPUT_RE = re.compile(INPUT_PATTERN)


def from_input(value: str) -> str | None:
    """A number as a client typed it (INPUT_PATTERN, MAX_LENGTH) as E.164, or None."""
    if len(value) > MAX_LENGTH or not _INPUT_RE.fullmatch(value):
        return None
    return normalize_mobile(value.strip(" "))


def normalize_mobile(value: str) -> str | None:
    """A Taiwan mobile number in any accepted form as E.164 (`+886912345678`), or None
    (also for anything longer than MAX_LENGTH)."""
    if len(value) > MAX_LENGTH:
        return None
    # The compact spellings gateways send are settled by one regex; phonenumbers (slower,
    # cached) handles the rest. tests/test_callback.py checks that both paths agree.
    m = _COMPACT_RE.fullmatch(value)
    if m is not None:
        return "+886" + m.group(1)
    return normalize_mobile_phonenumbers(value)


def normalize_mobile_phonenumbers(value: str) -> str | None:
    """normalize_mobile through the phonenumbers library, for any spelling."""
    if len(value) > MAX_LENGTH:
        return None
    return _through_phonenumbers(value)


# Keys are at most MAX_LENGTH characters, so the cache holds at most ~8192 * 100 bytes.
@lru_cache(maxsize=8192)
def _through_phonenumbers(value: str) -> str | None:
    if not _CHARS_RE.fullmatch(value):
        return None
    compact = value.translate(_STRIP)
    if len(compact) > 16:
        return None
    try:
        number = phonenumbers.parse(compact, "TW")
    except phonenumbers.NumberParseException:
        return None
    nsn = str(number.national_number)
    if number.country_code != 886 or len(nsn) != 9 or nsn[0] != "9":
        return None
    # phonenumbers also accepts 0 0 9... or a stray national prefix after +886;
    # keep to the spellings the contract lists.
    digits = compact.removeprefix("+")
    if digits not in (f"0{nsn}", f"886{nsn}", nsn, f"8860{nsn}"):
        return None
    return "+886" + nsn


def national(mobile: str) -> str:
    """`+886912345678` -> `0912345678`, the way people in Taiwan write it."""
    return "0" + mobile[4:] if mobile.startswith("+886") else mobile


def mask_mobile(value: str) -> str:
    """A number with its middle hidden: a Taiwan mobile in any spelling as `0912***678`;
    any other value keeps its first four and last three characters (nothing when short)."""
    mobile = normalize_mobile(value.strip())
    if mobile is not None:
        return f"0{mobile[4:7]}{MASK}{mobile[-3:]}"
    return f"{value[:4]}{MASK}{value[-3:]}" if len(value) >= 8 else MASK


def mask_numbers(text: str) -> str:
    """`text` with every mobile number in it masked (log lines, stored requests)."""
    return IN_TEXT_RE.sub(lambda m: mask_mobile(m.group(0)), text)
