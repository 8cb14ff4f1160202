"""The read path over numbers: one number with its latest deliveries, the list by failure
streak with keyset cursors, its CSV export, and the suppressed numbers."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.models import NUMBERS, Delivery, Number
from app.read.cursors import decode_cursor, next_page, not_this_list

RECENT = 20
# The Number's fields before `suppressed`, in the contract's order (the CSV's too). Spelled
# out rather than taken from app.db.numbers.SUMMARY, whose order is the recount's.
FIELDS = (
    "mobile",
    "deliveries",
    "delivered",
    "failed",
    "pending",
    "first_done_at",
    "last_done_at",
    "last_status",
    "last_outcome",
    "last_delivered_at",
    "failure_streak",
)
# The CSV's columns: the Number's fields, its `suppressed` object as three columns.
CSV_COLUMNS = (*FIELDS, "suppressed_source", "suppressed_reason", "suppressed_since")


def number_view(number: Any) -> dict[str, Any]:
    """A numbers row as the API shows it (the Number of the contract)."""
    suppressed = None
    if number.suppressed_since is not None:
        suppressed = {
            "source": number.suppressed_source,
            "reason": number.suppressed_reason,
            "since": number.suppressed_since,
        }
    return {**{name: getattr(number, name) for name in FIELDS}, "suppressed": suppressed}


async def get_number(session: AsyncSession, mobile: str) -> dict[str, Any] | None:
    """One number's summary and its latest deliveries, newest done_at first; None when
    the number was never seen nor suppressed."""
    number = await session.get(Number, mobile)
    if number is None:
        return None
    recent = await session.scalars(
        select(Delivery)
        .where(Delivery.mobile == mobile)
        .order_by(Delivery.done_at.desc(), Delivery.msgid)
        .limit(RECENT)
    )
    return {**number_view(number), "recent": list(recent)}


@dataclass(frozen=True, slots=True)
class NumberFilters:
    """The normalised filters of the numbers list and its CSV export (None = any)."""

    failure_streak_min: int | None = None
    suppressed: bool | None = None
    last_done_from: dt.datetime | None = None
    last_done_to: dt.datetime | None = None

    def identity(self) -> dict[str, Any]:
        """What a cursor is bound to: the list it came from and every filter value."""
        return {
            "list": "numbers",
            "failure_streak_min": self.failure_streak_min,
            "suppressed": self.suppressed,
            "last_done_from": self.last_done_from.isoformat() if self.last_done_from else None,
            "last_done_to": self.last_done_to.isoformat() if self.last_done_to else None,
        }

    def where(self) -> list[ColumnElement[bool]]:
        n = Number
        conditions: list[ColumnElement[bool]] = []
        if self.failure_streak_min is not None:
            conditions.append(n.failure_streak >= self.failure_streak_min)
        if self.suppressed is True:
            # Spelled as the partial indexes' condition, so both databases use them.
            conditions.append(n.suppressed_since.is_not(None))
        elif self.suppressed is False:
            conditions.append(n.suppressed_since.is_(None))
        if self.last_done_from is not None:
            conditions.append(n.last_done_at >= self.last_done_from)
        if self.last_done_to is not None:
            conditions.append(n.last_done_at < self.last_done_to)
        return conditions


# Highest failure streak first, then mobile.
LIST_ORDER = (Number.failure_streak.desc(), Number.mobile)


def _position(cursor: str, key: bytes, identity: dict[str, Any]) -> tuple[int, str]:
    position = decode_cursor(key, cursor, identity)
    if (
        len(position) == 2
        and type(position[0]) is int
        and position[0] >= 0
        and isinstance(position[1], str)
        and len(position[1]) <= 16
    ):
        return position[0], position[1]
    raise not_this_list()


def _ranges(filters: NumberFilters, after: tuple[int, str] | None) -> list[Select[Any]]:
    """The list from `after` on (from the start when None), as ranges of indexes to read one
    after the other. The order mixes directions, so no single row comparison finds a place
    in it; and only numbers with a streak are in the streak index (the others follow it in
    primary key order). Suppressed numbers have an index of their own, in list order."""
    n = Number
    base = select(n).where(*filters.where())
    failing = n.failure_streak > 0
    rest: list[Select[Any]] = []
    if after is not None:
        streak, mobile = after
        same = base.where(n.failure_streak == streak, n.mobile > mobile)
        if streak > 0 and filters.suppressed is not True:
            same = same.where(failing)  # said outright, so the planners use the streak index
        rest.append(same.order_by(n.mobile))
        if streak == 0:
            return rest
        base = base.where(n.failure_streak < streak)
    if filters.suppressed is True:
        return [*rest, base.order_by(*LIST_ORDER)]
    rest.append(base.where(failing).order_by(*LIST_ORDER))
    if not filters.failure_streak_min:
        rest.append(base.where(n.failure_streak == 0).order_by(n.mobile))
    return rest


async def find_numbers(
    session: AsyncSession,
    filters: NumberFilters,
    *,
    limit: int,
    cursor: str | None,
    key: bytes,
) -> tuple[Sequence[Number], str | None]:
    """One page of matching numbers and the cursor of the next page (None at the end)."""
    want = limit + 1  # one row more than asked says whether another page follows
    after = None if cursor is None else _position(cursor, key, filters.identity())
    rows: list[Number] = []
    for part in _ranges(filters, after):
        rows += (await session.scalars(part.limit(want - len(rows)))).all()
        if len(rows) == want:
            break
    return next_page(
        rows, limit, key, filters.identity(), lambda last: [last.failure_streak, last.mobile]
    )


async def stream_numbers(
    engine: AsyncEngine, filters: NumberFilters, batch: int = 500
) -> AsyncGenerator[Sequence[Row[Any]], None]:
    """Every matching number in the list order (CSV_COLUMNS), `batch` rows at a time, from
    server-side cursors over the list's index ranges: no sort of the whole table first."""
    columns = [NUMBERS.c[name] for name in CSV_COLUMNS]
    async with engine.connect() as connection:
        for part in _ranges(filters, None):
            stmt = part.with_only_columns(*columns).execution_options(yield_per=batch)
            result = await connection.stream(stmt)
            async for rows in result.partitions():
                yield rows


