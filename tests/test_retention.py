"""Retention: the purge deletes old deliveries with all their reports, and old quarantine rows,
in batches, leaving the tables consistent, from the CLI and from the running service."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, text, update

from app.db.engine import create_engine
from app.db.models import Delivery, Rejected, Report, Send, SendNumber
from app.db.retention import PurgeResult, cutoff_for, delete_deliveries, purge
from tests.conftest import ROOT, clean_postgres, make_settings, report, running_app
from tests.helpers import (
    async_table_counts,
    consistency_problems,
    stored_msgids,
    table_counts,
)

CB = "/callbacks/mboxii"
OLD = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)


async def post_all(client: httpx.AsyncClient, bodies: list[dict[str, str]]) -> None:
    results = await asyncio.gather(*(client.post(CB, data=b) for b in bodies))
    assert {r.status_code for r in results} <= {200, 422}


async def age(database_url: str, msgids: list[str], rejected_ids: list[int] = ()) -> None:  # type: ignore[assignment]
    """Make deliveries (all their reports) and quarantine rows look 40 days old."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(Delivery)
                .where(Delivery.msgid.in_(msgids))
                .values(first_received_at=OLD, last_received_at=OLD)
            )
            await conn.execute(
                update(Report).where(Report.msgid.in_(msgids)).values(received_at=OLD)
            )
            if rejected_ids:
                await conn.execute(
                    update(Rejected)
                    .where(Rejected.id.in_(rejected_ids))
                    .values(received_at=OLD, last_seen_at=OLD)
                )
    finally:
        await engine.dispose()


async def seed_sends(database_url: str) -> None:
    """Sends with their numbers: two made long ago, one made long ago for a time still
    to come, one made now."""
    now = dt.datetime.now(dt.UTC)
    rows = [
        ("old-1", OLD, None),
        ("old-2", OLD, OLD + dt.timedelta(hours=1)),
        ("old-for-later", OLD, now + dt.timedelta(days=1)),
        ("new-1", now, None),
    ]
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for batch_id, created_at, send_at in rows:
                send_id = (
                    await conn.execute(
                        insert(Send)
                        .values(
                            batch_id=batch_id,
                            type="now" if send_at is None else "scheduled",
                            language="utf8",
                            text="hello",
                            send_at=send_at,
                            gateway_answer="00",
                            created_at=created_at,
                            checks=0,
                            check_errors=0,
                        )
                        .returning(Send.id)
                    )
                ).scalar_one()
                await conn.execute(
                    insert(SendNumber),
                    [
                        {"send_id": send_id, "mobile": "+886922161529", "position": 0},
                        {"send_id": send_id, "mobile": "+886912345678", "position": 1},
                    ],
                )
    finally:
        await engine.dispose()


async def seed(database_url: str, client: httpx.AsyncClient) -> dict[str, Any]:
    """Old and new deliveries with two reports each, one delivery whose first report is old
    and whose last is new, old and new quarantine rows, and old and new sends."""
    old = [f"old{i}" for i in range(7)]
    new = [f"new{i}" for i in range(4)]
    bodies = [report(msgid=m, statusstr=w) for m in old + new for w in ("ENROUTE", "DELIVRD")]
    await post_all(client, [*bodies, report(msgid="mixed", statusstr="ENROUTE")])
    rejected = []
    for i in range(5):
        r = await client.post(CB, data=report(msgid=f"bad{i}", statuscode="9"))
        rejected.append(r.json()["rejected_id"])
    await age(database_url, [*old, "mixed"], rejected[:3])
    assert (await client.post(CB, data=report(msgid="mixed"))).status_code == 200
    await seed_sends(database_url)
    return {"old": old, "new": new, "rejected": rejected}


async def sends_left(database_url: str) -> tuple[set[str], int]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            batches = set((await conn.scalars(select(Send.batch_id))).all())
            numbers = len((await conn.execute(select(SendNumber.send_id))).all())
    finally:
        await engine.dispose()
    return batches, numbers


