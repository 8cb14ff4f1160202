"""Deliveries still waiting for their final report: the age of the oldest, for /metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.metrics import Metrics
from app.db.models import Delivery

log = logging.getLogger("mboxii_dlr.backlog")

#: Deliveries done longer ago than this are past any alert's interest (and odd dates, years
#: back, would otherwise pin the age for good).
HORIZON = dt.timedelta(days=7)
REFRESH_SECONDS = 60.0


async def oldest_pending_age(engine: AsyncEngine, now: dt.datetime | None = None) -> float:
    """Seconds since the oldest delivery done within HORIZON whose state is still pending
    was done (0 when none): one range of the (outcome, done_at) index."""
    now = now or dt.datetime.now(dt.UTC)
    query = select(func.min(Delivery.done_at)).where(
        Delivery.outcome == "pending", Delivery.done_at > now - HORIZON
    )
    async with engine.connect() as connection:
        oldest = (await connection.execute(query)).scalar_one_or_none()
    return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0


async def observe_pending(engine: AsyncEngine, metrics: Metrics) -> None:
    """Keep mboxii_dlr_deliveries_pending_oldest_seconds current, every REFRESH_SECONDS
    (from REFRESH_SECONDS after start: the alert on it waits far longer)."""
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            metrics.pending_oldest.set(await oldest_pending_age(engine))
        except Exception as exc:  # the database may be away; /readyz says so
            log.debug("pending deliveries not read (%s)", exc.__class__.__name__)
