"""What the dashboard shows, read in SQL: windows of stats, failures, pending, quarantine."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Delivery, Event, Number, Rejected, Report
from app.gateway.sends import unreported_since
from app.read.aggregates import delivery_stats
from app.read.buckets import Interval, LocalCalendar, from_epoch, to_epoch

LATEST_FAILURES = 10
FAILING_NUMBERS = 10
HOURS = 24
DAYS = 30


def window(
    zone: ZoneInfo, interval: Interval, count: int, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the `count` whole local hours or days that end with the current one."""
    calendar = LocalCalendar(zone, interval)
    current = to_epoch(now)
    start = calendar.bucket_start(current)
    for _ in range(count - 1):
        start = calendar.bucket_start(start - 1)
    return from_epoch(start), from_epoch(calendar.next_start(current))


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Quarantined requests: rows not replayed yet, and all rows."""

    waiting: int
    total: int


@dataclass(frozen=True, slots=True)
class Overview:
    """Every figure of the dashboard's front page, read at one moment."""

    now: dt.datetime
    hours: dict[str, Any]  # delivery_stats of the last 24 local hours, plus from/to
    days: dict[str, Any]  # delivery_stats of the last 30 local days, plus from/to
    pending: int
    unreported: int  # numbers sent in the last 24 hours without any report yet
    failures: Sequence[Delivery]
    failing: Sequence[Number]  # the numbers with the longest failure streaks
    quarantine: Quarantine


async def stats_window(
    session: AsyncSession, zone: ZoneInfo, interval: Interval, count: int, now: dt.datetime
) -> dict[str, Any]:
    start, end = window(zone, interval, count, now)
    stats = await delivery_stats(session, start, end, interval, zone)
    return {"from": start, "to": end, "interval": interval, **stats}


async def pending_count(session: AsyncSession) -> int:
    """Deliveries not final yet, whenever they were done."""
    stmt = select(func.count()).select_from(Delivery).where(Delivery.outcome == "pending")
    return int(await session.scalar(stmt) or 0)


async def latest_failures(
    session: AsyncSession, limit: int = LATEST_FAILURES
) -> Sequence[Delivery]:
    """The newest failed deliveries by done_at."""
    stmt = (
        select(Delivery)
        .where(Delivery.outcome == "failed")
        .order_by(Delivery.done_at.desc(), Delivery.msgid, Delivery.mobile)
        .limit(limit)
    )
    return (await session.scalars(stmt)).all()


async def failing_numbers(session: AsyncSession, limit: int = FAILING_NUMBERS) -> Sequence[Number]:
    """The numbers with the longest failure streaks (the streak index, from its top)."""
    stmt = (
        select(Number)
        .where(Number.failure_streak > 0)
        .order_by(Number.failure_streak.desc(), Number.mobile)
        .limit(limit)
    )
    return (await session.scalars(stmt)).all()


async def quarantine_counts(session: AsyncSession) -> Quarantine:
    stmt = select(func.count(), func.count(Rejected.replayed_at)).select_from(Rejected)
    total, replayed = (await session.execute(stmt)).one()
    return Quarantine(waiting=int(total) - int(replayed), total=int(total))


async def event_counts(session: AsyncSession) -> dict[str, int]:
    """Outbound event rows waiting and failed (each counted through its partial index)."""
    counts = {}
    for status in ("pending", "failed"):
        stmt = select(func.count()).select_from(Event).where(Event.status == status)
        counts[status] = int((await session.execute(stmt)).scalar_one())
    return counts


