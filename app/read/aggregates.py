"""Aggregates over deliveries in SQL: batch summaries and time-bucketed stats."""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Integer, cast, extract, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Delivery, DeliveryCount, Report
from app.gateway.sends import send_exists, unreported_numbers
from app.read.buckets import Interval, LocalCalendar, from_epoch, to_epoch

# Every UTC offset in use since 1980 is a multiple of 15 minutes, so 15-minute UTC grains
# never straddle a local hour or day boundary: SQL groups by grain, Python by bucket.
GRAIN_SECONDS = 900


@dataclass(slots=True)
class Counts:
    """Deliveries by outcome and by status word."""

    deliveries: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str, status: str, n: int) -> None:
        self.deliveries += n
        if outcome == "delivered":
            self.delivered += n
        elif outcome == "failed":
            self.failed += n
        else:
            self.pending += n
        self.by_status[status] = self.by_status.get(status, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "deliveries": self.deliveries,
            "delivered": self.delivered,
            "failed": self.failed,
            "pending": self.pending,
            "by_status": dict(sorted(self.by_status.items())),
            "delivery_rate": self.delivered / self.deliveries if self.deliveries else None,
        }


# ---------------------------------------------------------------- batches


async def batch_summary(
    session: AsyncSession, batch_id: str, message_type: str | None = None
) -> dict[str, Any] | None:
    """Counts and done_at range of the deliveries any report of this batch ID names, with
    the numbers of a recorded send that have no report yet counted as pending; None when
    neither a report nor a recorded send names the ID."""
    summary = await _reported_summary(session, batch_id, message_type)
    unreported = await unreported_numbers(session, batch_id, message_type)
    if summary is None:
        if not await send_exists(session, batch_id, message_type):
            return None
        summary = {
            "batch_id": batch_id,
            **{name: 0 for name in ("deliveries", "delivered", "failed", "pending")},
            "by_status": {},
            "first_done_at": None,
            "last_done_at": None,
        }
    # The gateway's WAIT: sent, but not a single report yet.
    summary["pending"] += unreported
    return summary


async def _reported_summary(
    session: AsyncSession, batch_id: str, message_type: str | None
) -> dict[str, Any] | None:
    """Counts and done_at range of the deliveries any report of this batch ID names;
    None when no report names it."""
    named = select(Report.msgid, Report.mobile).where(Report.batch_id == batch_id)
    if message_type is not None:
        named = named.where(Report.type == message_type)
    members = named.distinct().subquery()
    stmt = (
        select(
            Delivery.outcome,
            Delivery.status,
            func.count(),
            func.min(Delivery.done_at),
            func.max(Delivery.done_at),
        )
        .join(
            members,
            (Delivery.msgid == members.c.msgid) & (Delivery.mobile == members.c.mobile),
        )
        .group_by(Delivery.outcome, Delivery.status)
    )
    rows = (await session.execute(stmt)).all()
    if not rows:
        return None
    counts = Counts()
    for outcome, status, n, _, _ in rows:
        counts.add(outcome, status, n)
    summary = counts.as_dict()
    del summary["delivery_rate"]
    return {
        "batch_id": batch_id,
        **summary,
        "first_done_at": min(row[3] for row in rows),
        "last_done_at": max(row[4] for row in rows),
    }


# ---------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class GrainCount:
    """Deliveries done within one 15-minute UTC grain, by outcome and status word."""

    grain: int  # epoch seconds // GRAIN_SECONDS
    outcome: str
    status: str
    count: int


def _grain_expression(dialect: str) -> Any:
    # Literals, not bound parameters: the database must see the GROUP BY expression as the
    # selected one.
    grain = literal_column(str(GRAIN_SECONDS), Integer)
    if dialect == "sqlite":
        # SQLite keeps done_at as UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'; its date functions
        # round to milliseconds (59.9996 s would become the next minute), so cut the fraction.
        whole = func.substr(Delivery.done_at, literal_column("1"), literal_column("19"))
        seconds = cast(func.strftime(literal_column("'%s'"), whole), Integer)
        return seconds // grain
    return cast(func.floor(extract("epoch", Delivery.done_at) / grain), BigInteger)


def _rollup_unit(dialect: str, unit: int) -> Any:
    """delivery_counts.grain as a whole number of `unit` seconds since 1970."""
    if dialect == "sqlite":
        seconds = cast(
            func.strftime(literal_column("'%s'"), func.substr(DeliveryCount.grain, 1, 19)),
            Integer,
        )
        return seconds // literal_column(str(unit), Integer)
    epoch = extract("epoch", DeliveryCount.grain)
    return cast(func.floor(epoch / literal_column(str(unit), Integer)), BigInteger)


