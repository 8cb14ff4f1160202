"""The read path: lookups, filters, keyset cursors and aggregates, all in SQL."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.errors import Ambiguous, NotFound
from app.db.models import DELIVERIES, Delivery, Report
from app.read.cursors import decode_cursor, next_page, not_this_list


async def get_delivery(
    session: AsyncSession, msgid: str, mobile: str | None = None
) -> dict[str, Any]:
    """One delivery with its history; 404 if none, 409 if the msgid names several numbers."""
    stmt = select(Delivery).where(Delivery.msgid == msgid)
    if mobile is not None:
        stmt = stmt.where(Delivery.mobile == mobile)
    deliveries = (await session.scalars(stmt.order_by(Delivery.mobile).limit(101))).all()
    if not deliveries:
        raise NotFound(f"no delivery with msgid {msgid!r}")
    if len(deliveries) > 1:
        raise Ambiguous(
            "several deliveries share this msgid; pass mobile",
            mobiles=[d.mobile for d in deliveries],
        )
    delivery = deliveries[0]
    history = (
        await session.scalars(
            select(Report)
            .where(Report.msgid == delivery.msgid, Report.mobile == delivery.mobile)
            .order_by(Report.received_at, Report.id)
        )
    ).all()
    return {**_columns(delivery), "history": history}


@dataclass(frozen=True, slots=True)
class DeliveryFilters:
    """The normalised filters of the deliveries list and its CSV export (None = any)."""

    mobile: str | None = None
    msgid: str | None = None
    batch_id: str | None = None
    statuses: tuple[str, ...] = ()
    outcome: str | None = None
    type: str | None = None
    done_from: dt.datetime | None = None
    done_to: dt.datetime | None = None

    def identity(self) -> dict[str, Any]:
        """What a cursor is bound to: the list it came from and every filter value."""
        return {
            "list": "deliveries",
            "mobile": self.mobile,
            "msgid": self.msgid,
            "batch_id": self.batch_id,
            "status": list(self.statuses),
            "outcome": self.outcome,
            "type": self.type,
            "done_from": self.done_from.isoformat() if self.done_from else None,
            "done_to": self.done_to.isoformat() if self.done_to else None,
        }

    def where(self) -> list[ColumnElement[bool]]:
        d = Delivery
        conditions: list[ColumnElement[bool]] = []
        if self.mobile is not None:
            conditions.append(d.mobile == self.mobile)
        if self.msgid is not None:
            conditions.append(d.msgid == self.msgid)
        if self.batch_id is not None:
            conditions.append(d.batch_id == self.batch_id)
        # A status word or an outcome matches a large share of all rows. Beside a number,
        # msgid or ID, SQLite (which keeps no statistics unless ANALYZE runs) would still
        # pick their index and scan every failure for one number; `|| ''` keeps them off
        # the index choice on both databases, as a plain filter on the selective index.
        selective = self.mobile is not None or self.msgid is not None or self.batch_id is not None
        status = d.status.concat("") if selective else d.status
        outcome = d.outcome.concat("") if selective else d.outcome
        if len(self.statuses) == 1:
            conditions.append(status == self.statuses[0])
        elif self.statuses:
            conditions.append(status.in_(self.statuses))
        if self.outcome is not None:
            conditions.append(outcome == self.outcome)
        if self.type is not None:
            conditions.append(d.type == self.type)
        if self.done_from is not None:
            conditions.append(d.done_at >= self.done_from)
        if self.done_to is not None:
            conditions.append(d.done_at < self.done_to)
        return conditions


# The list order: newest done_at first, ties by msgid then mobile (the indexes of
# migration 0002 store exactly this order).
LIST_ORDER = (Delivery.done_at.desc(), Delivery.msgid, Delivery.mobile)


def _after(done_at: dt.datetime, msgid: str, mobile: str) -> ColumnElement[bool]:
    """Rows after (done_at, msgid, mobile) in the list order. The directions are mixed, so
    no single row comparison fits; `done_at <= x` keeps it one index range scan."""
    d = Delivery
    return and_(
        d.done_at <= done_at,
        or_(
            d.done_at < done_at,
            tuple_(d.msgid, d.mobile) > tuple_(msgid, mobile),
        ),
    )


def _position(cursor: str, key: bytes, filters: DeliveryFilters) -> tuple[dt.datetime, str, str]:
    position = decode_cursor(key, cursor, filters.identity())
    if len(position) == 3 and all(isinstance(part, str) for part in position):
        done_at, msgid, mobile = position
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(done_at)
            if when.tzinfo is not None:
                return when, msgid, mobile
    raise not_this_list()


async def find_deliveries(
    session: AsyncSession,
    filters: DeliveryFilters,
    *,
    limit: int,
    cursor: str | None,
    key: bytes,
) -> tuple[Sequence[Delivery], str | None]:
    """One page of matching deliveries and the cursor of the next page (None at the end)."""
    stmt = select(Delivery).where(*filters.where())
    if cursor is not None:
        stmt = stmt.where(_after(*_position(cursor, key, filters)))
    rows = (await session.scalars(stmt.order_by(*LIST_ORDER).limit(limit + 1))).all()
    return next_page(rows, limit, key, filters.identity(), _position_of)


def _position_of(last: Delivery) -> list[Any]:
    return [last.done_at.astimezone(dt.UTC).isoformat(), last.msgid, last.mobile]


async def stream_deliveries(
    engine: AsyncEngine, filters: DeliveryFilters, columns: Sequence[str], batch: int = 500
) -> AsyncGenerator[Sequence[Row[Any]], None]:
    """Every matching delivery in the list order, `batch` rows at a time, from a
    server-side cursor: memory stays flat however many rows match."""
    stmt = (
        select(*(DELIVERIES.c[name] for name in columns))
        .where(*filters.where())
        .order_by(*LIST_ORDER)
        .execution_options(yield_per=batch)
    )
    async with engine.connect() as connection:
        result = await connection.stream(stmt)
        async for rows in result.partitions():
            yield rows


def _columns(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