SUPPRESSIONS = {"list": "suppressions"}


async def find_suppressions(
    session: AsyncSession, *, limit: int, cursor: str | None, key: bytes
) -> tuple[Sequence[Number], str | None]:
    """One page of the suppressed numbers, latest suppressed first (ties by mobile)."""
    n = Number
    stmt = select(n).where(n.suppressed_since.is_not(None))
    if cursor is not None:
        since, mobile = _since_position(cursor, key)
        # Ties on the time are rare, so `since <= x` keeps this one index range.
        stmt = stmt.where(
            n.suppressed_since <= since,
            or_(n.suppressed_since < since, and_(n.suppressed_since == since, n.mobile > mobile)),
        )
    query = stmt.order_by(n.suppressed_since.desc(), n.mobile).limit(limit + 1)
    rows = (await session.scalars(query)).all()
    return next_page(rows, limit, key, SUPPRESSIONS, _since_of)


def _since_of(last: Number) -> list[Any]:
    assert last.suppressed_since is not None
    return [last.suppressed_since.astimezone(dt.UTC).isoformat(), last.mobile]


def _since_position(cursor: str, key: bytes) -> tuple[dt.datetime, str]:
    position = decode_cursor(key, cursor, SUPPRESSIONS)
    if len(position) == 2 and all(isinstance(part, str) for part in position):
        try:
            since = dt.datetime.fromisoformat(position[0])
        except ValueError:
            since = None
        if since is not None and since.tzinfo is not None:
            return since, position[1]
    raise not_this_list()