def coarsest_unit(starts: list[int]) -> int:
    """The largest of day, hour and grain that every bucket start is a multiple of: the rollup
    can then be summed to that unit in SQL (a month by hour is 720 rows, not 2,880 x words)."""
    for unit in (86400, 3600):
        if all(s % unit == 0 for s in starts):
            return unit
    return GRAIN_SECONDS


async def grain_counts(
    session: AsyncSession,
    start: dt.datetime,
    end: dt.datetime,
    message_type: str | None = None,
    unit: int = GRAIN_SECONDS,
) -> list[GrainCount]:
    """Deliveries with done_at in [start, end), grouped by grain, outcome and status.

    Whole grains come from the delivery_counts rollup; the partial grains at either end are
    counted from deliveries directly, so the answer is exact to the microsecond. With a
    `unit` (a multiple of the grain that every bucket boundary is a multiple of too) the
    rollup's grains are summed per unit, each reported at the unit's first grain.
    """
    first_whole = -(-to_epoch(start) // GRAIN_SECONDS) * GRAIN_SECONDS
    last_whole = to_epoch(end) // GRAIN_SECONDS * GRAIN_SECONDS
    if first_whole >= last_whole:
        return await _scan_grains(session, start, end, message_type)
    head = await _scan_grains(session, start, from_epoch(first_whole), message_type)
    tail = await _scan_grains(session, from_epoch(last_whole), end, message_type)
    slot = _rollup_unit(session.get_bind().dialect.name, unit).label("slot")
    stmt = (
        select(slot, DeliveryCount.outcome, DeliveryCount.status, func.sum(DeliveryCount.count))
        .where(
            DeliveryCount.grain >= from_epoch(first_whole),
            DeliveryCount.grain < from_epoch(last_whole),
        )
        .group_by(slot, DeliveryCount.outcome, DeliveryCount.status)
        .having(func.sum(DeliveryCount.count) != 0)
    )
    if message_type is not None:
        stmt = stmt.where(DeliveryCount.type == message_type)
    rows = (await session.execute(stmt)).all()
    per_grain = unit // GRAIN_SECONDS
    whole = [
        GrainCount(int(n_slot) * per_grain, outcome, status, int(n))
        for n_slot, outcome, status, n in rows
    ]
    return head + whole + tail


async def _scan_grains(
    session: AsyncSession,
    start: dt.datetime,
    end: dt.datetime,
    message_type: str | None = None,
) -> list[GrainCount]:
    """grain_counts computed from the deliveries table itself (for short ranges)."""
    if start >= end:
        return []
    grain = _grain_expression(session.get_bind().dialect.name).label("grain")
    stmt = (
        select(grain, Delivery.outcome, Delivery.status, func.count())
        .where(Delivery.done_at >= start, Delivery.done_at < end)
        .group_by(grain, Delivery.outcome, Delivery.status)
    )
    if message_type is not None:
        stmt = stmt.where(Delivery.type == message_type)
    rows = (await session.execute(stmt)).all()
    return [GrainCount(int(g), outcome, status, int(n)) for g, outcome, status, n in rows]


def fold_buckets(
    grains: Iterable[GrainCount], starts: list[int], start: dt.datetime
) -> tuple[Counts, list[Counts]]:
    """Totals and per-bucket counts of grains, given the bucket starts in epoch seconds."""
    totals = Counts()
    buckets = [Counts() for _ in starts]
    floor = to_epoch(start)
    for g in grains:
        # The grain holding `start` may begin before the first bucket; its rows do not.
        index = bisect.bisect_right(starts, max(g.grain * GRAIN_SECONDS, floor)) - 1
        buckets[max(index, 0)].add(g.outcome, g.status, g.count)
        totals.add(g.outcome, g.status, g.count)
    return totals, buckets


async def delivery_stats(
    session: AsyncSession,
    start: dt.datetime,
    end: dt.datetime,
    interval: Interval,
    zone: ZoneInfo,
    message_type: str | None = None,
) -> dict[str, Any]:
    """Totals and local-calendar buckets of deliveries done in [start, end)."""
    calendar = LocalCalendar(zone, interval)
    starts = calendar.boundaries(start, end)
    grains = await grain_counts(session, start, end, message_type, coarsest_unit(starts))
    totals, buckets = fold_buckets(grains, starts, start)
    return {
        "totals": totals.as_dict(),
        "buckets": [
            {"start": from_epoch(s).astimezone(zone), **counts.as_dict()}
            for s, counts in zip(starts, buckets, strict=True)
        ],
    }
