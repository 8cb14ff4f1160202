"""Deliveries as CSV: RFC 4180 quoting, the JSON's values, cells safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.core.times import utc_z

# A spreadsheet runs a cell starting with one of these as a formula (or as a DDE call).
_FORMULA_START = frozenset("=@\t\r")
_PLAIN_NUMBER = re.compile(r"[+-][0-9]+(?:\.[0-9]+)?")


def safe_cell(text: str) -> str:
    """Prefix `'` to a cell a spreadsheet would evaluate. A sign followed by something else
    than a plain number (`-1+cmd|...`, `+A1`) counts too; E.164 numbers stay as they are."""
    if not text:
        return text
    first = text[0]
    if first in _FORMULA_START or (
        first in "+-" and len(text) > 1 and not _PLAIN_NUMBER.fullmatch(text)
    ):
        return "'" + text
    return text


def cell(value: Any) -> str:
    """One value written as the JSON answer writes it (booleans true/false, times in UTC)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return utc_z(value)
    if isinstance(value, str):
        return safe_cell(value)
    return str(value)


def render(rows: Iterable[Sequence[Any]]) -> str:
    """CSV lines (CRLF, quotes doubled, fields with a comma, quote or newline quoted)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, dialect="excel", lineterminator="\r\n")
    writer.writerows([cell(value) for value in row] for row in rows)
    return buffer.getvalue()


async def csv_chunks(
    header: Sequence[str],
    first: Sequence[Sequence[Any]] | None,
    more: AsyncGenerator[Sequence[Sequence[Any]], None],
) -> AsyncGenerator[bytes, None]:
    """The header and each batch of rows as one UTF-8 chunk; closes the row source at the end
    or when the client goes away."""
    try:
        yield render([header, *(first or ())]).encode("utf-8")
        async for rows in more:
            yield render(rows).encode("utf-8")
    finally:
        await more.aclose()


class CsvResponse(StreamingResponse):
    """A streamed CSV download that closes its row source however the response ends: a
    client gone mid-file releases the database cursor now, not whenever GC runs.
    (No class-level media_type: FastAPI would document the JSON errors as CSV.)"""

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], filename: str, status_code: int = 200
    ) -> None:
        super().__init__(
            chunks,
            status_code=status_code,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._chunks.aclose()
