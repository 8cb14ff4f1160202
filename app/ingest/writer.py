"""The write path: dedup, the ordering rule and group commit by one writer task."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from sqlalchemy import DateTime, Table, and_, bindparam, case, event, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.metrics import Metrics, status_label
from app.db.engine import UTCDateTime, create_sync_engine
from app.db.models import Delivery, Report
from app.ingest.parse import ParsedReport, mask_mobile

log = logging.getLogger("mboxii_dlr.ingest")

REPORTS = cast(Table, Report.__table__)
DELIVERIES = cast(Table, Delivery.__table__)


SUMMARY_SECONDS = 60.0
# On SQLite a batch overlaps the one in flight only once it holds this many reports: each
# commit costs an fsync, so small overlapping batches lose (measured with bench/ingest.py at
# 64 connections: no minimum -15%, 16 -5%, 32-48 +25% against one batch at a time). Below
# that load batches simply take turns, which is all a lighter load needs.
SQLITE_OVERLAP_MINIMUM = 48


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
    if isinstance(exc, asyncpg.PostgresError):  # the PostgreSQL writer uses asyncpg directly
        # Connection trouble (08), resources (53), shutdown (57), system (58), and
        # serialization or deadlock (40) pass with time; anything else is this data.
        return str(getattr(exc, "sqlstate", "") or "")[:2] in ("08", "40", "53", "57", "58")
    if isinstance(exc, sqlite3.Error):  # the SQLite writer uses the driver directly
        return not isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError
        )
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


def _unnest_insert(table: Any, columns: tuple[str, ...]) -> Any:
    """A PostgreSQL INSERT of many rows from unnest() over one array per column (one round
    trip, the arrays encoded by the driver)."""
    source = select(
        *(func.unnest(bindparam(c, type_=_array_type(table.c[c]))).label(c) for c in columns)
    )
    return postgresql.insert(table).from_select(list(columns), source)


def _pg_statements() -> tuple[Any, Any]:
    """The two statements of a batch on PostgreSQL."""
    reports = (
        _unnest_insert(REPORTS, REPORT_COLUMNS)
        .on_conflict_do_nothing(index_elements=[REPORTS.c.msgid, REPORTS.c.report_key])
        .returning(REPORTS.c.report_key, REPORTS.c.id)
    )
    deliveries = _delivery_upsert(_unnest_insert(DELIVERIES, DELIVERY_COLUMNS))
    c = DELIVERIES.c
    return reports, deliveries.returning(c.msgid, c.mobile, c.batch_id)


def _delivery_upsert(ins: Any) -> Any:
    """The upsert that folds new reports into deliveries, by the contract's ordering rule."""
    new, old = ins.excluded, DELIVERIES.c
    # The ordering rule: final beats non-final; then the later donetime; on a tie the
    # report received later (this one) wins.
    newer = or_(
        and_(new.final, ~old.final),
        and_(new.final == old.final, new.done_at >= old.done_at),
    )

    def pick(name: str) -> Any:
        return case((newer, new[name]), else_=old[name])

    return ins.on_conflict_do_update(
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
    )


def _compiled_sqlite(stmt: Any, columns: tuple[str, ...]) -> str:
    """The SQL text of an INSERT whose rows come from one JSON array of arrays, columns in
    order: the whole batch is one call into SQLite. (executemany would be one call per row,
    and between calls the writer thread must win the GIL back from the busy event loop:
    measured, that wait was most of a batch's time.)"""
    compiled = stmt.values({c: bindparam(c) for c in columns}).compile(dialect=sqlite.dialect())
    assert tuple(compiled.positiontup) == columns, compiled.positiontup
    values = "VALUES (" + ", ".join("?" for _ in columns) + ")"
    text = str(compiled)
    assert text.count(values) == 1, text
    source = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    # "WHERE true" tells SQLite's parser the ON CONFLICT belongs to the INSERT.
    select = f"SELECT {source} FROM json_each(?) WHERE true"  # noqa: S608 - no input in it
    return text.replace(values, select)


def _compiled_asyncpg(stmt: Any, columns: tuple[str, ...]) -> str:
    """SQL text for asyncpg ($1, $2, ...: one array per column, in column order)."""
    dialect = postgresql.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
    compiled = stmt.compile(dialect=dialect)
    assert tuple(compiled.positiontup) == columns, compiled.positiontup
    return str(compiled)