async def test_purge_deletes_old_deliveries_with_their_reports_in_batches(
    database_url: str, app_factory: Any
) -> None:
    async with app_factory() as (app, client):
        data = await seed(database_url, client)
        seen: list[PurgeResult] = []

        def progress(result: PurgeResult) -> None:
            seen.append(
                PurgeResult(result.deliveries, result.reports, result.rejected, result.sends)
            )

        result = await purge(app.app_state.engine, cutoff_for(30), batch_size=2, progress=progress)
        assert (result.deliveries, result.reports, result.rejected, result.sends) == (7, 14, 3, 2)
        # progress came batch by batch, counting up
        assert len(seen) >= 4
        assert [p.deliveries for p in seen] == sorted(p.deliveries for p in seen)
        assert seen[-1] == result
        assert max(p.deliveries - q.deliveries for p, q in zip(seen[1:], seen, strict=False)) <= 2

        async with app.app_state.engine.connect() as conn:
            left = set((await conn.scalars(select(Delivery.msgid))).all())
            mixed = (await conn.scalars(select(Report).where(Report.msgid == "mixed"))).all()
            ids = set((await conn.scalars(select(Rejected.id))).all())
        assert left == {*data["new"], "mixed"}
        # a delivery heard of recently keeps its whole history, old reports included
        assert len(mixed) == 2
        assert ids == set(data["rejected"][3:])
        assert await sends_left(database_url) == ({"old-for-later", "new-1"}, 4)
        assert (await async_table_counts(database_url)) == {
            "reports": 10,
            "deliveries": 5,
            "rejected": 2,
        }
        # nothing left to do the second time
        again = await purge(app.app_state.engine, cutoff_for(30))
        assert (again.deliveries, again.reports, again.rejected, again.sends) == (0, 0, 0, 0)
        assert (await client.get("/v1/deliveries/old0")).status_code == 404
        assert (await client.get("/v1/deliveries/new0")).json()["reports"] == 2
    assert (await asyncio.to_thread(consistency_problems, database_url)) == []


async def test_purge_beside_ingest_loses_no_acknowledged_report(
    database_url: str, app_factory: Any
) -> None:
    """Reports arriving for deliveries the purge is deleting either keep their delivery
    alive or recreate it; either way every acknowledged report stays, and the tables agree."""
    async with app_factory() as (app, client):
        msgids = [f"m{i}" for i in range(300)]
        await post_all(client, [report(msgid=m) for m in msgids])
        await age(database_url, msgids)
        acknowledged: set[str] = set()

        async def late_reports() -> None:
            for i in range(0, 300, 3):
                body = report(msgid=f"m{i}", statusstr="EXPIRED", statuscode="0")
                r = await client.post(CB, data=body)
                if r.status_code == 200:
                    acknowledged.add(f"m{i}")

        purged, _ = await asyncio.gather(
            purge(app.app_state.engine, cutoff_for(30), batch_size=7), late_reports()
        )
        assert len(acknowledged) == 100
        async with app.app_state.engine.connect() as conn:
            expired = set(
                (await conn.scalars(select(Report.msgid).where(Report.status == "EXPIRED"))).all()
            )
        assert expired == acknowledged
        assert purged.deliveries >= 200
    assert (await asyncio.to_thread(consistency_problems, database_url)) == []


async def test_running_service_purges_in_the_background(
    database_url: str, app_factory: Any
) -> None:
    async with app_factory() as (_, client):
        data = await seed(database_url, client)
    before = await async_table_counts(database_url)
    assert before["deliveries"] == 12
    async with app_factory(retention_days=30, retention_interval_seconds=1) as (_, client):

        async def purged() -> bool:
            return (await async_table_counts(database_url)) == {
                "reports": 10,
                "deliveries": 5,
                "rejected": 2,
            }

        deadline = asyncio.get_running_loop().time() + 60
        while not await purged():
            assert asyncio.get_running_loop().time() < deadline, "background purge never ran"
            await asyncio.sleep(0.1)
        # it keeps running: what ages later goes in a later round
        await age(database_url, data["new"])
        deadline = asyncio.get_running_loop().time() + 60
        while (await async_table_counts(database_url))["deliveries"] != 1:
            assert asyncio.get_running_loop().time() < deadline, "no second round"
            await asyncio.sleep(0.1)
        # and ingest goes on beside it
        assert (await client.post(CB, data=report(msgid="fresh"))).status_code == 200
    assert (await asyncio.to_thread(consistency_problems, database_url)) == []


