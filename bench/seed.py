"""Seed a PostgreSQL database with N synthetic reports (server-side, no HTTP) for read benches.

Deliveries i = 1..D get one final report each, and every fourth also an earlier ENROUTE
report, so N = 1.25 D. Batches hold 80 numbers; 1,000,000 distinct mobiles; done_at spreads
over the 35 days before now (--days); status words follow a plausible mix (85% DELIVRD). The
numbers' summaries are then built from the deliveries with check-numbers' own recount (their
insert trigger is off meanwhile). When reports is partitioned by month, the months the seed
spans are created first (the migration made only the current month and those ahead), so no
row lands in the default partition.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time

import asyncpg
from sqlalchemy.dialects import postgresql

from app.db.numbers import SUMMARY, recount

WORDS = """CASE
  WHEN h < 85 THEN 'DELIVRD' WHEN h < 89 THEN 'UNDELIV' WHEN h < 92 THEN 'EXPIRED'
  WHEN h < 94 THEN 'REJECTD' WHEN h < 95 THEN 'DELETED' WHEN h < 96 THEN 'UNKNOWN'
  WHEN h < 97 THEN 'SYNTAXE' WHEN h < 98 THEN 'ACCEPTD' ELSE 'ENROUTE' END"""

BASE = f"""
SELECT i,
       'm' || i AS msgid,
       (i / 80)::text AS batch_id,
       '+8869' || lpad(((i::bigint * 7919) % 1000000)::text, 8, '0') AS mobile,
       CASE WHEN (i / 80) % 10 = 0 THEN 'scheduled' ELSE 'now' END AS type,
       now() - make_interval(secs => ($4::float8 * 86400.0) * (1 - i::float8 / $1)) AS done_at,
       {WORDS} AS status
FROM (SELECT i, (i::bigint * 2654435761 % 100)::int AS h
      FROM generate_series($2::int, $3::int) AS i) AS g
"""

OUTCOME = """CASE WHEN status = 'DELIVRD' OR status = 'ACCEPTD' THEN 'delivered'
  WHEN status = 'ENROUTE' THEN 'pending' ELSE 'failed' END"""


async def create_months(dsn: str, days: float) -> None:
    """The month partitions of the span, where reports is partitioned."""
    from app.db import partitions
    from app.db.engine import create_engine

    engine = create_engine(dsn, pool_size=1)
    try:
        now = dt.datetime.now(dt.UTC)
        first = partitions.month_start(now - dt.timedelta(days=days))
        months = (now.year - first.year) * 12 + now.month - first.month
        created = await partitions.ensure_partitions(engine, now=first, months_ahead=months)
        if created:
            print(f"  created partitions {', '.join(created)}", flush=True)
    finally:
        await engine.dispose()


async def seed(dsn: str, reports: int, chunk: int, days: float = 35.0) -> None:
    deliveries = reports * 4 // 5
    await create_months(dsn, days)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE reports, deliveries, numbers RESTART IDENTITY")
        # The numbers' triggers would summarise each chunk of half a million deliveries as
        # it goes; one recount at the end is much faster.
        await conn.execute("ALTER TABLE deliveries DISABLE TRIGGER numbers_insert")
        started = time.monotonic()
        for lo in range(1, deliveries + 1, chunk):
            hi = min(lo + chunk - 1, deliveries)
            async with conn.transaction():
                await conn.execute(
                    f"""
                    INSERT INTO reports (id, report_key, batch_id, msgid, mobile, type, status,
                        statuscode, outcome, final, inconsistent, done_at, received_at, source)
                    SELECT i, ('x' || substr(md5('f' || i), 1, 16))::bit(64)::bigint, batch_id,
                        msgid, mobile, type, status,
                        CASE WHEN {OUTCOME} = 'delivered' THEN 1 ELSE 0 END, {OUTCOME},
                        status <> 'ENROUTE', false, done_at, done_at + interval '5 seconds',
                        'callback'
                    FROM ({BASE}) AS b
                    """,
                    deliveries,
                    lo,
                    hi,
                    days,
                )
                await conn.execute(
                    f"""
                    INSERT INTO reports (id, report_key, batch_id, msgid, mobile, type, status,
                        statuscode, outcome, final, inconsistent, done_at, received_at, source)
                    SELECT $1::int + i / 4, ('x' || substr(md5('e' || i), 1, 16))::bit(64)::bigint,
                        batch_id, msgid,
                        mobile, type, 'ENROUTE', 0, 'pending', false, false,
                        done_at - interval '1 minute', done_at - interval '55 seconds', 'callback'
                    FROM ({BASE}) AS b WHERE i % 4 = 0 AND status <> 'ENROUTE'
                    """,
                    deliveries,
                    lo,
                    hi,
                    days,
                )
                await conn.execute(
                    f"""
                    INSERT INTO deliveries (msgid, mobile, batch_id, type, status, statuscode,
                        outcome, final, inconsistent, done_at, first_received_at,
                        last_received_at, reports, report_id)
                    SELECT msgid, mobile, batch_id, type, status,
                        CASE WHEN {OUTCOME} = 'delivered' THEN 1 ELSE 0 END, {OUTCOME},
                        status <> 'ENROUTE', false, done_at, done_at - interval '55 seconds',
                        done_at + interval '5 seconds',
                        CASE WHEN i % 4 = 0 AND status <> 'ENROUTE' THEN 2 ELSE 1 END, i
                    FROM ({BASE}) AS b
                    """,
                    deliveries,
                    lo,
                    hi,
                    days,
                )
            done = hi * 5 // 4
            rate = done / (time.monotonic() - started)
            print(f"  seeded ~{done:,} reports ({rate:,.0f}/s)", flush=True)
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('reports', 'id'), (SELECT max(id) FROM reports))"
        )
        await conn.execute("ALTER TABLE deliveries ENABLE TRIGGER numbers_insert")
        started = time.monotonic()
        counted = recount().compile(
            dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
            compile_kwargs={"literal_binds": True},
        )
        await conn.execute(f"INSERT INTO numbers (mobile, {', '.join(SUMMARY)}) {counted}")
        print(f"  numbers summarised in {time.monotonic() - started:.0f}s", flush=True)
        await conn.execute("ANALYZE reports")
        await conn.execute("ANALYZE deliveries")
        await conn.execute("ANALYZE numbers")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dsn", help="postgresql://... of a migrated database (it is emptied)")
    parser.add_argument("--reports", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=500_000, help="deliveries per transaction")
    parser.add_argument("--days", type=float, default=35.0, help="span of done_at, up to now")
    args = parser.parse_args()
    asyncio.run(seed(args.dsn, args.reports, args.chunk, args.days))


if __name__ == "__main__":
    main()