def merge_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The Counts of two disjoint ranges together."""
    merged = {k: a[k] + b[k] for k in ("deliveries", "delivered", "failed", "pending")}
    words = sorted(set(a["by_status"]) | set(b["by_status"]))
    merged["by_status"] = {w: a["by_status"].get(w, 0) + b["by_status"].get(w, 0) for w in words}
    merged["delivery_rate"] = (
        merged["delivered"] / merged["deliveries"] if merged["deliveries"] else None
    )
    return merged


class OverviewCache:
    """The front page's figures, shared by everyone watching it.

    Each open dashboard asks again every few seconds, so viewers share one reading for
    `fresh` seconds (one of them reads while the others wait for it). Of the 30-day window
    only the current day changes much: the closed days are read again every `closed`
    seconds, which bounds how late a report done on an earlier day shows up there.
    """

    def __init__(self, fresh: float = 2.0, closed: float = 60.0) -> None:
        self.fresh, self.closed = fresh, closed
        self._lock = asyncio.Lock()
        self._overview: tuple[float, Overview] | None = None
        self._closed_days: tuple[float, dt.datetime, dt.datetime, dict[str, Any]] | None = None

    async def get(self, session: AsyncSession, zone: ZoneInfo) -> Overview:
        async with self._lock:
            if self._overview is not None and time.monotonic() - self._overview[0] < self.fresh:
                return self._overview[1]
            now = dt.datetime.now(dt.UTC)
            overview = Overview(
                now=now,
                hours=await stats_window(session, zone, "hour", HOURS, now),
                days=await self._days(session, zone, now),
                pending=await pending_count(session),
                unreported=await unreported_since(session, now - dt.timedelta(hours=HOURS)),
                failures=await latest_failures(session),
                failing=await failing_numbers(session),
                quarantine=await quarantine_counts(session),
            )
            self._overview = (time.monotonic(), overview)
            return overview

    async def _days(
        self, session: AsyncSession, zone: ZoneInfo, now: dt.datetime
    ) -> dict[str, Any]:
        start, end = window(zone, "day", DAYS, now)
        today = from_epoch(LocalCalendar(zone, "day").bucket_start(to_epoch(now)))
        cached = self._closed_days
        if (
            cached is None
            or (cached[1], cached[2]) != (start, today)
            or time.monotonic() - cached[0] >= self.closed
        ):
            closed = await delivery_stats(session, start, today, "day", zone)
            cached = self._closed_days = (time.monotonic(), start, today, closed)
        closed = cached[3]
        current = await delivery_stats(session, today, end, "day", zone)
        return {
            "from": start,
            "to": end,
            "interval": "day",
            "totals": merge_counts(closed["totals"], current["totals"]),
            "buckets": [*closed["buckets"], *current["buckets"]],
        }


def _newest_first(stmt: Any) -> Any:
    return stmt.order_by(Delivery.done_at.desc(), Delivery.msgid, Delivery.mobile)


async def deliveries_to(session: AsyncSession, mobile: str, limit: int) -> Sequence[Delivery]:
    """Deliveries to one number (E.164), newest first."""
    stmt = _newest_first(select(Delivery).where(Delivery.mobile == mobile)).limit(limit)
    return (await session.scalars(stmt)).all()


async def deliveries_with_msgid(
    session: AsyncSession, msgid: str, limit: int
) -> Sequence[Delivery]:
    """Deliveries sharing one msgid (one per number), newest first."""
    stmt = _newest_first(select(Delivery).where(Delivery.msgid == msgid)).limit(limit)
    return (await session.scalars(stmt)).all()


async def batch_deliveries(
    session: AsyncSession, batch_id: str, limit: int, message_type: str | None = None
) -> Sequence[Delivery]:
    """Deliveries any report of a batch ID names (as batch_summary counts them), newest first."""
    named = select(Report.msgid, Report.mobile).where(Report.batch_id == batch_id)
    if message_type is not None:
        named = named.where(Report.type == message_type)
    members = named.distinct().subquery()
    stmt = _newest_first(
        select(Delivery).join(
            members,
            (Delivery.msgid == members.c.msgid) & (Delivery.mobile == members.c.mobile),
        )
    ).limit(limit)
    return (await session.scalars(stmt)).all()
