"""Retention: delete old deliveries with all their reports (and what their numbers' summaries
counted of them), old sends and quarantine rows, and delivered outbound events."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, delete, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.models import Delivery, Event, Rejected, Report, Send, SendNumber
from app.db.numbers import refresh as refresh_numbers

log = logging.getLogger("mboxii_dlr.retention")

DELIVERIES = cast(Table, Delivery.__table__)
REPORTS = cast(Table, Report.__table__)
REJECTED = cast(Table, Rejected.__table__)
SENDS = cast(Table, Send.__table__)
SEND_NUMBERS = cast(Table, SendNumber.__table__)
EVENTS = cast(Table, Event.__table__)

CLI_BATCH = 5000
# The running service purges beside ingest: small transactions, so a callback that needs
# a row lock (or, on SQLite, the write lock) waits for one short batch at most.
BACKGROUND_BATCH = 500
BACKGROUND_PAUSE = 0.01


@dataclass(slots=True)
class PurgeResult:
    """Rows deleted so far."""

    deliveries: int = 0
    reports: int = 0
    rejected: int = 0
    sends: int = 0
    events: int = 0

    def describe(self) -> str:
        return (
            f"{self.deliveries} deliveries, {self.reports} reports, "
            f"{self.rejected} quarantined requests, {self.sends} sends, "
            f"{self.events} delivered events"
        )


def cutoff_for(days: float, now: dt.datetime | None = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)


async def purge(
    engine: AsyncEngine,
    cutoff: dt.datetime,
    *,
    batch_size: int = CLI_BATCH,
    pause: float = 0.0,
    progress: Callable[[PurgeResult], None] | None = None,
) -> PurgeResult:
    """Delete every delivery last heard of before `cutoff` together with its reports, then
    the quarantine rows last seen before it, then the sends made and due before it (with
    their numbers), then the events delivered that were created before it (pending and
    failed ones stay: they still have to be sent, or looked at); each batch is one
    transaction."""
    result = PurgeResult()
    after: tuple[str, str] | None = None
    while True:
        # Walk the primary key, so each batch costs the same however large the table is,
        # and no index on last_received_at has to slow every ingest down.
        query = (
            select(DELIVERIES.c.msgid, DELIVERIES.c.mobile, DELIVERIES.c.last_received_at)
            .order_by(DELIVERIES.c.msgid, DELIVERIES.c.mobile)
            .limit(batch_size)
        )
        if after is not None:
            query = query.where(tuple_(DELIVERIES.c.msgid, DELIVERIES.c.mobile) > tuple_(*after))
        # One transaction per batch: the page of keys and the deletion of its old ones.
        deliveries = reports = 0
        async with engine.begin() as connection:
            rows = (await connection.execute(query)).all()
            old = [(row.msgid, row.mobile) for row in rows if row.last_received_at < cutoff]
            if old:
                deliveries, reports = await delete_deliveries(connection, old, cutoff)
        result.deliveries += deliveries
        result.reports += reports
        if not rows:
            break
        after = (rows[-1].msgid, rows[-1].mobile)
        if old and progress is not None:
            progress(result)
        if pause:
            await asyncio.sleep(pause)

    async def delete_rejected(connection: AsyncConnection, ids: Sequence[int]) -> int:
        # Seen again since the select: a retry keeps its row.
        stmt = delete(REJECTED).where(REJECTED.c.id.in_(ids), REJECTED.c.last_seen_at < cutoff)
        return (await connection.execute(stmt)).rowcount

    async def delete_sends(connection: AsyncConnection, ids: Sequence[int]) -> int:
        await connection.execute(delete(SEND_NUMBERS).where(SEND_NUMBERS.c.send_id.in_(ids)))
        return (await connection.execute(delete(SENDS).where(SENDS.c.id.in_(ids)))).rowcount

    def rejected_gone(n: int) -> None:
        result.rejected += n
        if progress is not None:
            progress(result)

    def sends_gone(n: int) -> None:
        result.sends += n
        if progress is not None:
            progress(result)

    stale = REJECTED.c.last_seen_at < cutoff
    await _delete_by_id(
        engine, REJECTED.c.id, stale, delete_rejected, batch_size, pause, rejected_gone
    )
    done = and_(
        SENDS.c.created_at < cutoff,
        # a send scheduled past the cutoff still has reports to come
        or_(SENDS.c.send_at.is_(None), SENDS.c.send_at < cutoff),
    )
    await _delete_by_id(engine, SENDS.c.id, done, delete_sends, batch_size, pause, sends_gone)

    async def delete_events(connection: AsyncConnection, ids: Sequence[int]) -> int:
        stmt = delete(EVENTS).where(EVENTS.c.id.in_(ids), EVENTS.c.status == "delivered")
        return (await connection.execute(stmt)).rowcount

    def events_gone(n: int) -> None:
        result.events += n
        if progress is not None:
            progress(result)

    old_delivered = and_(EVENTS.c.status == "delivered", EVENTS.c.created_at < cutoff)
    await _delete_by_id(
        engine, EVENTS.c.id, old_delivered, delete_events, batch_size, pause, events_gone
    )
    return result


async def _delete_by_id(
    engine: AsyncEngine,
    id_column: Any,
    condition: Any,
    delete_rows: Callable[[AsyncConnection, Sequence[int]], Awaitable[int]],
    batch_size: int,
    pause: float,
    gone: Callable[[int], None],
) -> None:
    """Delete the rows matching `condition` in batches of ids, one transaction each;
    `gone(n)` hears how many each batch deleted."""
    after_id = 0
    while True:
        async with engine.begin() as connection:
            ids = (
                await connection.scalars(
                    select(id_column)
                    .where(id_column > after_id, condition)
                    .order_by(id_column)
                    .limit(batch_size)
                )
            ).all()
            if not ids:
                return
            after_id = ids[-1]
            deleted = await delete_rows(connection, ids)
        gone(deleted)
        if pause:
            await asyncio.sleep(pause)


async def delete_deliveries(
    connection: AsyncConnection,
    keys: list[tuple[str, str]],
    cutoff: dt.datetime,
) -> tuple[int, int]:
    """Delete these deliveries, if still old, and their reports; return how many of each."""
    # The delete is the batch's first write: SQLite's driver begins the transaction there,
    # so the write lock is taken before it reads and it sees the newest data. It checks the
    # age again: a report that arrived since the select keeps its
    # delivery. On PostgreSQL it skips rows an ingest transaction holds (they are being
    # refreshed), so the purge never waits for ingest and the two cannot deadlock. Reports
    # go only for the deliveries actually deleted; a report committed for one of them after
    # this point recreates its delivery (ON CONFLICT then finds no row).
    key = tuple_(DELIVERIES.c.msgid, DELIVERIES.c.mobile)
    # msgid IN (...) as well: SQLite searches the primary key for it, but scans the whole
    # table for an IN list of (msgid, mobile) row values.
    msgids = DELIVERIES.c.msgid.in_({k[0] for k in keys})
    doomed = (
        select(DELIVERIES.c.msgid, DELIVERIES.c.mobile)
        .where(msgids, key.in_(keys), DELIVERIES.c.last_received_at < cutoff)
        .with_for_update(skip_locked=True)
    )
    deleted = (
        await connection.execute(
            delete(DELIVERIES)
            .where(msgids, key.in_(doomed))
            .returning(DELIVERIES.c.msgid, DELIVERIES.c.mobile)
        )
    ).all()
    if not deleted:
        return 0, 0
    gone = await connection.execute(
        delete(REPORTS).where(
            # msgid alone leads to the identity index; SQLite scans the whole table for
            # an IN list of (msgid, mobile) row values.
            REPORTS.c.msgid.in_({k[0] for k in deleted}),
            tuple_(REPORTS.c.msgid, REPORTS.c.mobile).in_([tuple(k) for k in deleted]),
        )
    )
    # The numbers' summaries count what is left, in the same transaction; a number left
    # without deliveries is forgotten too, unless it is suppressed.
    await refresh_numbers(connection, [k[1] for k in deleted])
    return len(deleted), gone.rowcount


async def purge_periodically(
    engine: AsyncEngine, days: float, interval: float, first_delay: float
) -> None:
    """Run the retention purge shortly after start and then every `interval` seconds."""
    await asyncio.sleep(first_delay)
    while True:
        cutoff = cutoff_for(days)
        try:
            result = await purge(
                engine, cutoff, batch_size=BACKGROUND_BATCH, pause=BACKGROUND_PAUSE
            )
        except Exception as exc:  # the database may be away; the next round tries again
            log.warning(
                "retention purge failed (%s); next try in %.0fs", exc.__class__.__name__, interval
            )
        else:
            if result.deliveries or result.rejected or result.sends or result.events:
                log.info(
                    "retention: deleted %s older than %s", result.describe(), cutoff.isoformat()
                )
        await asyncio.sleep(interval)