def _purge_cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "purge", *args],
        env={**clean, "DLR_DATABASE_URL": database_url, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_purge_command(database_url: str, app_factory: Any) -> None:
    async with app_factory() as (_, client):
        data = await seed(database_url, client)
    done = await asyncio.to_thread(_purge_cli, database_url)
    assert done.returncode == 2
    assert "--older-than" in done.stderr and "DLR_RETENTION_DAYS" in done.stderr
    done = await asyncio.to_thread(_purge_cli, database_url, "--older-than", "0")
    assert done.returncode == 2

    # nothing is 50 days old
    done = await asyncio.to_thread(_purge_cli, database_url, DLR_RETENTION_DAYS="50")
    assert done.returncode == 0, done.stderr
    assert "done: deleted 0 deliveries, 0 reports, 0 quarantined requests, 0 sends" in done.stdout

    done = await asyncio.to_thread(
        _purge_cli, database_url, "--older-than", "30", "--batch-size", "3"
    )
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stdout.splitlines() if line.startswith("deleted so far")]
    assert len(progress) >= 3
    counts = [int(line.split()[3]) for line in progress]  # deliveries deleted so far
    assert counts == sorted(counts)
    assert all(b - a <= 3 for a, b in zip([0, *counts], counts, strict=False))
    assert progress[-1] == (
        "deleted so far: 7 deliveries, 14 reports, 3 quarantined requests, 2 sends, "
        "0 delivered events"
    )
    assert (
        "done: deleted 7 deliveries, 14 reports, 3 quarantined requests, 2 sends, "
        "0 delivered events" in done.stdout
    )
    assert (await asyncio.to_thread(stored_msgids, database_url)) == {*data["new"], "mixed"}
    assert (await asyncio.to_thread(table_counts, database_url))["rejected"] == 2
    assert await sends_left(database_url) == ({"old-for-later", "new-1"}, 4)
    assert (await asyncio.to_thread(consistency_problems, database_url)) == []


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_retention_setting_means_keep_forever(value: str) -> None:
    assert make_settings("sqlite://", retention_days=value).retention_days is None


async def test_consistency_check_would_notice_an_orphan(
    database_url: str, app_factory: Any
) -> None:
    """The consistency helper the retention tests rely on does see a broken table."""
    async with app_factory() as (app, client):
        await post_all(client, [report(msgid="a"), report(msgid="b")])
        async with app.app_state.engine.begin() as conn:
            await conn.execute(text("DELETE FROM deliveries WHERE msgid = 'a'"))
    problems = await asyncio.to_thread(consistency_problems, database_url)
    # the orphaned report, and the number whose summary still counts the delivery
    assert sorted(tuple(p) for p in problems) == [("+886922161529",), ("a", "+886922161529")]


async def test_a_delivery_refreshed_after_the_scan_is_kept(
    database_url: str, app_factory: Any
) -> None:
    """The race the purge must win: a delivery was old when its batch was scanned, and a new
    report arrived before the delete. The delete checks the age again and keeps it whole."""
    async with app_factory() as (app, client):
        await post_all(client, [report(msgid="race"), report(msgid="gone")])
        await age(database_url, ["race", "gone"])
        body = report(msgid="race", statusstr="EXPIRED", statuscode="0")
        assert (await client.post(CB, data=body)).status_code == 200
        keys = [("race", "+886922161529"), ("gone", "+886922161529")]
        async with app.app_state.engine.begin() as connection:
            deleted = await delete_deliveries(connection, keys, cutoff_for(30))
        assert deleted == (1, 1)
        assert (await client.get("/v1/deliveries/race")).json()["reports"] == 2
    assert (await asyncio.to_thread(consistency_problems, database_url)) == []


@pytest.mark.postgres
async def test_purge_skips_rows_ingest_holds(postgres_url: str) -> None:
    """On PostgreSQL the purge never waits for an ingest transaction (so they cannot deadlock):
    a delivery locked by one is left for the next round."""
    database_url = postgres_url
    await clean_postgres(database_url)
    async with running_app(make_settings(database_url)) as (app, client):
        await post_all(client, [report(msgid="held"), report(msgid="free")])
        await age(database_url, ["held", "free"])
        async with app.app_state.engine.connect() as holder:
            await holder.execute(
                text("UPDATE deliveries SET reports = reports WHERE msgid = 'held'")
            )
            keys = [("held", "+886922161529"), ("free", "+886922161529")]
            async with asyncio.timeout(20), app.app_state.engine.begin() as connection:
                deleted = await delete_deliveries(connection, keys, cutoff_for(30))
            assert deleted == (1, 1)
            await holder.rollback()
        again = await purge(app.app_state.engine, cutoff_for(30))
        assert again.deliveries == 1
    assert (await asyncio.to_thread(table_counts, database_url))["reports"] == 0
