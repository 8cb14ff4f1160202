"""Monthly partitions of reports on PostgreSQL: where reports land, the months kept ahead,
retention by whole months, two purges at once, and the migration beside running ingest."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import text, update

from app.db import partitions
from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.models import Delivery, Report
from app.db.retention import cutoff_for, purge
from tests.conftest import ROOT, make_settings, report, running_app
from tests.helpers import consistency_problems

pytestmark = pytest.mark.postgres

TAIPEI = ZoneInfo("Asia/Taipei")
CB = "/callbacks/mboxii"


def this_month() -> dt.datetime:
    """The current UTC month, read when a test needs it (not at import: a run can cross the
    first of a month)."""
    return partitions.month_start(dt.datetime.now(dt.UTC))


async def where_stored(url: str) -> dict[tuple[str, str], str]:
    """Each report's (msgid, status) and the partition holding it."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT msgid, status, tableoid::regclass::text FROM reports")
            )
            return {(m, s): where for m, s, where in rows}
    finally:
        await engine.dispose()


def donetime(when: dt.datetime) -> str:
    return when.astimezone(TAIPEI).strftime("%Y/%m/%d %H:%M:%S")


async def test_reports_land_in_their_month_and_retries_meet_their_first_copy(
    migrated: str,
) -> None:
    month = this_month()
    # a few minutes ago, but in this month, which the migration made (on the first of a
    # month, five minutes ago can be last month)
    recent = max(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), month)
    # before the first month the migration made (none of this database's reports is older)
    early = partitions.add_months(month, -5) + dt.timedelta(days=3)
    early_month = partitions.month_name(partitions.month_start(early))
    async with running_app(make_settings(migrated)) as (app, client):
        bodies = [
            report(msgid="now", donetime=donetime(recent)),
            report(msgid="odd"),  # 2003
            report(msgid="early", donetime=donetime(early)),
        ]
        for body in bodies * 2:  # each one twice: the gateway's retry
            assert (await client.post(CB, data=body)).status_code == 200
        stored = await where_stored(migrated)
        assert stored == {
            ("now", "DELIVRD"): partitions.month_name(month),
            ("odd", "DELIVRD"): "reports_default",
            ("early", "DELIVRD"): "reports_default",
        }
        # a month made later takes its rows out of the default partition
        engine = app.app_state.engine
        assert await partitions.ensure_partitions(engine, now=early, months_ahead=0) == [
            early_month
        ]
        assert await partitions.ensure_partitions(engine, now=early, months_ahead=0) == []
        stored = await where_stored(migrated)
        assert stored[("early", "DELIVRD")] == early_month
        assert stored[("odd", "DELIVRD")] == "reports_default"
        # a retry after the move still meets its first copy
        assert (await client.post(CB, data=bodies[2])).status_code == 200
        delivery = (await client.get("/v1/deliveries/early")).json()
        assert delivery["reports"] == 1
        duplicates = (await client.get("/metrics")).text
        assert "mboxii_dlr_reports_duplicate_total 4.0" in duplicates
    assert await asyncio.to_thread(consistency_problems, migrated) == []


async def test_the_service_creates_the_months_ahead_at_start(migrated: str) -> None:
    engine = create_engine(migrated, pool_size=1)
    try:
        # as if the months ahead had not been made (the migration ran long ago)
        ahead = partitions.add_months(this_month(), partitions.MONTHS_AHEAD)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {partitions.month_name(ahead)}"))
        async with running_app(make_settings(migrated)):
            deadline = time.monotonic() + 10
            while True:
                async with engine.connect() as conn:
                    names = {p.name for p in await partitions.partitions(conn)}
                if partitions.month_name(ahead) in names:
                    break
                assert time.monotonic() < deadline, "the month ahead was never created"
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


async def seed_months(url: str, months: int, per_month: int) -> dict[str, Any]:
    """Month partitions for the `months` months before this one, deliveries done in each
    (two reports each), all last heard of 100 days ago; and one oddly dated delivery."""
    engine = create_engine(url, pool_size=2)
    first = partitions.add_months(this_month(), -months)
    await partitions.ensure_partitions(engine, now=first, months_ahead=months - 1)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    msgids: dict[str, list[str]] = {}
    async with running_app(make_settings(url)) as (_, client):
        for n in range(months + 1):
            month = partitions.add_months(first, n)
            name = partitions.month_name(month)
            msgids[name] = []
            for i in range(per_month):
                msgid = f"{name}-{i}"
                # minutes into the month: on the first of a month, a day in would be more
                # than the 24 hours ahead of receipt a donetime may be
                done = month + dt.timedelta(minutes=i)
                for word in ("ENROUTE", "DELIVRD"):
                    body = report(msgid=msgid, statusstr=word, donetime=donetime(done))
                    assert (await client.post(CB, data=body)).status_code == 200
                msgids[name].append(msgid)
        assert (await client.post(CB, data=report(msgid="odd"))).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(update(Delivery).values(last_received_at=long_ago))
        await conn.execute(update(Report).values(received_at=long_ago))
        await conn.execute(text("ANALYZE reports"))
    await engine.dispose()
    return msgids


