"""Batches into PostgreSQL with asyncpg itself: two prepared statements over one array per
column (the first also running the effects' companion queries), on connections kept between
batches, successive batches pipelined in call order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import DateTime, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.engine import UTCDateTime
from app.db.models import DELIVERIES, REPORTS
from app.ingest.errors import is_conflict, is_connectivity_error
from app.ingest.fold import (
    DELIVERY_COLUMNS,
    REPORT_COLUMNS,
    Arrival,
    BatchPlan,
    StoreResult,
)
from app.ingest.statements import REPORT_IDENTITY, delivery_upsert, returned_columns
from app.ingest.store import (
    BatchEffect,
    Companion,
    CompanionEffect,
    run_after_commit,
)

log = logging.getLogger("mboxii_dlr.ingest")

# Tries again of a batch that met another writer in a deadlock (before the next batch may
# have written its deliveries); past them it fails like any refused batch.
CONFLICT_RETRIES = 3


def _unnest_insert(table: Any, columns: tuple[str, ...]) -> Any:
    """An INSERT of many rows from unnest() over one array per column: one round trip, the
    arrays encoded by the driver."""

    def array(name: str) -> Any:
        column = table.c[name]
        # The values are already aware UTC datetimes: skip UTCDateTime's per-value work.
        element = DateTime(timezone=True) if isinstance(column.type, UTCDateTime) else column.type
        return bindparam(name, type_=postgresql.ARRAY(element))

    source = select(*(func.unnest(array(name)).label(name) for name in columns))
    return postgresql.insert(table).from_select(list(columns), source)


class _Statement:
    """A statement compiled for asyncpg, whose $1, $2, ... are each one column's array."""

    def __init__(self, statement: Any, columns: tuple[str, ...]) -> None:
        dialect = postgresql.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        # Where each $n comes from, in the compiler's numbering (a name it does not know
        # fails here, at import).
        self._sources = [columns.index(name) for name in compiled.positiontup or ()]

    def arguments(self, rows: list[tuple[Any, ...]]) -> list[list[Any]]:
        columns = list(zip(*rows, strict=True))
        return [list(columns[i]) for i in self._sources]

    @property
    def parameters(self) -> int:
        return len(self._sources)


INSERT_REPORTS = _Statement(
    _unnest_insert(REPORTS, REPORT_COLUMNS)
    .on_conflict_do_nothing(index_elements=REPORT_IDENTITY)
    .returning(REPORTS.c.report_key, REPORTS.c.id),
    REPORT_COLUMNS,
)
UPSERT_DELIVERIES = _Statement(
    delivery_upsert(_unnest_insert(DELIVERIES, DELIVERY_COLUMNS)).returning(*returned_columns()),
    DELIVERY_COLUMNS,
)


class ReportsInsert:
    """The statement that inserts a batch's reports, and with them runs the companion
    queries of the effects that have one (CompanionEffect): its rows are the inserted
    reports' (report_key, id), then one (NULL, i, JSON array of its rows) per companion."""

    def __init__(self, effects: Sequence[BatchEffect] = ()) -> None:
        self.effects = tuple(effects)
        companions = [
            (i, e.companion) for i, e in enumerate(self.effects) if isinstance(e, CompanionEffect)
        ]
        self._companions = [i for i, _ in companions]
        if not companions:
            self.sql = INSERT_REPORTS.sql
            return
        batch_ids = f"${INSERT_REPORTS.parameters + 1}::text[]"
        # json (not jsonb) keeps each row's columns in the query's order
        reads = "".join(
            f"\nUNION ALL SELECT NULL, {i}, (SELECT coalesce(json_agg(c), '[]')::text FROM "  # noqa: S608 - SQL from constants only
            f"({sql.format(batch_ids=batch_ids)}) AS c)"
            for i, sql in companions
        )
        self.sql = (
            f"WITH inserted AS ({INSERT_REPORTS.sql})\n"
            f"SELECT report_key, id, NULL::text FROM inserted{reads}"
        )

    async def run(
        self, connection: Any, plan: BatchPlan
    ) -> tuple[dict[int, int], dict[int, Companion]]:
        """The reports inserted (report key -> id), and each companion's read by the index
        of its effect."""
        arguments = INSERT_REPORTS.arguments(plan.report_rows())
        if not self._companions:
            return dict(await connection.fetch(self.sql, *arguments)), {}
        batch_ids = sorted({a.report.batch_id for a in plan.arrivals})
        inserted: dict[int, int] = {}
        read: dict[int, Companion] = {}
        for key, id_or_index, rows in await connection.fetch(self.sql, *arguments, batch_ids):
            if key is not None:
                inserted[key] = id_or_index
            else:
                decoded = [list(row.values()) for row in json.loads(rows)]
                read[id_or_index] = Companion(frozenset(batch_ids), decoded)
        return inserted, read