PG_INSERT_REPORTS = _compiled_asyncpg(_pg_statements()[0], REPORT_COLUMNS)
PG_UPSERT_DELIVERIES = _compiled_asyncpg(_pg_statements()[1], DELIVERY_COLUMNS)

SQLITE_INSERT_REPORTS = _compiled_sqlite(
    sqlite.insert(REPORTS).on_conflict_do_nothing(
        index_elements=[REPORTS.c.msgid, REPORTS.c.report_key]
    ),
    REPORT_COLUMNS,
)
# Results come back as one JSON value: each row fetched separately would again be one call.
SQLITE_INSERTED = "SELECT json_group_array(json_array(report_key, id)) FROM reports WHERE id > ?"
SQLITE_BATCH_IDS = (
    "SELECT json_group_array(json_array(msgid, mobile, batch_id)) FROM deliveries "
    "WHERE msgid IN (SELECT value FROM json_each(?))"
)
SQLITE_UPSERT_DELIVERIES = _compiled_sqlite(
    _delivery_upsert(sqlite.insert(DELIVERIES)), DELIVERY_COLUMNS
)


def _wins(candidate: ParsedReport, current: ParsedReport) -> bool:
    return (candidate.final, candidate.done_at) >= (current.final, current.done_at)


@dataclass(slots=True)
class StoreResult:
    """What one committed batch did: per job, whether its report was new."""

    new: list[bool]
    batch_mismatch: int = 0


class _Plan:
    """One batch on its way into the tables; the same steps whatever the driver."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        # A copy of a report within the batch is a duplicate of its first occurrence.
        self.first: dict[int, Job] = {}
        for job in jobs:
            self.first.setdefault(job.report.key, job)
        self.ids: dict[int, int] = {}
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}

    def report_rows(self) -> list[tuple[Any, ...]]:
        # Rows go in key order, so concurrent writers (other batches, other replicas) take
        # their row locks in one order and cannot deadlock.
        return sorted(
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
            for job in self.first.values()
            for r in (job.report,)
        )

    def delivery_rows(self, ids: dict[int, int]) -> list[tuple[Any, ...]]:
        """Fold the new reports (`ids`: key -> id of those inserted) of each delivery, in the
        order received, into one upsert row per delivery."""
        self.ids = ids
        groups = self.groups
        for job in self.first.values():
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
                    "type": r.type,
                }
                continue
            group["count"] += 1
            group["batch_ids"].append(r.batch_id)
            group["first"] = min(group["first"], job.received_at)
            group["last"] = max(group["last"], job.received_at)
            if _wins(r, group["winner"]):
                group["winner"] = r
                group["report_id"] = rid
        return sorted(
            (
                w.msgid,
                w.mobile,
                g["batch_ids"][0],
                g["type"],
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
        )

    def mismatch(self, current: Iterable[Any]) -> int:
        """New reports whose batch ID differs from their delivery's (first) one."""
        count = 0
        for msgid, mobile, batch_id in current:
            group = self.groups.get((msgid, mobile))
            if group is not None:
                count += sum(1 for b in group["batch_ids"] if b != batch_id)
        return count

    def result(self, mismatch: int) -> StoreResult:
        ids, first = self.ids, self.first
        new = [job.report.key in ids and first[job.report.key] is job for job in self.jobs]
        return StoreResult(new=new, batch_mismatch=mismatch)


async def store_batch_asyncpg(connection: Any, jobs: list[Job]) -> StoreResult:
    """Insert the reports and fold them into deliveries, straight on an asyncpg connection:
    two prepared statements, each with one array per column. The caller owns the
    transaction."""
    plan = _Plan(jobs)
    columns = [list(values) for values in zip(*plan.report_rows(), strict=True)]
    inserted = await connection.fetch(PG_INSERT_REPORTS, *columns)
    rows = plan.delivery_rows(dict(inserted))
    mismatch = 0
    if rows:
        columns = [list(values) for values in zip(*rows, strict=True)]
        mismatch = plan.mismatch(await connection.fetch(PG_UPSERT_DELIVERIES, *columns))
    return plan.result(mismatch)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # as UTCDateTime stores it: sortable UTC text
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    raise TypeError(f"cannot store {type(value).__name__}")


def _json_rows(rows: list[tuple[Any, ...]]) -> str:
    return json.dumps(rows, default=_json_default, ensure_ascii=False)