async def stored_deliveries(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return set((await conn.scalars(text("SELECT msgid FROM deliveries"))).all())
    finally:
        await engine.dispose()


async def test_retention_drops_whole_months_with_their_deliveries(migrated: str) -> None:
    msgids = await seed_months(migrated, months=3, per_month=20)
    engine = create_engine(migrated, pool_size=2)
    try:
        # 45 days: the cutoff falls in the month before last, so the months before that go
        cutoff = cutoff_for(45)
        boundary = partitions.month_start(cutoff)
        going = [name for name in msgids if partitions.month_name(boundary) > name]
        wal_before = await _wal(engine)
        result = await purge(engine, cutoff, batch_size=7)
        async with engine.connect() as conn:
            left = {p.name for p in await partitions.partitions(conn)}
    finally:
        await engine.dispose()
    assert going and result.partitions == len(going)
    assert not left & set(going)
    expected = {m for name, ms in msgids.items() if name not in going for m in ms}
    assert await stored_deliveries(migrated) == expected
    # the deliveries of the dropped months, and the odd one with its report (the only report
    # deleted row by row)
    assert result.deliveries == sum(len(msgids[n]) for n in going) + 1
    assert result.reports == 1
    assert result.partition_reports == 2 * sum(len(msgids[n]) for n in going)
    assert wal_before is not None
    assert await asyncio.to_thread(consistency_problems, migrated) == []


async def _wal(engine: Any) -> str | None:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT pg_current_wal_lsn()::text"))).scalar()


def _purge_cli(url: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "purge", "--older-than", "45", "--batch-size", "25"],
        env={**clean, "DLR_DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
async def test_two_purges_at_once_delete_everything_once_and_fail_nothing(migrated: str) -> None:
    msgids = await seed_months(migrated, months=3, per_month=150)
    boundary = partitions.month_start(cutoff_for(45))
    going = [name for name in msgids if partitions.month_name(boundary) > name]
    first, second = await asyncio.gather(
        asyncio.to_thread(_purge_cli, migrated), asyncio.to_thread(_purge_cli, migrated)
    )
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    done = [run.stdout.splitlines()[-1] for run in (first, second)]
    deleted = [int(line.split("deleted ")[1].split(" deliveries")[0]) for line in done]
    assert sum(deleted) == sum(len(msgids[n]) for n in going) + 1
    dropped = sum(
        int(line.split(", ")[-1].split(" month partitions")[0])
        for line in done
        if "partitions" in line
    )
    assert dropped == len(going)
    expected = {m for name, ms in msgids.items() if name not in going for m in ms}
    assert await stored_deliveries(migrated) == expected
    assert await asyncio.to_thread(consistency_problems, migrated) == []


@pytest.fixture
def before_partitions(fresh_postgres: str) -> str:
    """The schema of the release before the partitions, with 30,000 reports over three
    months."""
    upgrade(fresh_postgres, "0010")

    async def seed() -> None:
        conn = await asyncpg.connect(fresh_postgres)
        try:
            await conn.execute(
                """
                INSERT INTO reports (report_key, batch_id, msgid, mobile, type, status,
                    statuscode, outcome, final, inconsistent, done_at, received_at, source)
                SELECT i, 'b' || (i / 80), 'seed' || i, '0912345678', 'Now', 'DELIVRD', 1,
                    'delivered', true, false, now() - make_interval(hours => i % 2000),
                    now() - make_interval(hours => i % 2000), 'callback'
                FROM generate_series(1, 30000) AS i
                """
            )
        finally:
            await conn.close()

    asyncio.run(seed())
    return fresh_postgres


@pytest.mark.slow
async def test_the_migration_copies_every_report_while_ingest_goes_on(
    before_partitions: str,
) -> None:
    url = before_partitions
    inserted: list[str] = []
    during: list[str] = []
    migrating = threading.Event()
    stop = asyncio.Event()

    async def ingest() -> None:
        # One report per transaction, as fast as it goes: what the old release's writer does.
        conn = await asyncpg.connect(url)
        try:
            i = 0
            while not stop.is_set():
                msgid = f"live{i}"
                await conn.execute(
                    "INSERT INTO reports (report_key, batch_id, msgid, mobile, type, status, "
                    "statuscode, outcome, final, inconsistent, done_at, received_at, source) "
                    "VALUES ($1, 'live', $2, '0912345678', 'Now', 'DELIVRD', 1, 'delivered', "
                    "true, false, now(), now(), 'callback')",
                    i,
                    msgid,
                )
                inserted.append(msgid)
                if migrating.is_set():
                    during.append(msgid)
                i += 1
        except asyncpg.PostgresError:
            pass  # the swap: the old table is gone under this release's feet
        finally:
            await conn.close()

    writer = asyncio.create_task(ingest())
    await asyncio.sleep(0.3)

    def migrate() -> None:
        migrating.set()
        upgrade(url)
        migrating.clear()

    await asyncio.to_thread(migrate)
    stop.set()
    await writer
    assert len(during) > 10, "ingest stood still during the copy"
    conn = await asyncpg.connect(url)
    try:
        kind = await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = 'reports'::regclass"
        )
        total = await conn.fetchval("SELECT count(*) FROM reports")
        live = {r[0] for r in await conn.fetch("SELECT msgid FROM reports WHERE batch_id = 'live'")}
        default = await conn.fetchval("SELECT count(*) FROM reports_default")
    finally:
        await conn.close()
    assert kind == "p"
    # every committed report is there, once
    assert live == set(inserted)
    assert total == 30_000 + len(inserted)
    # the seed's months each have their partition: nothing went to the default one
    assert default == 0