async def store_batch(
    connection: Any,
    batch: Sequence[Arrival],
    insert: ReportsInsert,
    folded: asyncio.Event | None = None,
) -> StoreResult:
    """Insert the reports, fold them into deliveries and run the effects (insert.effects),
    on an asyncpg connection inside a transaction the caller owns. `folded` is set once the
    deliveries are written, before the effects run."""
    plan = BatchPlan(batch)
    inserted, read = await insert.run(connection, plan)
    rows = plan.delivery_rows(inserted)
    returned = []
    if rows:
        returned = await connection.fetch(UPSERT_DELIVERIES.sql, *UPSERT_DELIVERIES.arguments(rows))
    if folded is not None:
        folded.set()
    result = plan.result(returned)
    if result.changes:
        for i, effect in enumerate(insert.effects):
            if i in read:
                hook = await effect.apply_postgres(connection, result.changes, read[i])
            else:
                hook = await effect.apply_postgres(connection, result.changes)
            if hook is not None:
                result.after_commit.append(hook)
    return result


class PostgresStore:
    """Stores batches with asyncpg itself (SQLAlchemy's execution layer cost as much as the
    driver), on connections it keeps between batches: a pool checkout with its ping cost a
    round trip per batch. The pool still opens and recycles them.

    Two batches may be in flight: the next one runs its statements while the previous one
    runs its effects and waits for its COMMIT. It starts them only once the previous one
    has written its deliveries, so for every row they share it queues behind that one (row
    locks): the later-received report is applied later. (Effects take their own row locks
    in an order of their own, and do not depend on the order batches reach them.)"""

    overlap_minimum = 1

    def __init__(self, engine: AsyncEngine, effects: Sequence[BatchEffect] = ()) -> None:
        self.engine = engine
        self._insert = ReportsInsert(effects)
        self._idle: list[tuple[AsyncConnection, Any]] = []
        # Set once the latest call has written its deliveries (or gave up).
        self._previous_ran: asyncio.Event | None = None

    async def store(self, batch: Sequence[Arrival]) -> StoreResult:
        after, ran = self._previous_ran, asyncio.Event()
        self._previous_ran = ran
        try:
            kept = bool(self._idle)
            conflicts = 0
            while True:
                try:
                    return await self._attempt(batch, after, ran, kept=kept)
                except Exception as exc:
                    # Once its deliveries were written, the next batch may have written its
                    # own: another try now could apply an earlier report after a later one.
                    if ran.is_set():
                        raise
                    if is_conflict(exc) and conflicts < CONFLICT_RETRIES:
                        # A deadlock with another writer rolled the batch back whole.
                        conflicts += 1
                        log.info("a batch met another writer (%s); again", type(exc).__name__)
                    elif not (kept and is_connectivity_error(exc)):
                        raise
                    # Else the kept connection may have died with a database restart.
                    # Storing is idempotent, so one more try on a fresh connection is safe.
                    kept = False
        finally:
            ran.set()

    async def _attempt(
        self, batch: Sequence[Arrival], after: asyncio.Event | None, ran: asyncio.Event, kept: bool
    ) -> StoreResult:
        if kept:
            connection, raw = self._idle.pop()
        else:
            connection = await self.engine.connect()
            raw = (await connection.get_raw_connection()).driver_connection
        try:
            if after is not None:
                await after.wait()
            async with raw.transaction():
                result = await store_batch(raw, batch, self._insert, ran)
        except BaseException:
            # Whatever state it is in, it is not reused: the pool replaces it.
            with contextlib.suppress(Exception):
                await connection.invalidate()
                await connection.close()
            raise
        self._idle.append((connection, raw))
        run_after_commit(result)
        return result

    async def close(self) -> None:
        while self._idle:
            with contextlib.suppress(Exception):
                await self._idle.pop()[0].close()
