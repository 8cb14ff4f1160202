"""The numbers' summaries stay equal to a recount from deliveries beyond ingest: the operator's
check (`mboxii-dlr check-numbers [--repair]`), the retention purge, and migration 0008, which
builds them for deliveries stored before it."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import uuid
from typing import Any

import httpx
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.models import Delivery, Report
from app.db.numbers import check
from app.db.retention import purge
from tests.conftest import PG_ADMIN_URL, ROOT, _pg_admin, report
from tests.helpers import consistency_problems

CB = "/callbacks/mboxii"


def check_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "check-numbers", *args],
        env={**clean, "DLR_DATABASE_URL": database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def post(client: httpx.AsyncClient, **fields: str) -> None:
    response = await client.post(CB, data=report(**fields))
    assert response.status_code == 200, response.text


async def number(client: httpx.AsyncClient, mobile: str) -> Any:
    response = await client.get(f"/v1/numbers/{mobile}")
    return response.json() if response.status_code == 200 else response.status_code


async def execute(database_url: str, *statements: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def test_check_numbers_finds_and_repairs_what_differs(
    database_url: str, app_factory: Any
) -> None:
    async with app_factory() as (_, client):
        await post(client, msgid="a", mobile="0911000001", statusstr="UNDELIV", statuscode="0")
        await post(client, msgid="b", mobile="0911000001")
        await post(client, msgid="c", mobile="0911000002", statusstr="EXPIRED", statuscode="0")
        await post(client, msgid="d", mobile="0911000003")
        before = [await number(client, f"09110000{i:02d}") for i in (1, 2, 3)]
    done = await asyncio.to_thread(check_cli, database_url)
    assert (done.returncode, done.stdout) == (
        0,
        "check-numbers: every summary equals a recount of its deliveries\n",
    )

    await execute(
        database_url,
        "UPDATE numbers SET failed = failed + 1 WHERE mobile = '+886911000001'",
        "UPDATE numbers SET failure_streak = 0 WHERE mobile = '+886911000002'",
        "DELETE FROM numbers WHERE mobile = '+886911000003'",
        "INSERT INTO numbers (mobile, deliveries) VALUES ('+886911000004', 3)",
    )
    done = await asyncio.to_thread(check_cli, database_url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(
        "check-numbers: 4 summaries differ: 0911***001, 0911***002, 0911***003, 0911***004\n"
    )
    assert "0911000001" not in done.stdout and "+886" not in done.stdout  # masked

    done = await asyncio.to_thread(check_cli, database_url, "--repair")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith("check-numbers: repaired 4; every summary now agrees\n")
    assert (await asyncio.to_thread(check_cli, database_url)).returncode == 0
    async with app_factory() as (_, client):
        after = [await number(client, f"09110000{i:02d}") for i in (1, 2, 3, 4)]
    assert after == [*before, 404]  # a number claiming deliveries it has not is forgotten


async def test_the_purge_recounts_numbers_and_forgets_those_left_without_deliveries(
    database_url: str, app_factory: Any
) -> None:
    async with app_factory() as (_, client):
        # one number only old deliveries, one old and new, one old and suppressed by hand
        await post(client, msgid="old1", mobile="0911000001", statusstr="UNDELIV", statuscode="0")
        await post(client, msgid="old2", mobile="0911000002", statusstr="UNDELIV", statuscode="0")
        await post(client, msgid="new2", mobile="0911000002", donetime="2003/05/22 13:40:00")
        await post(client, msgid="old3", mobile="0911000003")
        put = await client.put("/v1/suppressions/0911000003", json={"reason": "asked"})
        assert put.status_code == 200
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for table in (Delivery, Report):
                column = table.last_received_at if table is Delivery else table.received_at
                await connection.execute(
                    update(table).where(table.msgid.like("old%")).values({column: old})
                )
            await connection.execute(
                update(Delivery).where(Delivery.msgid.like("old%")).values(first_received_at=old)
            )
        result = await purge(engine, dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    finally:
        await engine.dispose()
    assert result.deliveries == 3
    async with app_factory() as (_, client):
        assert await number(client, "0911000001") == 404
        kept = await number(client, "0911000002")
        assert (kept["deliveries"], kept["failed"], kept["delivered"]) == (1, 0, 1)
        assert (kept["failure_streak"], kept["last_status"]) == (0, "DELIVRD")
        suppressed = await number(client, "0911000003")
        assert (suppressed["deliveries"], suppressed["suppressed"]["reason"]) == (0, "asked")
    assert await asyncio.to_thread(consistency_problems, database_url) == []


# ------------------------------------------------------------------ migration 0008

OLD_DELIVERIES = [
    # msgid, mobile, status, outcome, final, minute
    ("m1", "+886911000001", "DELIVRD", "delivered", True, 0),
    ("m2", "+886911000001", "UNDELIV", "failed", True, 1),
    ("m3", "+886911000001", "ENROUTE", "pending", False, 2),
    ("m4", "+886911000001", "EXPIRED", "failed", True, 3),
    ("m5", "+886911000002", "REJECTD", "failed", True, 1),
    ("m6", "+886911000002", "DELIVRD", "delivered", True, 1),
]


def old_rows() -> list[tuple[Any, ...]]:
    rows = []
    for msgid, mobile, status, outcome, final, minute in OLD_DELIVERIES:
        done = dt.datetime(2026, 11, 20, 2, minute, tzinfo=dt.UTC)
        code = int(outcome == "delivered")
        rows.append((msgid, mobile, "B1", "now", status, code, outcome, final, False, done, done))
    return rows


def insert_old(placeholders: list[str]) -> str:
    return (
        "INSERT INTO deliveries (msgid, mobile, batch_id, type, status, statuscode, outcome,"
        " final, inconsistent, done_at, first_received_at, last_received_at, reports,"
        f" report_id) VALUES ({', '.join(placeholders)}, 1, 0)"
    )


EXPECTED = {
    "+886911000001": (4, 1, 2, 1, "2026-11-20T02:00:00Z", "2026-11-20T02:03:00Z", "EXPIRED", 2),
    # a tie on done_at: the latest is the first in the list order (msgid), and a failure
    # done at the same time as the latest delivered one is not after it
    "+886911000002": (2, 1, 1, 0, "2026-11-20T02:01:00Z", "2026-11-20T02:01:00Z", "REJECTD", 0),
}


async def differing(database_url: str) -> list[str]:
    """The numbers check-numbers would report (these deliveries have no reports, so the
    whole consistency check does not apply)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        return (await check(engine)).differing
    finally:
        await engine.dispose()


