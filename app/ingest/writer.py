"""Group commit: one task gathers queued reports into batches, has a store commit them, and
then wakes their senders; it answers 503 for them when storage is away or saturated."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.metrics import Metrics, status_label
from app.core.mobiles import mask_mobile
from app.ingest.errors import (
    IngestRefused,
    IngestUnavailable,
    is_conflict,
    is_connectivity_error,
)
from app.ingest.fold import Arrival, StoreResult
from app.ingest.parse import ParsedReport
from app.ingest.postgres import PostgresStore
from app.ingest.sqlite import SqliteStore
from app.ingest.store import BatchEffect, BatchStore

log = logging.getLogger("mboxii_dlr.ingest")

SUMMARY_SECONDS = 60.0
# Batches in flight at once. PostgreSQL: the next batch runs its statements while the
# previous one waits for its COMMIT. SQLite: the next batch is queued to the writer thread
# while the previous one runs, so that thread never waits for the event loop.
PIPELINE = 2


def open_store(engine: AsyncEngine, effects: Sequence[BatchEffect] = ()) -> BatchStore:
    """How batches reach this database: SQLite in a thread of its own, else asyncpg."""
    if engine.dialect.name == "sqlite":
        return SqliteStore(engine.url.render_as_string(hide_password=False), effects)
    return PostgresStore(engine, effects)


@dataclass(slots=True)
class Job(Arrival):
    """A queued report and the future its sender waits on."""

    future: asyncio.Future[bool] = field(kw_only=True, repr=False)


def _fail(future: asyncio.Future[bool], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_exception(IngestUnavailable("timeout"))


class Writer:
    """One task that commits queued reports in batches and then wakes their senders.

    `effects` run inside each batch's transaction (see BatchEffect)."""

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        batch_delay: float = 0.0005,
        queue_size: int = 10000,
        timeout: float = 10.0,
        effects: Sequence[BatchEffect] = (),
    ) -> None:
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
        self._batches_in_flight = 0
        self._report_series: dict[tuple[str, str], Any] = {}
        self._slots = asyncio.Semaphore(PIPELINE)
        self._commits: set[asyncio.Task[None]] = set()
        self._store = open_store(engine, effects)
        # Set on every change rather than read at scrape time: with several workers, a
        # scrape reads what each worker last wrote (app.core.metrics).
        self._depth_gauge = metrics.queue_depth
        metrics.queue_capacity.set(queue_size)
        self._in_flight_gauge = metrics.in_flight

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
        self._queue.append(Job(report, received_at, source, future=future))
        self._depth_gauge.set(len(self._queue))
        self._wakeup.set()
        # Past the deadline the sender gets 503; should the commit still land, the
        # gateway's retry is then a harmless duplicate.
        timer = loop.call_later(self.timeout, _expire, future)
        self._in_flight_gauge.inc()
        try:
            return await future
        finally:
            self._in_flight_gauge.dec()
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

    def _take(self) -> list[Job]:
        n = min(len(self._queue), self.batch_size)
        batch = [self._queue.popleft() for _ in range(n)]
        self._depth_gauge.set(len(self._queue))
        return batch

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
                and len(self._queue) < self._store.overlap_minimum
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
            task = asyncio.create_task(self._commit_guarded(batch))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
        if self._commits:
            await asyncio.gather(*self._commits)

    async def _commit_guarded(self, batch: list[Job]) -> None:
        try:
            await self._commit(batch)
        except Exception:  # the writer must never die; the senders get an answer
            log.exception("ingest writer failed on a batch")
            for job in batch:
                _fail(job.future, IngestUnavailable("database"))
        finally:
            self._batches_in_flight -= 1
            self._slots.release()
            self._wakeup.set()

    async def _commit(self, batch: list[Job]) -> None:
        """Store one batch; if the database refuses it, store its reports one by one."""
        started = time.perf_counter()
        try:
            result = await self._store.store(batch)
        except Exception as exc:
            if is_connectivity_error(exc) and not is_conflict(exc):
                self._mark_down(exc)
                for job in batch:
                    _fail(job.future, IngestUnavailable("database"))
                return
            # A deadlock the store could not get past by itself is no outage: each report
            # again on its own, as for a report the database refuses.
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
                    if not is_conflict(exc):
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
