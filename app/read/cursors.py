"""Signed keyset cursors: the last row's sort key plus a fingerprint of the filters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from app.core.errors import InvalidParameters
from app.core.settings import Settings

_SIG_BYTES = 16


def cursor_key(settings: Settings) -> bytes:
    """DLR_CURSOR_SECRET, or a key derived from the secrets every replica shares."""
    if settings.cursor_secret:
        material = settings.cursor_secret
    else:
        material = "\x00".join(
            [settings.database_url, *settings.api_keys, *settings.callback_tokens]
        )
    return hashlib.sha256(b"mboxii-dlr cursor\x00" + material.encode()).digest()


def fingerprint(filters: dict[str, Any]) -> str:
    """A short, stable digest of the normalised filters a cursor belongs to."""
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_cursor(key: bytes, position: list[Any], filters: dict[str, Any]) -> str:
    payload = json.dumps({"p": position, "f": fingerprint(filters)}, separators=(",", ":"))
    raw = payload.encode()
    sig = hmac.new(key, raw, hashlib.sha256).digest()[:_SIG_BYTES]
    return base64.urlsafe_b64encode(sig + raw).decode().rstrip("=")


def decode_cursor(key: bytes, cursor: str, filters: dict[str, Any]) -> list[Any]:
    """The position stored in a cursor; 422 when it is forged or made for other filters."""
    try:
        blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise _bad("is not a cursor this service issued") from None
    sig, raw = blob[:_SIG_BYTES], blob[_SIG_BYTES:]
    expected = hmac.new(key, raw, hashlib.sha256).digest()[:_SIG_BYTES]
    if len(sig) != _SIG_BYTES or not hmac.compare_digest(sig, expected):
        raise _bad("is not a cursor this service issued (or it was altered)")
    try:
        payload = json.loads(raw)
        position, made_for = payload["p"], payload["f"]
    except (ValueError, KeyError, TypeError):
        raise _bad("is not a cursor this service issued") from None
    if made_for != fingerprint(filters):
        raise _bad("belongs to other filters; start again without a cursor")
    if not isinstance(position, list):
        raise _bad("is not a cursor this service issued")
    return position


def _bad(message: str) -> InvalidParameters:
    return InvalidParameters(errors=[{"field": "cursor", "message": message}])
