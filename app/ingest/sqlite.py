"""Batches into SQLite with the plain sqlite3 driver in one thread of its own, each statement
one call over a JSON array of the batch's rows, WAL checkpoints in a thread beside it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Boolean, bindparam, event, func, literal_column, select, true, tuple_
from sqlalchemy.dialects import sqlite

from app.db import sqlite_writer
from app.db.engine import UTCDateTime, create_sync_engine
from app.db.models import DELIVERIES, REPORTS
from app.ingest.errors import is_connectivity_error
from app.ingest.fold import (
    DELIVERY_COLUMNS,
    MERGED_COLUMNS,
    REPORT_COLUMNS,
    RETURNED_COLUMNS,
    Arrival,
    BatchPlan,
    StoreResult,
)
from app.ingest.statements import REPORT_IDENTITY, delivery_upsert, returned_columns
from app.ingest.store import BatchEffect, run_after_commit

log = logging.getLogger("mboxii_dlr.ingest")

# A batch overlaps the one in flight only once it holds this many reports: each commit
# costs an fsync, so small overlapping batches lose (measured with bench/ingest.py at 64
# connections: no minimum -15%, 16 -5%, 32-48 +25% against one batch at a time). Below that
# load batches simply take turns, which is all a lighter load needs.
SQLITE_OVERLAP_MINIMUM = 48
CHECKPOINT_SECONDS = 1.0


def _json_rows(parameter: str, width: int) -> Any:
    """SELECT the rows of one JSON array of arrays bound to `parameter`, `width` columns
    each: a whole batch is one call into SQLite. (executemany would be one call per row, and
    between calls this thread must win the GIL back from the busy event loop: measured, that
    wait was most of a batch's time.)"""
    each = func.json_each(bindparam(parameter)).table_valued("value")
    paths: list[Any] = [literal_column(f"'$[{i}]'") for i in range(width)]
    return select(*(func.json_extract(each.c.value, path) for path in paths)).select_from(each)


def _sql(statement: Any) -> str:
    return str(statement.compile(dialect=sqlite.dialect()))


# "WHERE true" tells SQLite's parser that the ON CONFLICT after a SELECT belongs to the
# INSERT (without it, it reads as a join constraint).
INSERT_REPORTS = _sql(
    sqlite.insert(REPORTS)
    .from_select(list(REPORT_COLUMNS), _json_rows("rows", len(REPORT_COLUMNS)).where(true()))
    .on_conflict_do_nothing(index_elements=REPORT_IDENTITY)
)
UPSERT_DELIVERIES = _sql(
    delivery_upsert(
        sqlite.insert(DELIVERIES).from_select(
            list(DELIVERY_COLUMNS), _json_rows("rows", len(DELIVERY_COLUMNS)).where(true())
        )
    )
)
# Results come back as one JSON value too: each row fetched separately would again be one
# call. The caller holds the write lock, so the ids above the old maximum are its own.
MAX_REPORT_ID = _sql(select(func.coalesce(func.max(REPORTS.c.id), literal_column("0"))))
INSERTED_SINCE = _sql(
    select(func.json_group_array(func.json_array(REPORTS.c.report_key, REPORTS.c.id))).where(
        REPORTS.c.id > bindparam("before")
    )
)
RETURNED = _sql(
    select(func.json_group_array(func.json_array(*returned_columns()))).where(
        tuple_(DELIVERIES.c.msgid, DELIVERIES.c.mobile).in_(_json_rows("keys", 2))
    )
)

_NAMES = RETURNED_COLUMNS + MERGED_COLUMNS
_BOOLEANS = [i for i, name in enumerate(_NAMES) if isinstance(DELIVERIES.c[name].type, Boolean)]
_TIMES = [i for i, name in enumerate(_NAMES) if isinstance(DELIVERIES.c[name].type, UTCDateTime)]


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # as UTCDateTime stores it: sortable UTC text
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    raise TypeError(f"cannot store {type(value).__name__}")


def _json(rows: list[Any]) -> str:
    return json.dumps(rows, default=_json_default, ensure_ascii=False)


def _decode(row: Sequence[Any]) -> list[Any]:
    """A returned row as JSON gives it (0/1 and UTC text) in Python types."""
    values = list(row)
    for i in _BOOLEANS:
        if values[i] is not None:
            values[i] = bool(values[i])
    for i in _TIMES:
        if values[i] is not None:
            values[i] = dt.datetime.fromisoformat(values[i]).replace(tzinfo=dt.UTC)
    return values


def store_batch(
    connection: sqlite3.Connection,
    batch: Sequence[Arrival],
    effects: Sequence[BatchEffect] = (),
) -> StoreResult:
    """Insert the reports, fold them into deliveries and run the effects. The caller owns
    the transaction and holds the write lock (BEGIN IMMEDIATE)."""
    plan = BatchPlan(batch)
    cursor = connection.cursor()
    try:
        (before,) = cursor.execute(MAX_REPORT_ID).fetchone()
        cursor.execute(INSERT_REPORTS, (_json(plan.report_rows()),))
        (inserted,) = cursor.execute(INSERTED_SINCE, (before,)).fetchone()
        rows = plan.delivery_rows(dict(json.loads(inserted)))
        returned = []
        if rows:
            cursor.execute(UPSERT_DELIVERIES, (_json(rows),))
            keys = json.dumps([row[:2] for row in rows], ensure_ascii=False)
            (current,) = cursor.execute(RETURNED, (keys,)).fetchone()
            returned = json.loads(current)
    finally:
        cursor.close()
    result = plan.result(returned, _decode)
    if effects and result.changes:
        for effect in effects:
            hook = effect.apply_sqlite(connection, result.changes)
            if hook is not None:
                result.after_commit.append(hook)
    return result


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
    # After a checkpoint lets the WAL start over, cut the file back to 64 MB.
    dbapi_conn.execute("PRAGMA journal_size_limit=67108864")


class SqliteStore:
    """Stores batches with the plain sqlite3 driver in one thread (the database's writer
    thread, app.db.sqlite_writer, which the event dispatcher's rounds share): a whole batch
    is one hop to that thread, where aiosqlite made one per statement. The thread runs the
    batches in the order they are handed over, so a batch may be handed over while the
    previous one still runs."""

    overlap_minimum = SQLITE_OVERLAP_MINIMUM

    def __init__(self, database_url: str, effects: Sequence[BatchEffect] = ()) -> None:
        self.engine = create_sync_engine(database_url)
        self.database_url = database_url
        self.effects = tuple(effects)
        # Checkpoints (copying the WAL into the database file, with an fsync of that file)
        # run beside the writer, not inside one of its commits every 1,000 pages, where
        # they held up every callback of that batch (p99 15 -> 40 ms in bench/ingest.py).
        event.listen(self.engine, "connect", _no_autocheckpoint)
        self._thread = sqlite_writer.acquire(database_url)
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

    def _transaction(self, batch: Sequence[Arrival]) -> StoreResult:
        with self.engine.connect() as connection:
            raw = cast(sqlite3.Connection, connection.connection.driver_connection)
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = store_batch(raw, batch, self.effects)
            except BaseException:
                raw.rollback()
                raise
            raw.commit()
        run_after_commit(result)
        return result

    def _store_sync(self, batch: Sequence[Arrival]) -> StoreResult:
        try:
            return self._transaction(batch)
        except Exception as exc:
            if not is_connectivity_error(exc):
                raise
            # A pooled connection may have gone bad with its file (moved, restored). Storing
            # is idempotent, so one more try on fresh connections is always safe.
            self.engine.dispose()
            return self._transaction(batch)

    async def store(self, batch: Sequence[Arrival]) -> StoreResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._store_sync, batch)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_checkpoints.set()
        await asyncio.to_thread(self._checkpointer.join)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.engine.dispose)
        sqlite_writer.release(self.database_url)
