"""Monthly partitions of `reports` on PostgreSQL: find them, create them ahead, drop old ones.

Each partition holds one UTC calendar month of done_at; `reports_default` takes whatever no
month covers (odd dates: years past, far future). The service creates the months ahead at
start and daily, and retention drops whole months. Partitions made by someone else (pg_partman,
an operator) are found by their bounds, whatever their names, and left as they are.
SQLite keeps one table: everything here does nothing there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("mboxii_dlr.partitions")

PARENT = "reports"
#: Months created ahead of the current one.
MONTHS_AHEAD = 3
#: The advisory lock every change of the partitions takes (creation, detaching): one at a
#: time across the deployment, whoever runs it (service, CLI purge, a second purge).
LOCK_KEY = 0x6D626F786969_01  # "mboxii" + 1
#: How long a DETACH or ATTACH waits for the lock on `reports` before it gives way to ingest
#: and tries again (it waits behind running queries, and everything else would queue behind it).
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 10

_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of `reports`: [low, high) of done_at, or the default (no bounds)."""

    name: str
    low: dt.datetime | None
    high: dt.datetime | None
    oid: int = 0

    @property
    def is_default(self) -> bool:
        return self.low is None


def month_start(when: dt.datetime) -> dt.datetime:
    """The first instant of when's UTC month."""
    when = when.astimezone(dt.UTC)
    return dt.datetime(when.year, when.month, 1, tzinfo=dt.UTC)


def add_months(month: dt.datetime, n: int) -> dt.datetime:
    index = month.year * 12 + month.month - 1 + n
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def month_name(month: dt.datetime) -> str:
    return f"{PARENT}_{month.year:04d}_{month.month:02d}"


def _bound(value: str) -> dt.datetime:
    # PostgreSQL writes timestamptz bounds in the session's zone, with its offset.
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"a partition bound without an offset: {value!r}")
    return parsed.astimezone(dt.UTC)


async def is_partitioned(connection: AsyncConnection) -> bool:
    """Whether `reports` is a partitioned table (PostgreSQL after migration 0011)."""
    if connection.dialect.name != "postgresql":
        return False
    kind = await connection.scalar(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT}
    )
    return bool(kind == "p")


async def partitions(connection: AsyncConnection) -> list[Partition]:
    """The partitions of `reports`, months in order, the default last."""
    rows = await connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.oid FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": PARENT},
    )
    found = []
    for name, bound, oid in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, oid))
            continue
        match = _BOUND.fullmatch(bound)
        if match is None:
            raise ValueError(f"partition {name} has a bound this service does not know: {bound}")
        found.append(Partition(name, _bound(match[1]), _bound(match[2]), oid))
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(found, key=lambda p: p.low or far)


def _quoted(connection: AsyncConnection, name: str) -> str:
    """A table name for SQL text (names come from the catalog, where anyone may have made
    one; PostgreSQL cannot bind identifiers as parameters)."""
    return str(connection.dialect.identifier_preparer.quote(name))


def _literal(when: dt.datetime) -> str:
    return f"'{when.astimezone(dt.UTC).isoformat()}'"


async def _create_month(
    connection: AsyncConnection, month: dt.datetime, default: Partition | None
) -> None:
    """Create the partition of `month` beside the live table and attach it: ATTACH takes a
    lighter lock on `reports` than CREATE TABLE ... PARTITION OF, so ingest goes on. Rows the
    default partition holds for that month (odd dates until now) move into it first, or the
    attach would fail."""
    name, low, high = month_name(month), _literal(month), _literal(add_months(month, 1))
    await connection.execute(
        text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    if default is not None:
        await connection.execute(
            text(
                f"WITH moved AS (DELETE FROM {_quoted(connection, default.name)} "  # noqa: S608 - a quoted name and two timestamps of ours
                f"WHERE done_at >= {low} AND done_at < {high} RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved"
            )
        )
    await connection.execute(
        text(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})")
    )


