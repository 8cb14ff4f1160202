"""The group-commit writer on its own, on SQLite and PostgreSQL: batching, duplicates, a
refused report failing alone, effects in the batch's transaction, timeouts, saturation,
outage back-off and the drain at shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.metrics import Metrics
from app.ingest.errors import IngestRefused, IngestUnavailable
from app.ingest.fold import DeliveryChange
from app.ingest.parse import ParsedReport, validate_fields
from app.ingest.writer import Writer
from tests.conftest import make_settings, report, running_app
from tests.helpers import EFFECT_LOG_POSTGRES, EFFECT_LOG_SQLITE, engine_with_effect_log

TAIPEI = ZoneInfo("Asia/Taipei")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parsed(msgid: str, **fields: str) -> ParsedReport:
    return validate_fields(report(msgid=msgid, **fields), TAIPEI, now())


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with_effect_log(database_url) as engine:
        yield engine


@asynccontextmanager
async def running(engine: AsyncEngine, **options: Any) -> AsyncIterator[tuple[Writer, Metrics]]:
    metrics = Metrics()
    writer = Writer(engine, metrics, **options)
    writer.start()
    try:
        yield writer, metrics
    finally:
        await writer.stop()


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def rows(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def outcomes(writer: Writer, reports: Sequence[ParsedReport]) -> list[Any]:
    """Each submit's answer: True (new), False (duplicate) or the exception it raised."""
    return await asyncio.gather(*(writer.submit(r, now()) for r in reports), return_exceptions=True)


class Effect:
    """A test effect: it counts its calls, writes each changed msgid to effect_log (a NULL
    for the msgid "poison", which the database refuses), and can be held at a gate, slowed
    down or made to raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.changes: list[DeliveryChange] = []
        self.raises: BaseException | None = None
        self.delay = 0.0
        self.gate = threading.Event()
        self.gate.set()

    def _values(self, changes: Sequence[DeliveryChange]) -> list[tuple[str | None]]:
        self.calls += 1
        self.changes += changes
        if self.raises is not None:
            raise self.raises
        return [(None if c.state.msgid == "poison" else c.state.msgid,) for c in changes]

    async def apply_postgres(self, connection: Any, changes: Sequence[DeliveryChange]) -> None:
        values = self._values(changes)
        await asyncio.sleep(self.delay)
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        await connection.executemany(EFFECT_LOG_POSTGRES, values)

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> None:
        values = self._values(changes)
        time.sleep(self.delay)
        self.gate.wait(10)
        connection.executemany(EFFECT_LOG_SQLITE, values)


async def test_concurrent_submits_share_a_commit(engine: AsyncEngine) -> None:
    effect = Effect()
    async with running(engine, batch_delay=0.02, effects=[effect]) as (writer, metrics):
        results = await outcomes(writer, [parsed(f"m{i}") for i in range(60)])
    assert results == [True] * 60
    assert await rows(engine, "reports") == 60
    batches = sample(metrics, "mboxii_dlr_ingest_batch_size_count")
    assert sample(metrics, "mboxii_dlr_ingest_batch_size_sum") == 60
    assert 1 <= batches < 60
    assert effect.calls == batches
    assert sorted(c.state.msgid for c in effect.changes) == sorted(f"m{i}" for i in range(60))
    assert all(c.version == 1 and c.previous is None for c in effect.changes)


async def test_a_retry_is_a_duplicate_and_a_later_word_a_change(engine: AsyncEngine) -> None:
    effect = Effect()
    enroute = parsed("m1", statusstr="ENROUTE", statuscode="0")
    delivered = parsed("m1", statusstr="DELIVRD", statuscode="1")
    async with running(engine, effects=[effect]) as (writer, metrics):
        assert await outcomes(writer, [enroute, enroute]) in ([True, False], [False, True])
        assert await writer.submit(enroute, now()) is False
        assert await writer.submit(delivered, now()) is True
    assert sample(metrics, "mboxii_dlr_reports_duplicate_total") == 2
    first, second = effect.changes
    assert (first.version, first.state.status, first.previous) == (1, "ENROUTE", None)
    assert (second.version, second.state.status) == (2, "DELIVRD")
    assert second.previous is not None
    assert (second.previous.status, second.previous.final) == ("ENROUTE", False)


async def test_a_report_the_database_refuses_fails_alone(engine: AsyncEngine) -> None:
    # statuscode 7 passes no validation, but here it skips it: the table's CHECK refuses it.
    poison = dataclasses.replace(parsed("poison"), statuscode=7)
    good = [parsed(f"good{i}") for i in range(10)]
    async with running(engine, batch_delay=0.05) as (writer, metrics):
        results = await outcomes(writer, [*good[:4], poison, *good[4:]])
    assert isinstance(results.pop(4), IngestRefused)
    assert results == [True] * 10
    assert await rows(engine, "reports") == 10
    assert sample(metrics, "mboxii_dlr_reports_storage_refused_total") == 1
    # the poison shared a batch with the others: the batch failed, then went one by one
    assert sample(metrics, "mboxii_dlr_ingest_batch_size_count") == 10


async def test_an_effect_the_database_refuses_fails_its_report_alone(
    engine: AsyncEngine,
) -> None:
    effect = Effect()
    async with running(engine, batch_delay=0.05, effects=[effect]) as (writer, _):
        results = await outcomes(writer, [parsed("a"), parsed("poison"), parsed("b")])
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], IngestRefused)
    assert await rows(engine, "reports") == 2
    assert await rows(engine, "effect_log") == 2


async def test_an_effect_that_raises_acknowledges_nothing(engine: AsyncEngine) -> None:
    effect = Effect()
    effect.raises = RuntimeError("a bug in an effect")
    async with running(engine, batch_delay=0.05, effects=[effect]) as (writer, _):
        results = await outcomes(writer, [parsed("a"), parsed("b")])
    # Not the data's fault: the callers get 503 and the gateway retries later.
    assert [type(r) for r in results] == [IngestUnavailable] * 2
    assert {r.cause for r in results} == {"database"}
    assert await rows(engine, "reports") == 0
    assert await rows(engine, "effect_log") == 0


async def test_a_commit_past_the_timeout_is_a_503_and_a_retry_a_duplicate(
    engine: AsyncEngine,
) -> None:
    effect = Effect()
    effect.delay = 0.5
    async with running(engine, timeout=0.1, effects=[effect]) as (writer, _):
        with pytest.raises(IngestUnavailable) as raised:
            await writer.submit(parsed("slow"), now())
        assert raised.value.cause == "timeout"
        effect.delay = 0
        # the commit still landed: the gateway's retry is a harmless duplicate
        deadline = time.monotonic() + 5
        while await rows(engine, "reports") == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await writer.submit(parsed("slow"), now()) is False


async def test_a_full_queue_is_a_503_saturated(engine: AsyncEngine) -> None:
    effect = Effect()
    effect.gate.clear()  # commits wait, so the queue cannot drain
    async with running(engine, batch_size=1, queue_size=2, effects=[effect]) as (writer, _):
        pending = asyncio.ensure_future(outcomes(writer, [parsed(f"m{i}") for i in range(10)]))
        await asyncio.sleep(0.2)
        effect.gate.set()
        results = await pending
    saturated = [r for r in results if isinstance(r, IngestUnavailable)]
    assert saturated and {r.cause for r in saturated} == {"saturated"}
    # at most two batches of one in flight and two queued
    accepted = [r for r in results if r is True]
    assert 2 <= len(accepted) <= 4
    assert len(accepted) + len(saturated) == 10
    assert await rows(engine, "reports") == len(accepted)


async def test_an_outage_refuses_callbacks_for_a_while_then_recovers(
    engine: AsyncEngine,
) -> None:
    effect = Effect()
    effect.raises = ConnectionResetError("the database went away")
    async with running(engine, effects=[effect]) as (writer, _):
        with pytest.raises(IngestUnavailable) as raised:
            await writer.submit(parsed("a"), now())
        assert raised.value.cause == "database"
        tries = effect.calls
        # during the back-off callbacks are refused without trying the database
        with pytest.raises(IngestUnavailable):
            await writer.submit(parsed("b"), now())
        assert effect.calls == tries
        effect.raises = None
        await asyncio.sleep(0.3)  # the first back-off is 0.25 s
        assert await writer.submit(parsed("c"), now()) is True
        assert await writer.submit(parsed("d"), now()) is True
    assert await rows(engine, "reports") == 2


async def test_stop_commits_everything_queued(engine: AsyncEngine) -> None:
    metrics = Metrics()
    writer = Writer(engine, metrics, batch_size=7)
    writer.start()
    submits = [asyncio.ensure_future(writer.submit(parsed(f"m{i}"), now())) for i in range(50)]
    await asyncio.sleep(0)  # every report is queued
    await writer.stop()
    assert [await s for s in submits] == [True] * 50
    assert await rows(engine, "reports") == 50
    with pytest.raises(IngestUnavailable) as raised:
        await writer.submit(parsed("late"), now())
    assert raised.value.cause == "stopping"


# A deadlock met once by the batch's delivery upsert, and one met by every batch holding the
# msgid "stuck" (statement-level triggers of the test's own, on PostgreSQL).
DEADLOCKS = [
    "CREATE SEQUENCE test_deadlock_once",
    """
