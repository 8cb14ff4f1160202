"""The write path: dedup, the ordering rule and group commit by one writer task."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import DateTime, and_, bindparam, case, func, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.callback import ParsedReport, mask_mobile
from app.db import UTCDateTime, insert_for_name
from app.metrics import Metrics, status_label
from app.models import Delivery, Report

log = logging.getLogger("mboxii_dlr.ingest")

REPORTS = Report.__table__
DELIVERIES = Delivery.__table__


SUMMARY_SECONDS = 60.0


class IngestUnavailable(Exception):
    """Storage is unreachable or the writer is saturated: answer 503, acknowledge nothing."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class IngestRefused(Exception):
    """The database refused this one report (it passed validation): it is not stored."""


@dataclass(slots=True)
class Job:
    report: ParsedReport
    received_at: dt.datetime
    source: str
    future: asyncio.Future[bool] = field(repr=False)


def is_connectivity_error(exc: BaseException) -> bool:
    """True when the failure is the database being away, not the data being refused."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    # A StatementError is a value that could not be bound: this report's problem.
    # Anything else (a socket error, a pool timeout, a driver surprise) counts as an
    # outage: answering 503 makes the gateway retry, which is always safe.
    return not isinstance(exc, StatementError)


REPORT_COLUMNS = (
    "report_key",
    "batch_id",
    "msgid",
    "mobile",
    "type",
    "status",
    "statuscode",
    "outcome",
    "final",
    "inconsistent",
    "done_at",
    "received_at",
    "source",
)
DELIVERY_COLUMNS = (
    "msgid",
    "mobile",
    "batch_id",
    "type",
    "status",
    "statuscode",
    "outcome",
    "final",
    "inconsistent",
    "done_at",
    "first_received_at",
    "last_received_at",
    "reports",
    "report_id",
)


def _array_type(column: Any) -> Any:
    # The values are already aware UTC datetimes: skip UTCDateTime's per-value processing.
    element = DateTime(timezone=True) if isinstance(column.type, UTCDateTime) else column.type
    return postgresql.ARRAY(element)


def _insert_rows(dialect: str, table: Any, columns: tuple[str, ...]) -> Any:
    """INSERT of many rows in one statement: on PostgreSQL from unnest() over one array per
    column (one round trip, arrays encoded by the driver), elsewhere as multi-row VALUES."""
    if dialect != "postgresql":
        return insert_for_name(dialect, table)
    source = select(
        *(func.unnest(bindparam(c, type_=_array_type(table.c[c]))).label(c) for c in columns)
    )
    return postgresql.insert(table).from_select(list(columns), source)


def row_params(dialect: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Any:
    """Parameters for _insert_rows: one list per column, or one dict per row."""
    if dialect == "postgresql":
        return {c: list(values) for c, values in zip(columns, zip(*rows, strict=True), strict=True)}
    return [dict(zip(columns, row, strict=True)) for row in rows]


@lru_cache
def _statements(dialect: str) -> tuple[Any, Any]:
    """The two statements of a batch, built once per dialect."""
    reports = (
        _insert_rows(dialect, REPORTS, REPORT_COLUMNS)
        .on_conflict_do_nothing(index_elements=[REPORTS.c.report_key])
        .returning(REPORTS.c.report_key, REPORTS.c.id)
    )
    ins = _insert_rows(dialect, DELIVERIES, DELIVERY_COLUMNS)
    new, old = ins.excluded, DELIVERIES.c
    # The ordering rule: final beats non-final; then the later donetime; on a tie the
    # report received later (this one) wins.
    newer = or_(
        and_(new.final, ~old.final),
        and_(new.final == old.final, new.done_at >= old.done_at),
    )

    def pick(name: str) -> Any:
        return case((newer, new[name]), else_=old[name])

    deliveries = ins.on_conflict_do_update(
        index_elements=[old.msgid, old.mobile],
        set_={
            **{
                name: pick(name)
                for name in (
                    "status",
                    "statuscode",
                    "outcome",
                    "final",
                    "inconsistent",
                    "done_at",
                    "report_id",
                )
            },
            "first_received_at": case(
                (new.first_received_at < old.first_received_at, new.first_received_at),
                else_=old.first_received_at,
            ),
            "last_received_at": case(
                (new.last_received_at > old.last_received_at, new.last_received_at),
                else_=old.last_received_at,
            ),
            "reports": old.reports + new.reports,
        },
    ).returning(old.msgid, old.mobile, old.batch_id)
    return reports, deliveries


def _wins(candidate: ParsedReport, current: ParsedReport) -> bool:
    return (candidate.final, candidate.done_at) >= (current.final, current.done_at)


@dataclass(slots=True)
class StoreResult:
    """What one committed batch did: per job, whether its report was new."""

    new: list[bool]
    batch_mismatch: int = 0


async def store_batch(connection: AsyncConnection, jobs: list[Job]) -> StoreResult:
    """Insert the reports and fold them into deliveries; the caller owns the transaction."""
    first_by_key: dict[bytes, Job] = {}
    for job in jobs:
        first_by_key.setdefault(job.report.key, job)
    dialect = connection.dialect.name
    insert_reports, upsert_deliveries = _statements(dialect)
    rows = [
        (
            r.key,
            r.batch_id,
            r.msgid,
            r.mobile,
            r.type,
            r.status,
            r.statuscode,
            r.outcome,
            r.final,
            r.inconsistent,
            r.done_at,
            job.received_at,
            job.source,
        )
        for job in first_by_key.values()
        for r in (job.report,)
    ]
    result = await connection.execute(insert_reports, row_params(dialect, REPORT_COLUMNS, rows))
    ids = {bytes(key): rid for key, rid in result.all()}

    # Fold the new reports of each delivery (in the order received) into one upsert row.
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for job in first_by_key.values():
        r = job.report
        rid = ids.get(r.key)
        if rid is None:
            continue
        group = groups.get((r.msgid, r.mobile))
        if group is None:
            groups[(r.msgid, r.mobile)] = {
                "winner": r,
                "report_id": rid,
                "first": job.received_at,
                "last": job.received_at,
                "count": 1,
                "batch_ids": [r.batch_id],
                "row_batch": r.batch_id,
                "row_type": r.type,
            }
            continue
        group["count"] += 1
        group["batch_ids"].append(r.batch_id)
        group["first"] = min(group["first"], job.received_at)
        group["last"] = max(group["last"], job.received_at)
        if _wins(r, group["winner"]):
            group["winner"] = r
            group["report_id"] = rid

    mismatch = 0
    if groups:
        upserts = [
            (
                w.msgid,
                w.mobile,
                g["row_batch"],
                g["row_type"],
                w.status,
                w.statuscode,
                w.outcome,
                w.final,
                w.inconsistent,
                w.done_at,
                g["first"],
                g["last"],
                g["count"],
                g["report_id"],
            )
            for g in groups.values()
            for w in (g["winner"],)
        ]
        result = await connection.execute(
            upsert_deliveries, row_params(dialect, DELIVERY_COLUMNS, upserts)
        )
        for msgid, mobile, batch_id in result.all():
            group = groups[(msgid, mobile)]
            mismatch += sum(1 for b in group["batch_ids"] if b != batch_id)

    # A copy of a report within the same batch is a duplicate of its first occurrence.
    new = [job.report.key in ids and first_by_key[job.report.key] is job for job in jobs]
    return StoreResult(new=new, batch_mismatch=mismatch)


def _fail(future: asyncio.Future[bool], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Writer:
    """One task that commits queued reports in batches and then wakes their senders."""

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        batch_delay: float = 0.002,
        queue_size: int = 10000,
        timeout: float = 10.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.queue_size = queue_size
        self.timeout = timeout
        self._queue: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down_until = 0.0
        self._backoff = 0.0
        self._summary = {"stored": 0, "duplicates": 0, "batches": 0}
        self._summary_at = time.monotonic()
        self._in_flight = 0
        metrics.queue_depth.set_function(lambda: len(self._queue))
        metrics.in_flight.set_function(lambda: self._in_flight)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mboxii-dlr-writer")

    async def stop(self) -> None:
        """Commit everything queued, then end the task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._summary["batches"]:
            self._log_summary()

    async def submit(
        self, report: ParsedReport, received_at: dt.datetime, source: str = "callback"
    ) -> bool:
        """Queue a report and wait for its commit; True if new, False if a duplicate."""
        if self._closing or self._task is None:
            raise IngestUnavailable("stopping")
        if len(self._queue) >= self.queue_size:
            raise IngestUnavailable("saturated")
        if self._down_until and time.monotonic() < self._down_until:
            raise IngestUnavailable("database")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.append(Job(report, received_at, source, future))
        self._wakeup.set()
        # Past the deadline the sender gets 503; should the commit still land, the
        # gateway's retry is then a harmless duplicate.
        timer = loop.call_later(self.timeout, _fail, future, IngestUnavailable("timeout"))
        self._in_flight += 1
        try:
            return await future
        finally:
            self._in_flight -= 1
            timer.cancel()

    def _take(self) -> list[Job]:
        n = min(len(self._queue), self.batch_size)
        return [self._queue.popleft() for _ in range(n)]

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self.batch_size and self.batch_delay and not self._closing:
                await asyncio.sleep(self.batch_delay)
            batch = self._take()
            try:
                await self._commit(batch)
            except Exception:  # the writer must never die; the senders get an answer
                log.exception("ingest writer failed on a batch")
                for job in batch:
                    _fail(job.future, IngestUnavailable("database"))

    async def _commit(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        try:
            async with self.engine.begin() as connection:
                result = await store_batch(connection, batch)
        except Exception as exc:
            if is_connectivity_error(exc):
                self._mark_down(exc)
                for job in batch:
                    _fail(job.future, IngestUnavailable("database"))
                return
            log.warning(
                "a batch of %d failed (%s); retrying its reports one by one",
                len(batch),
                type(exc).__name__,
            )
            await self._commit_singly(batch)
            return
        self._mark_up()
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self._finish(batch, result)

    async def _commit_singly(self, batch: list[Job]) -> None:
        for job in batch:
            try:
                async with self.engine.begin() as connection:
                    result = await store_batch(connection, [job])
            except Exception as exc:
                if is_connectivity_error(exc):
                    self._mark_down(exc)
                    _fail(job.future, IngestUnavailable("database"))
                    continue
                self.metrics.storage_refused.inc()
                log.error(
                    "the database refused report msgid=%s mobile=%s: %s",
                    job.report.msgid,
                    mask_mobile(job.report.mobile),
                    exc.__class__.__name__,
                )
                _fail(job.future, IngestRefused(exc.__class__.__name__))
                continue
            self._finish([job], result)

    def _finish(self, batch: list[Job], result: StoreResult) -> None:
        m = self.metrics
        m.batch_size.observe(len(batch))
        stored = sum(result.new)
        self._summary["stored"] += stored
        self._summary["duplicates"] += len(batch) - stored
        self._summary["batches"] += 1
        if time.monotonic() - self._summary_at >= SUMMARY_SECONDS:
            self._log_summary()
        if result.batch_mismatch:
            m.batch_mismatch.inc(result.batch_mismatch)
        for job, new in zip(batch, result.new, strict=True):
            if new:
                r = job.report
                m.reports.labels(r.outcome, status_label(r.status)).inc()
                if r.inconsistent:
                    m.inconsistent.inc()
            else:
                m.duplicates.inc()
            if not job.future.done():
                job.future.set_result(new)

    def _log_summary(self) -> None:
        """One line a minute about the acknowledged callbacks (they get no access line)."""
        now = time.monotonic()
        s = self._summary
        log.info(
            "ingest: %d reports stored, %d duplicates, in %d commits over the last %.0fs; "
            "%d waiting",
            s["stored"],
            s["duplicates"],
            s["batches"],
            now - self._summary_at,
            len(self._queue),
        )
        self._summary = {"stored": 0, "duplicates": 0, "batches": 0}
        self._summary_at = now

    def _mark_down(self, exc: BaseException) -> None:
        self._backoff = min(max(self._backoff * 2, 0.25), 5.0)
        self._down_until = time.monotonic() + self._backoff
        log.error(
            "storage unreachable (%s); refusing callbacks for %.2fs",
            exc.__class__.__name__,
            self._backoff,
        )

    def _mark_up(self) -> None:
        if self._down_until:
            log.info("storage reachable again")
        self._down_until = 0.0
        self._backoff = 0.0
