"""The read path: lookups, filters, keyset cursors and aggregates, all in SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Ambiguous, NotFound
from app.models import Delivery, Report


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


def _columns(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
