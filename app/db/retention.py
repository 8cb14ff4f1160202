"""Retention: delete old deliveries with all their reports (and what their numbers' summaries
counted of them), old sends and quarantine rows, and delivered outbound events.

With `reports` partitioned by month (PostgreSQL), whole months go instead: the deliveries
done before the first day of the cutoff's month are deleted in batches through the done_at
index, then the month partitions before that day are dropped (app.db.partitions); a report
is never deleted row by row there, except the few in the default partition (odd dates).
Retention then works in whole months: what goes is kept up to a month longer than
DLR_RETENTION_DAYS says. Elsewhere (SQLite, or PostgreSQL before migration 0011) deliveries
last heard of before the cutoff are deleted with their reports."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import (
    Select,
    String,
    and_,
    bindparam,
    column,
    delete,
    func,
    or_,
    select,
    table,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import partitions
from app.db.jobs import JobRunner
from app.db.models import (
    DELIVERIES,
    EVENTS,
    REJECTED,
    REPORTS,
    SEND_NUMBERS,
    SENDS,
)
from app.db.numbers import refresh as refresh_numbers

log = logging.getLogger("mboxii_dlr.retention")


CLI_BATCH = 5000
# The running service purges beside ingest: small transactions, so a callback that needs
# a row lock (or, on SQLite, the write lock) waits for one short batch at most.
BACKGROUND_BATCH = 500
BACKGROUND_PAUSE = 0.01


@dataclass(slots=True)
class PurgeResult:
    """Rows deleted so far."""

    deliveries: int = 0
    #: rows deleted one by one
    reports: int = 0
    rejected: int = 0
    sends: int = 0
    events: int = 0
    #: month partitions of reports dropped whole, and their rows by the planner's statistics
    partitions: int = 0
    partition_reports: int = 0

    def describe(self) -> str:
        text = (
            f"{self.deliveries} deliveries, {self.reports} reports, "
            f"{self.rejected} quarantined requests, {self.sends} sends, "
            f"{self.events} delivered events"
        )
        if self.partitions:
            text += (
                f", {self.partitions} month partitions of reports "
                f"(about {self.partition_reports} reports)"
            )
        return text


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
    """Delete every delivery last heard of before `cutoff` together with its reports (with
    monthly partitions: done before the cutoff's month, and whole months of reports), then
    the quarantine rows last seen before it, then the sends made and due before it (with
    their numbers), then the events delivered that were created before it (pending and
    failed ones stay: they still have to be sent, or looked at); each batch is one
    transaction."""
    run = _Purge(engine, cutoff, batch_size, pause, progress)
    async with engine.connect() as connection:
        partitioned = await partitions.is_partitioned(connection)
    if partitioned:
        await run.months()
    else:
        await run.deliveries()
    await run.rest()
    return run.result


@dataclass(slots=True)
class _Purge:
    """One purge: what it deletes, how, and what it has deleted so far."""

    engine: AsyncEngine
    cutoff: dt.datetime
    batch_size: int
    pause: float
    progress: Callable[[PurgeResult], None] | None
    result: PurgeResult = field(default_factory=PurgeResult)

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(self.result)

    async def deliveries(self) -> None:
        """Deliveries last heard of before the cutoff, with all their reports."""
        d = DELIVERIES.c

        # Walk the primary key, so each batch costs the same however large the table is,
        # and no index on last_received_at has to slow every ingest down.
        def page(after: tuple[Any, ...] | None) -> Select[Any]:
            query = select(d.msgid, d.mobile, d.last_received_at).order_by(d.msgid, d.mobile)
            if after is not None:
                query = query.where(tuple_(d.msgid, d.mobile) > tuple_(*after))
            return query

        await self._walk_deliveries(page, lambda row: (row.msgid, row.mobile))

    async def months(self) -> None:
        """Deliveries done before the cutoff's month (and last heard of before the cutoff),
        with their reports outside the months about to go; then those months, whole."""
        boundary = partitions.month_start(self.cutoff)
        async with self.engine.connect() as connection:
            default = next(
                (p.name for p in await partitions.partitions(connection) if p.is_default), None
            )
        d = DELIVERIES.c

        # Newest first from the boundary down: the order of
        # ix_deliveries_done_at_msgid_mobile, so each batch is one range of it, however
        # large the table.
        def page(after: tuple[Any, ...] | None) -> Select[Any]:
            query = (
                select(d.msgid, d.mobile, d.done_at, d.last_received_at)
                .where(d.done_at < boundary)
                .order_by(d.done_at.desc(), d.msgid, d.mobile)
            )
            if after is not None:
                done_at, msgid, mobile = after
                # Mixed directions: no single row comparison fits; done_at <= x keeps one
                # range.
                query = query.where(
                    d.done_at <= done_at,
                    or_(d.done_at < done_at, tuple_(d.msgid, d.mobile) > tuple_(msgid, mobile)),
                )
            return query

        await self._walk_deliveries(
            page, lambda row: (row.done_at, row.msgid, row.mobile), (boundary, default)
        )
        dropped = await partitions.drop_partitions_before(self.engine, boundary)
        if dropped.partitions:
            self.result.partitions += len(dropped.partitions)
            self.result.partition_reports += dropped.rows
            self._tell()

    async def _walk_deliveries(
        self,
        page: Callable[[tuple[Any, ...] | None], Select[Any]],
        key: Callable[[Any], tuple[Any, ...]],
        months_going: tuple[dt.datetime, str | None] | None = None,
    ) -> None:
        """Walk the deliveries `page` lists, a batch at a time after the `key` of the last
        one read, deleting those last heard of before the cutoff."""
        after: tuple[Any, ...] | None = None
        while True:
            # One transaction per batch: the page of keys and the deletion of its old ones.
            deliveries = reports = 0
            async with self.engine.begin() as connection:
                rows = (await connection.execute(page(after).limit(self.batch_size))).all()
                old = [
                    (row.msgid, row.mobile) for row in rows if row.last_received_at < self.cutoff
                ]
                if old:
                    deliveries, reports = await delete_deliveries(
                        connection, old, self.cutoff, months_going=months_going
                    )
            self.result.deliveries += deliveries
            self.result.reports += reports
            if not rows:
                return
            after = key(rows[-1])
            if old:
                self._tell()
            if self.pause:
                await asyncio.sleep(self.pause)

    async def rest(self) -> None:
        """Quarantine rows last seen before the cutoff, sends made and due before it, and
        the events delivered that were created before it."""
        cutoff = self.cutoff

        async def delete_rejected(connection: AsyncConnection, ids: Sequence[int]) -> int:
            # Seen again since the select: a retry keeps its row.
            stmt = delete(REJECTED).where(REJECTED.c.id.in_(ids), REJECTED.c.last_seen_at < cutoff)
            return (await connection.execute(stmt)).rowcount

        async def delete_sends(connection: AsyncConnection, ids: Sequence[int]) -> int:
            await connection.execute(delete(SEND_NUMBERS).where(SEND_NUMBERS.c.send_id.in_(ids)))
            return (await connection.execute(delete(SENDS).where(SENDS.c.id.in_(ids)))).rowcount

        async def delete_events(connection: AsyncConnection, ids: Sequence[int]) -> int:
            stmt = delete(EVENTS).where(EVENTS.c.id.in_(ids), EVENTS.c.status == "delivered")
            return (await connection.execute(stmt)).rowcount

        stale = REJECTED.c.last_seen_at < cutoff
        await self._delete_by_id(REJECTED.c.id, stale, delete_rejected, "rejected")
        done = and_(
            SENDS.c.created_at < cutoff,
            # a send scheduled past the cutoff still has reports to come
            or_(SENDS.c.send_at.is_(None), SENDS.c.send_at < cutoff),
        )
        await self._delete_by_id(SENDS.c.id, done, delete_sends, "sends")
        old_delivered = and_(EVENTS.c.status == "delivered", EVENTS.c.created_at < cutoff)
        await self._delete_by_id(EVENTS.c.id, old_delivered, delete_events, "events")

    async def _delete_by_id(
        self,
        id_column: Any,
        condition: Any,
        delete_rows: Callable[[AsyncConnection, Sequence[int]], Awaitable[int]],
        counted_as: Literal["rejected", "sends", "events"],
    ) -> None:
        """Delete the rows matching `condition` in batches of ids, one transaction each,
        counting each batch's deletions in the result's `counted_as`."""
        after_id = 0
        while True:
            async with self.engine.begin() as connection:
                ids = (
                    await connection.scalars(
                        select(id_column)
                        .where(id_column > after_id, condition)
                        .order_by(id_column)
                        .limit(self.batch_size)
                    )
                ).all()
                if not ids:
                    return
                after_id = ids[-1]
                deleted = await delete_rows(connection, ids)
            setattr(self.result, counted_as, getattr(self.result, counted_as) + deleted)
            self._tell()
            if self.pause:
                await asyncio.sleep(self.pause)


async def delete_deliveries(
    connection: AsyncConnection,
    keys: list[tuple[str, str]],
    cutoff: dt.datetime,
    months_going: tuple[dt.datetime, str | None] | None = None,
) -> tuple[int, int]:
    """Delete these deliveries, if still old, and their reports; return how many of each.
    With `months_going` (boundary, default partition), the reports done before the boundary
    are left to go with their month partitions, except those in the default partition."""
    # The delete is the batch's first write: SQLite's driver begins the transaction there,
    # so the write lock is taken before it reads and it sees the newest data. It checks the
    # age again: a report that arrived since the select keeps its
    # delivery. On PostgreSQL it skips rows an ingest transaction holds (they are being
    # refreshed), so the purge never waits for ingest and the two cannot deadlock. Reports
    # go only for the deliveries actually deleted; a report committed for one of them after
    # this point recreates its delivery (ON CONFLICT then finds no row).
    postgres = connection.dialect.name == "postgresql"
    doomed = (
        select(DELIVERIES.c.msgid, DELIVERIES.c.mobile)
        .where(_among(DELIVERIES, keys, postgres), DELIVERIES.c.last_received_at < cutoff)
        .with_for_update(skip_locked=True)
    )
    deleted = (
        await connection.execute(
            delete(DELIVERIES)
            .where(
                DELIVERIES.c.msgid.in_({k[0] for k in keys}),
                tuple_(DELIVERIES.c.msgid, DELIVERIES.c.mobile).in_(doomed),
            )
            .returning(DELIVERIES.c.msgid, DELIVERIES.c.mobile)
        )
    ).all()
    if not deleted:
        return 0, 0
    gone_keys = [(k[0], k[1]) for k in deleted]
    theirs = _among(REPORTS, gone_keys, postgres)
    if months_going is None:
        count = (await connection.execute(delete(REPORTS).where(theirs))).rowcount
    else:
        count = await _delete_reports_outside_months(connection, theirs, gone_keys, months_going)
    # The numbers' summaries count what is left, in the same transaction; a number left
    # without deliveries is forgotten too, unless it is suppressed.
    await refresh_numbers(connection, [k[1] for k in deleted])
    return len(deleted), count


async def _delete_reports_outside_months(
    connection: AsyncConnection,
    theirs: Any,
    keys: list[tuple[str, str]],
    months_going: tuple[dt.datetime, str | None],
) -> int:
    """The reports of deleted deliveries that will not go with a month partition: done at or
    after the boundary, or (odd dates) in the default partition."""
    boundary, default = months_going
    postgres = connection.dialect.name == "postgresql"
    # done_at >= boundary leaves the months about to be dropped out of the plan entirely.
    gone = await connection.execute(delete(REPORTS).where(theirs, REPORTS.c.done_at >= boundary))
    count: int = gone.rowcount
    if default is not None:
        # The default partition's rows done before the boundary (odd dates) have no month
        # to go with.
        odd = table(default, *(column(c.name) for c in REPORTS.c))
        gone = await connection.execute(
            delete(odd).where(_among(odd, keys, postgres), odd.c.done_at < boundary)
        )
        count += gone.rowcount
    return count


def _among(rows: Any, keys: list[tuple[str, str]], postgres: bool) -> Any:
    """(msgid, mobile) of `rows` is one of `keys`, as each database finds them fastest.

    PostgreSQL: a join with the two arrays unnested, found through the msgid index; it
    plans an IN list of thousands of row values as one OR per row it reads (a purge batch
    of 5000 took minutes). SQLite: msgid IN (...) leads to the index, and the row values'
    IN list is a lookup table."""
    if postgres:
        pairs = select(
            func.unnest(
                bindparam("msgids", [k[0] for k in keys], ARRAY(String), unique=True)
            ).label("msgid"),
            func.unnest(
                bindparam("mobiles", [k[1] for k in keys], ARRAY(String), unique=True)
            ).label("mobile"),
        ).subquery()
        return tuple_(rows.c.msgid, rows.c.mobile).in_(select(pairs.c.msgid, pairs.c.mobile))
    return and_(
        rows.c.msgid.in_({k[0] for k in keys}),
        tuple_(rows.c.msgid, rows.c.mobile).in_(keys),
    )


async def purge_in_background(engine: AsyncEngine, days: float) -> PurgeResult:
    """One round of the running service's purge: small batches with pauses, beside ingest."""
    cutoff = cutoff_for(days)
    try:
        result = await purge(engine, cutoff, batch_size=BACKGROUND_BATCH, pause=BACKGROUND_PAUSE)
    except Exception as exc:  # the database may be away; the next round tries again
        log.warning("retention purge failed (%s)", exc.__class__.__name__)
        raise
    if result.deliveries or result.rejected or result.sends or result.events or result.partitions:
        log.info("retention: deleted %s older than %s", result.describe(), cutoff.isoformat())
    return result


def retention_job(
    engine: AsyncEngine, days: float, interval: float, first_delay: float
) -> JobRunner:
    """The purge as a job of the deployment: shortly after the first start, then every
    `interval` seconds, run by whichever process claims it (app.db.jobs)."""
    return JobRunner(
        engine,
        "retention",
        dt.timedelta(seconds=interval),
        lambda: purge_in_background(engine, days),
        first_delay=dt.timedelta(seconds=first_delay),
    )