async def _summaries(database_url: str) -> dict[str, Any]:
    from tests.conftest import make_settings, running_app

    out = {}
    async with running_app(make_settings(database_url)) as (_, client):
        for mobile in EXPECTED:
            n = (await client.get(f"/v1/numbers/{mobile}")).json()
            out[mobile] = (
                n["deliveries"],
                n["delivered"],
                n["failed"],
                n["pending"],
                n["first_done_at"],
                n["last_done_at"],
                n["last_status"],
                n["failure_streak"],
            )
    return out


def test_the_migration_builds_summaries_for_deliveries_stored_before_it(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0007")
    with sqlite3.connect(tmp_path / "old.db") as connection:
        for row in old_rows():
            # times as UTCDateTime writes them: UTC text
            done = row[9].strftime("%Y-%m-%d %H:%M:%S.%f")
            connection.execute(insert_old(["?"] * 12), (*row[:9], done, done, done))
    upgrade(url)
    assert asyncio.run(_summaries(url)) == EXPECTED
    assert asyncio.run(differing(url)) == []


def test_the_migration_builds_summaries_on_postgresql(postgres_url: str) -> None:
    name = f"mboxii_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url, "0007")

        async def insert() -> None:
            import asyncpg

            connection = await asyncpg.connect(url)
            try:
                for row in old_rows():
                    sql = insert_old([f"${i}" for i in range(1, 13)])
                    await connection.execute(sql, *row, row[9])
            finally:
                await connection.close()

        asyncio.run(insert())
        upgrade(url)
        assert asyncio.run(_summaries(url)) == EXPECTED
        assert asyncio.run(differing(url)) == []
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