def store_batch_sqlite(connection: sqlite3.Connection, jobs: list[Job]) -> StoreResult:
    """store_batch_asyncpg for the plain sqlite3 driver, each statement one call over a JSON
    array of the batch's rows. The caller holds the write lock (BEGIN IMMEDIATE), so the
    rows with ids above the old maximum are this batch's."""
    plan = _Plan(jobs)
    cursor = connection.cursor()
    (before,) = cursor.execute("SELECT coalesce(max(id), 0) FROM reports").fetchone()
    cursor.execute(SQLITE_INSERT_REPORTS, (_json_rows(plan.report_rows()),))
    (inserted,) = cursor.execute(SQLITE_INSERTED, (before,)).fetchone()
    rows = plan.delivery_rows(dict(json.loads(inserted)))
    mismatch = 0
    if rows:
        cursor.execute(SQLITE_UPSERT_DELIVERIES, (_json_rows(rows),))
        msgids = json.dumps(sorted({r[0] for r in rows}))
        (current,) = cursor.execute(SQLITE_BATCH_IDS, (msgids,)).fetchone()
        mismatch = plan.mismatch(json.loads(current))
    cursor.close()
    return plan.result(mismatch)


class AsyncStore:
    """Stores batches on PostgreSQL with asyncpg itself (SQLAlchemy's execution layer cost
    as much as the driver), on connections it keeps between batches: a pool checkout with
    its ping cost a round trip per batch. The pool still opens and recycles them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._idle: list[tuple[AsyncConnection, Any]] = []

    async def store(
        self,
        batch: list[Job],
        after: asyncio.Event | None = None,
        locked: asyncio.Event | None = None,
        *,
        reuse: bool = True,
    ) -> StoreResult:
        if reuse and self._idle:
            connection, raw = self._idle.pop()
        else:
            connection = await self.engine.connect()
            raw = (await connection.get_raw_connection()).driver_connection
        try:
            if after is not None:
                await after.wait()
            async with raw.transaction():
                result = await store_batch_asyncpg(raw, batch)
                if locked is not None:
                    locked.set()
        except BaseException:
            # Whatever state it is in, it is not reused: the pool replaces it.
            with contextlib.suppress(Exception):
                await connection.invalidate()
                await connection.close()
            raise
        self._idle.append((connection, raw))
        return result

    async def close(self) -> None:
        while self._idle:
            with contextlib.suppress(Exception):
                await self._idle.pop()[0].close()


CHECKPOINT_SECONDS = 1.0


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
    # After a checkpoint lets the WAL start over, cut the file back to 64 MB.
    dbapi_conn.execute("PRAGMA journal_size_limit=67108864")


class ThreadStore:
    """Stores batches on SQLite with the plain sqlite3 driver in one thread of its own: a
    whole batch is one hop to that thread, where aiosqlite made one per statement."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_sync_engine(database_url)
        # Checkpoints (copying the WAL into the database file, with an fsync of that file)
        # run beside the writer, not inside one of its commits every 1,000 pages, where
        # they held up every callback of that batch (p99 15 -> 40 ms in bench/ingest.py).
        event.listen(self.engine, "connect", _no_autocheckpoint)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mboxii-dlr-sqlite")
        self._closed = False
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="mboxii-dlr-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        while not self._stop_checkpoints.wait(CHECKPOINT_SECONDS):
            try:
                with self.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:  # busy or gone: the next round tries again
                log.debug("WAL checkpoint skipped: %s", exc.__class__.__name__)

    def _store_sync(self, batch: list[Job], reuse: bool) -> StoreResult:
        if not reuse:
            self.engine.dispose()
        with self.engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = store_batch_sqlite(raw, batch)
            except BaseException:
                raw.rollback()
                raise
            raw.commit()
            return result

    async def store(
        self,
        batch: list[Job],
        after: asyncio.Event | None = None,
        locked: asyncio.Event | None = None,
        *,
        reuse: bool = True,
    ) -> StoreResult:
        # One thread runs the batches in the order they are handed over, so a batch may be
        # handed over while the previous one still runs (`after` is already honoured).
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._thread, self._store_sync, batch, reuse)
        if locked is not None:
            locked.set()
        return await done

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_checkpoints.set()
        await asyncio.to_thread(self._checkpointer.join)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=True)