async def ensure_partitions(
    engine: AsyncEngine, now: dt.datetime | None = None, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the partitions of the current month and `months_ahead` after it that do not
    exist yet (months no partition overlaps); returns the names created. One transaction,
    under the partitions' advisory lock, so processes starting together create each once."""
    if engine.dialect.name != "postgresql":
        return []
    this_month = month_start(now or dt.datetime.now(dt.UTC))
    for attempt in range(LOCK_ATTEMPTS):
        try:
            async with engine.begin() as connection:
                if not await is_partitioned(connection):
                    return []
                # Behind a purge that is dropping months, however long that takes.
                await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
                await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                existing = await partitions(connection)
                default = next((p for p in existing if p.is_default), None)
                created = []
                for n in range(months_ahead + 1):
                    low = add_months(this_month, n)
                    high = add_months(low, 1)
                    if any(
                        p.low is not None and p.high is not None and p.low < high and low < p.high
                        for p in existing
                    ):
                        continue
                    await _create_month(connection, low, default)
                    created.append(month_name(low))
            if created:
                log.info("created partitions %s", ", ".join(created))
            return created
        except DBAPIError as exc:
            if not _lock_timed_out(exc) or attempt == LOCK_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    return []


def _lock_timed_out(exc: DBAPIError) -> bool:
    # 55P03: lock_not_available, what lock_timeout raises.
    return getattr(exc.orig, "sqlstate", None) == "55P03" or "lock timeout" in str(exc.orig)


@dataclass(slots=True)
class Dropped:
    """Partitions dropped, and the rows the planner's statistics gave them."""

    partitions: list[str]
    rows: int


async def drop_partitions_before(engine: AsyncEngine, boundary: dt.datetime) -> Dropped:
    """Detach and drop every month partition that ends at or before `boundary`.

    DETACH ... CONCURRENTLY would not block ingest at all, but PostgreSQL refuses it while a
    default partition exists; a plain DETACH holds the lock on `reports` for a catalog change
    only (milliseconds), and waits at most LOCK_TIMEOUT for it before it lets ingest by and
    tries again. The DROP then runs, in a transaction of its own, on a table nobody reads
    any more. Both take the partitions' advisory lock for their transaction (a session lock
    would not survive a pooler in transaction mode), so concurrent purges take turns and the
    second finds the months already gone."""
    dropped = Dropped([], 0)
    if engine.dialect.name != "postgresql":
        return dropped
    async with engine.connect() as connection:
        if not await is_partitioned(connection):
            return dropped
        doomed = [
            p for p in await partitions(connection) if p.high is not None and p.high <= boundary
        ]
    for partition in doomed:
        rows = await _detach(engine, partition)
        if rows is None:
            continue  # another purge took it
        async with engine.begin() as connection:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            await connection.execute(
                text(f"DROP TABLE IF EXISTS {_quoted(connection, partition.name)}")
            )
        log.info("retention: dropped partition %s (about %d reports)", partition.name, rows)
        dropped.partitions.append(partition.name)
        dropped.rows += rows
    return dropped


async def _detach(engine: AsyncEngine, partition: Partition) -> int | None:
    """Detach `partition` if it is still attached; its rows by the planner's statistics, or
    None when another process detached it first."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            async with engine.begin() as connection:
                await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
                attached = await connection.scalar(
                    text(
                        "SELECT greatest(c.reltuples, 0)::bigint FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhrelid = :p AND i.inhparent = to_regclass(:t)"
                    ),
                    {"p": partition.oid, "t": PARENT},
                )
                if attached is None:
                    return None
                await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                name = _quoted(connection, partition.name)
                await connection.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {name}"))
                return int(attached)
        except DBAPIError as exc:
            if not _lock_timed_out(exc) or attempt == LOCK_ATTEMPTS - 1:
                raise
            log.info("retention: %s is busy; detaching %s again shortly", PARENT, partition.name)
            await asyncio.sleep(0.5 * (attempt + 1))
    return None


async def maintain_periodically(engine: AsyncEngine, interval: float) -> None:
    """Keep the months ahead created: at start, then every `interval` seconds."""
    while True:
        try:
            await ensure_partitions(engine)
        except Exception as exc:  # the database may be away; the next round tries again
            log.warning(
                "creating partitions ahead failed (%s); next try in %.0fs",
                exc.__class__.__name__,
                interval,
            )
        await asyncio.sleep(interval)
