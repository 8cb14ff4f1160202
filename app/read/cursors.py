"""Signed keyset cursors: the last row's sort key plus a fingerprint of the filters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from itsdangerous import BadData, URLSafeSerializer

from app.core.errors import InvalidParameters
from app.core.settings import Settings

_SALT = "mboxii-dlr cursor"


def cursor_key(settings: Settings) -> bytes:
    """DLR_CURSOR_SECRET, or a key derived from the secrets every replica shares."""
    secret = settings.cursor_secret.get_secret_value()
    if secret:
        material = secret
    else:
        material = "\x00".join(
            [
                settings.database_url,
                *(k.get_secret_value() for k in settings.api_keys),
                *(t.get_secret_value() for t in settings.callback_tokens),
            ]
        )
    return hashlib.sha256(b"mboxii-dlr cursor\x00" + material.encode()).digest()


def _serializer(key: bytes) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256})


def fingerprint(filters: dict[str, Any]) -> str:
    """A short, stable digest of the normalised filters a cursor belongs to."""
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_cursor(key: bytes, position: list[Any], filters: dict[str, Any]) -> str:
    return str(_serializer(key).dumps({"p": position, "f": fingerprint(filters)}))


def decode_cursor(key: bytes, cursor: str, filters: dict[str, Any]) -> list[Any]:
    """The position stored in a cursor; 422 when it is forged or made for other filters."""
    try:
        payload = _serializer(key).loads(cursor)
    except BadData:
        raise _bad("is not a cursor this service issued (or it was altered)") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("p"), list):
        raise _bad("is not a cursor this service issued")
    if payload.get("f") != fingerprint(filters):
        raise _bad("belongs to other filters; start again without a cursor")
    position: list[Any] = payload["p"]
    return position


def _bad(message: str) -> InvalidParameters:
    return InvalidParameters(errors=[{"field": "cursor", "message": message}])


def not_this_list() -> InvalidParameters:
    """The 422 for a cursor signed by us, yet not a position of this list (another list's
    cursor, say)."""
    return _bad("is not a cursor of this list")


def id_position(key: bytes, cursor: str | None, filters: dict[str, Any]) -> int | None:
    """The row id held by a cursor of a list walked by id; None without a cursor."""
    if cursor is None:
        return None
    position = decode_cursor(key, cursor, filters)
    if len(position) != 1 or type(position[0]) is not int:
        raise not_this_list()
    return position[0]


Row = TypeVar("Row")


def next_page(
    rows: Sequence[Row],
    limit: int,
    key: bytes,
    filters: dict[str, Any],
    position: Callable[[Row], list[Any]],
) -> tuple[Sequence[Row], str | None]:
    """The page among `rows`, read with one row more than `limit` to learn whether another
    page follows, and the cursor after its last row (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(key, position(page[-1]), filters)