def _fail(future: asyncio.Future[bool], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_exception(IngestUnavailable("timeout"))


class Writer:
    """One task that commits queued reports in batches and then wakes their senders."""

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        batch_delay: float = 0.0005,
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
        # Two batches in flight. PostgreSQL: the next batch runs its statements while the
        # previous one waits for its COMMIT. SQLite: the next batch is queued to the writer
        # thread while the previous one runs, so that thread never waits for the event
        # loop (see SQLITE_OVERLAP_MINIMUM).
        self.pipeline = 2
        self._overlaps_freely = engine.dialect.name == "postgresql"
        self._batches_in_flight = 0
        self._report_series: dict[tuple[str, str], Any] = {}
        self._slots = asyncio.Semaphore(self.pipeline)
        self._last_batch_locked: asyncio.Event | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._store = self.store_for(engine)
        metrics.queue_depth.set_function(lambda: len(self._queue))
        metrics.in_flight.set_function(lambda: self._in_flight)

    @staticmethod
    def store_for(engine: AsyncEngine) -> AsyncStore | ThreadStore:
        """How batches reach this database: SQLite in a thread of its own, else async."""
        if engine.dialect.name == "sqlite":
            return ThreadStore(engine.url.render_as_string(hide_password=False))
        return AsyncStore(engine)

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
        await self._store.close()

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
        timer = loop.call_later(self.timeout, _expire, future)
        self._in_flight += 1
        try:
            return await future
        finally:
            self._in_flight -= 1
            timer.cancel()

    async def _gather(self) -> None:
        """Let a batch fill before it closes: pass turns of the event loop while they bring
        more reports (requests whose bytes arrived together), up to batch_delay. Under load
        the batch fills at once; a lone report waits one turn, not a fixed delay."""
        deadline = time.monotonic() + self.batch_delay
        seen = -1
        while (
            seen != len(self._queue) < self.batch_size
            and not self._closing
            and time.monotonic() < deadline
        ):
            seen = len(self._queue)
            await asyncio.sleep(0)

    def _overlap_at(self) -> int:
        """How many queued reports let a batch start beside the one in flight: any on
        PostgreSQL; on SQLite, SQLITE_OVERLAP_MINIMUM."""
        return 1 if self._overlaps_freely else SQLITE_OVERLAP_MINIMUM

    def _take(self) -> list[Job]:
        n = min(len(self._queue), self.batch_size)
        return [self._queue.popleft() for _ in range(n)]

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if (
                self._batches_in_flight
                and len(self._queue) < self._overlap_at()
                and not self._closing
            ):
                # A batch is in flight; the next one may overlap it only once it is worth
                # a commit of its own (wakes on every new report and every finished batch).
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            await self._slots.acquire()
            batch = self._take()
            self._batches_in_flight += 1
            locked = asyncio.Event()
            task = asyncio.create_task(self._commit_guarded(batch, self._last_batch_locked, locked))
            self._last_batch_locked = locked
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
        if self._commits:
            await asyncio.gather(*self._commits)

    async def _commit_guarded(
        self, batch: list[Job], after: asyncio.Event | None, locked: asyncio.Event
    ) -> None:
        try:
            await self._commit(batch, after, locked)
        except Exception:  # the writer must never die; the senders get an answer
            log.exception("ingest writer failed on a batch")
            for job in batch:
                _fail(job.future, IngestUnavailable("database"))
        finally:
            locked.set()
            self._batches_in_flight -= 1
            self._slots.release()
            self._wakeup.set()

    async def _commit(
        self,
        batch: list[Job],
        after: asyncio.Event | None = None,
        locked: asyncio.Event | None = None,
    ) -> None:
        """Store one batch. Its statements wait until the previous batch has run its own
        (`after`), so for every row they share this batch queues behind that one: the
        later-received report is applied later, even with commits overlapping."""
        started = time.perf_counter()
        try:
            try:
                result = await self._store.store(batch, after, locked)
            except Exception as exc:
                if not is_connectivity_error(exc):
                    raise
                # The kept connection may have died with a database restart. Storing is
                # idempotent, so one more try on a fresh connection is always safe.
                result = await self._store.store(batch, after, locked, reuse=False)
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
                result = await self._store.store([job])
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
        series = self._report_series
        for job, new in zip(batch, result.new, strict=True):
            if new:
                r = job.report
                counter = series.get((r.outcome, r.status))
                if counter is None:  # a label lookup takes a lock; each series is looked up once
                    counter = m.reports.labels(r.outcome, status_label(r.status))
                    if len(series) < 1000:  # undocumented words share OTHER; stay bounded
                        series[(r.outcome, r.status)] = counter
                counter.inc()
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
