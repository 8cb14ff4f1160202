"""Cursors round-trip, and refuse tampering and other filters."""

from __future__ import annotations

import pytest

from app.core.errors import InvalidParameters
from app.read.cursors import decode_cursor, encode_cursor

KEY = b"k" * 32


def test_round_trip() -> None:
    c = encode_cursor(KEY, ["2003-05-22T05:48:50+00:00", "m", "+886912345678"], {"a": 1})
    assert decode_cursor(KEY, c, {"a": 1}) == ["2003-05-22T05:48:50+00:00", "m", "+886912345678"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c[:-2] + ("A" if c[-2] != "A" else "B") + c[-1],
        lambda c: "x" + c,
        lambda c: "garbage!!",
        lambda c: "",
        lambda c: c[:10],
    ],
)
def test_tampered_cursor_is_422(mutate) -> None:
    c = encode_cursor(KEY, [1, 2], {"a": 1})
    with pytest.raises(InvalidParameters):
        decode_cursor(KEY, mutate(c), {"a": 1})


def test_other_filters_or_other_key_is_422() -> None:
    c = encode_cursor(KEY, [1], {"a": 1})
    with pytest.raises(InvalidParameters):
        decode_cursor(KEY, c, {"a": 2})
    with pytest.raises(InvalidParameters):
        decode_cursor(b"x" * 32, c, {"a": 1})