CREATE FUNCTION test_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('test_deadlock_once') = 1 OR EXISTS (SELECT 1 FROM new_rows WHERE msgid = 'stuck')
  THEN
    RAISE EXCEPTION 'deadlock detected (a test''s)' USING ERRCODE = '40P01';
  END IF;
  RETURN NULL;
END $$
""",
    "CREATE TRIGGER test_deadlock AFTER INSERT ON deliveries REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION test_deadlock()",
]


@pytest.mark.postgres
async def test_a_deadlock_with_another_writer_is_tried_again_not_an_outage(migrated: str) -> None:
    # Replicas' batches can deadlock in the triggers that keep the rollup and the numbers
    # (tests/test_replicas.py met it in CI): such a batch used to answer 503 and refuse every
    # callback of the next 0.25 s as if the database were down.
    async with running_app(make_settings(migrated)) as (app, client):
        async with app.app_state.engine.begin() as connection:
            for statement in DEADLOCKS:
                await connection.exec_driver_sql(statement)
        first = await client.post("/callbacks/mboxii", data=report(msgid="once"))
        assert first.status_code == 200, first.text
        # a batch that deadlocks every time: 503 for it, and nothing else is refused
        stuck = await client.post("/callbacks/mboxii", data=report(msgid="stuck"))
        assert stuck.status_code == 503
        assert "retry-after" in stuck.headers
        after = await client.post("/callbacks/mboxii", data=report(msgid="after"))
        assert after.status_code == 200, after.text
        stored = await client.get("/v1/deliveries/once")
        assert stored.status_code == 200
        assert stored.json()["reports"] == 1
