"""The delivery_counts rollup stays exact through inserts, state changes and deletes."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from sqlalchemy import delete, select

from app.db.models import Delivery, DeliveryCount
from app.read.aggregates import _scan_grains, grain_counts
from tests.conftest import report

CB = "/callbacks/mboxii"
WORDS = [
    ("DELIVRD", "1"),
    ("UNDELIV", "0"),
    ("ENROUTE", "0"),
    ("ACCEPTD", "0"),
    ("ACCEPTD", "1"),
    ("EXPIRED", "0"),
]


async def _rollup(session: Any) -> dict[tuple[Any, ...], int]:
    rows = await session.execute(
        select(
            DeliveryCount.grain,
            DeliveryCount.type,
            DeliveryCount.outcome,
            DeliveryCount.status,
            DeliveryCount.count,
        ).where(DeliveryCount.count != 0)
    )
    return {tuple(r[:4]): int(r[4]) for r in rows}


async def _direct(session: Any) -> dict[tuple[Any, ...], int]:
    deliveries = (await session.scalars(select(Delivery))).all()
    out: dict[tuple[Any, ...], int] = {}
    for d in deliveries:
        grain = d.done_at.replace(minute=d.done_at.minute // 15 * 15, second=0, microsecond=0)
        key = (grain, d.type, d.outcome, d.status)
        out[key] = out.get(key, 0) + 1
    return out


async def test_rollup_matches_deliveries_after_random_traffic(app_factory: Any) -> None:
    rng = random.Random(2026)
    base = dt.datetime(2026, 11, 20, 13, 0, 0)
    async with app_factory(ingest_batch_delay_ms=5) as (app, client):
        for i in range(300):
            word, code = rng.choice(WORDS)
            when = base + dt.timedelta(seconds=rng.randrange(0, 4 * 3600), microseconds=999_999)
            r = await client.post(
                CB,
                data=report(
                    msgid=f"m{rng.randrange(60)}",
                    mobile=f"09120000{rng.randrange(3):02d}",
                    type=rng.choice(["Now", "dlv"]),
                    statusstr=word,
                    statuscode=code,
                    donetime=when.strftime("%Y/%m/%d %H:%M:%S")
                    if i % 3
                    else when.isoformat() + "+08:00",
                ),
            )
            assert r.status_code == 200
        async with app.app_state.sessionmaker() as session:
            assert await _rollup(session) == await _direct(session)
            # deletes (retention) keep it exact too
            await session.execute(delete(Delivery).where(Delivery.msgid.in_(["m1", "m2", "m3"])))
            await session.commit()
            assert await _rollup(session) == await _direct(session)

            # stats through the rollup equal a scan of deliveries, edges included
            start = dt.datetime(2026, 11, 20, 5, 7, 13, 500, tzinfo=dt.UTC)
            end = dt.datetime(2026, 11, 20, 8, 52, 1, tzinfo=dt.UTC)
            for kind in (None, "now", "scheduled"):
                fast = await grain_counts(session, start, end, kind)
                slow = await _scan_grains(session, start, end, kind)
                key = lambda g: (g.grain, g.outcome, g.status)  # noqa: E731
                merged: dict[Any, int] = {}
                for g in fast:
                    merged[key(g)] = merged.get(key(g), 0) + g.count
                assert merged == {key(g): g.count for g in slow}
                assert sum(g.count for g in slow) > 0


def test_migration_backfills_existing_deliveries(database_url: str) -> None:
    import asyncio

    from alembic import command

    from app.db.engine import create_engine
    from app.db.migrate import alembic_config, upgrade

    command.downgrade(alembic_config(database_url), "0003")
    done = dt.datetime(2026, 11, 20, 5, 40, 59, 999_999, tzinfo=dt.UTC)

    async def seed_and_read() -> tuple[dict[Any, int], dict[Any, int]]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                for i, status in enumerate(["DELIVRD", "DELIVRD", "UNDELIV"]):
                    await conn.execute(
                        Delivery.__table__.insert().values(
                            msgid=f"b{i}",
                            mobile="+886912345678",
                            batch_id="1",
                            type="now",
                            status=status,
                            statuscode=1,
                            outcome="delivered" if i < 2 else "failed",
                            final=True,
                            inconsistent=False,
                            done_at=done,
                            first_received_at=done,
                            last_received_at=done,
                            reports=1,
                            report_id=i,
                        )
                    )
            await asyncio.to_thread(upgrade, database_url)
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(engine) as session:
                return await _rollup(session), await _direct(session)
        finally:
            await engine.dispose()

    rollup, direct = asyncio.run(seed_and_read())
    assert rollup == direct
    assert sorted(rollup.values()) == [1, 2]


async def test_stats_summed_per_hour_or_day_in_sql_equal_a_scan(app_factory: Any) -> None:
    from zoneinfo import ZoneInfo

    from app.read.aggregates import coarsest_unit, delivery_stats, fold_buckets
    from app.read.buckets import LocalCalendar

    rng = random.Random(7)
    base = dt.datetime(2026, 11, 18, 0, 0, 0)
    async with app_factory() as (app, client):
        for i in range(120):
            when = base + dt.timedelta(minutes=rng.randrange(0, 5 * 24 * 60), seconds=17)
            word, code = rng.choice(WORDS)
            await client.post(
                CB,
                data=report(
                    msgid=f"u{i}",
                    statusstr=word,
                    statuscode=code,
                    donetime=when.strftime("%Y/%m/%d %H:%M:%S"),
                ),
            )
        start = dt.datetime(2026, 11, 17, 13, 7, tzinfo=dt.UTC)
        end = dt.datetime(2026, 11, 23, 2, 50, tzinfo=dt.UTC)
        units = set()
        async with app.app_state.sessionmaker() as session:
            for zone_name in ("UTC", "Asia/Taipei", "Asia/Kathmandu", "Europe/Berlin"):
                zone = ZoneInfo(zone_name)
                for interval in ("hour", "day"):
                    starts = LocalCalendar(zone, interval).boundaries(start, end)
                    units.add(coarsest_unit(starts))
                    fast = await delivery_stats(session, start, end, interval, zone)
                    totals, buckets = fold_buckets(
                        await _scan_grains(session, start, end), starts, start
                    )
                    assert fast["totals"] == totals.as_dict()
                    assert [b["deliveries"] for b in fast["buckets"]] == [
                        b.as_dict()["deliveries"] for b in buckets
                    ]
                    assert [b["by_status"] for b in fast["buckets"]] == [
                        b.as_dict()["by_status"] for b in buckets
                    ]
        assert units == {900, 3600, 86400}
        assert totals.as_dict()["deliveries"] > 0
