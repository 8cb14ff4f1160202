"""Retention benchmark: one month of reports removed by dropping its partition against the
DELETE path, and the migration that partitions an existing table, on PostgreSQL.

Seeds N reports (bench/seed.py) spread from the first day of the month before last up to
now, into a database at migration 0010 (one `reports` table, as before the partitions).
Two copies of it are made (CREATE DATABASE ... TEMPLATE):

- **delete**: `purge` as the service runs it on one table: the deliveries last heard of
  before the first day of last month, batch by batch, each with its reports (DELETE).
- **partitions**: first `mboxii-dlr migrate` (0011, the conversion: timed, per million
  rows), then the same `purge`, which now deletes the deliveries and drops the month
  partition of the month before last.

For each: the wall time and the WAL written (pg_current_wal_lsn before and after). Other
work on the same server adds to the WAL: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import subprocess
import sys
import time

import asyncpg

from app.db import partitions
from app.db.engine import create_engine
from app.db.retention import PurgeResult, purge
from bench.ingest import ROOT, _pg, pg_database
from bench.seed import seed

#: The schema just before the partitions (migration 0011 partitions reports).
BEFORE_PARTITIONS = "0010"


def migrate(dsn: str, revision: str = "head") -> float:
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from app.db.migrate import upgrade; upgrade({dsn!r}, {revision!r})",
        ],
        cwd=ROOT,
        check=True,
    )
    return time.monotonic() - started


async def wal_lsn(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
    finally:
        await conn.close()


async def wal_since(dsn: str, lsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn
            )
        )
    finally:
        await conn.close()


async def vacuum(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def timed_purge(dsn: str, cutoff: dt.datetime, batch: int) -> tuple[PurgeResult, float, int]:
    await vacuum(dsn)
    engine = create_engine(dsn, pool_size=2)
    try:
        before = await wal_lsn(dsn)
        started = time.monotonic()
        result = await purge(engine, cutoff, batch_size=batch)
        elapsed = time.monotonic() - started
        written = await wal_since(dsn, before)
    finally:
        await engine.dispose()
    return result, elapsed, written


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def copy_database(template: str, name: str) -> str:
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_pg(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return f"postgresql://postgres@127.0.0.1/{name}"


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=50_000_000)
    parser.add_argument("--batch-size", type=int, default=5000, help="the purge's (CLI default)")
    parser.add_argument("--reuse", action="store_true", help="keep the seeded base database")
    parser.add_argument("--database", default="mboxii_bench_retention")
    parser.add_argument("--only", nargs="*", default=["delete", "partitions"])
    args = parser.parse_args(argv)

    now = dt.datetime.now(dt.UTC)
    start = partitions.add_months(partitions.month_start(now), -2)
    cutoff = partitions.add_months(start, 1)  # everything done before last month goes
    base = args.database
    base_dsn = f"postgresql://postgres@127.0.0.1/{base}"
    if not args.reuse:
        pg_database(base)
        migrate(base_dsn, BEFORE_PARTITIONS)
        days = (now - start).total_seconds() / 86400
        started = time.monotonic()
        asyncio.run(seed(base_dsn, args.reports, 500_000, days))
        print(f"seeded {args.reports:,} reports in {time.monotonic() - started:.0f}s", flush=True)
    total = asyncio.run(count(base_dsn, "reports"))
    print(f"\n{total:,} reports from {start:%Y-%m-%d}; purge cutoff {cutoff:%Y-%m-%d}\n")

    rows = []
    if "delete" in args.only:
        dsn = copy_database(base, f"{base}_delete")
        result, elapsed, wal = asyncio.run(timed_purge(dsn, cutoff, args.batch_size))
        rows.append(("DELETE (one table)", result, elapsed, wal))
    if "partitions" in args.only:
        dsn = copy_database(base, f"{base}_partitions")
        seconds = migrate(dsn)
        print(
            f"migration 0011 (partitioning {total:,} reports): {seconds:.1f}s, "
            f"{seconds / max(total / 1e6, 1e-9):.1f}s per million reports"
        )
        result, elapsed, wal = asyncio.run(timed_purge(dsn, cutoff, args.batch_size))
        rows.append(("partition drop", result, elapsed, wal))

    print("\n| path | deliveries deleted | reports deleted | partitions dropped | time s | WAL |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result, elapsed, wal in rows:
        reports = result.reports + result.partition_reports
        print(
            f"| {name} | {result.deliveries:,} | {reports:,} | {result.partitions} "
            f"| {elapsed:.1f} | {mib(wal)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
