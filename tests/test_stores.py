"""The two stores against the pure fold: random report sequences, stored in batches of random
sizes (some pipelined), give every delivery the state, report count, version and changes
that the ordering rule applied one report at a time gives. And effects run inside the
batch's transaction."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.models import Delivery, Report
from app.ingest.fold import (
    DELIVERY_COLUMNS,
    PREVIOUS,
    Arrival,
    DeliveryChange,
    DeliveryState,
    Previous,
    StoreResult,
    wins,
)
from app.ingest.parse import ParsedReport, validate_fields
from app.ingest.store import BatchStore
from app.ingest.writer import open_store
from tests.helpers import EFFECT_LOG_POSTGRES, EFFECT_LOG_SQLITE, engine_with_effect_log

TAIPEI = ZoneInfo("Asia/Taipei")
RECEIVED = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)
# CI runs a fixed, small set; MBOXII_STORE_EXAMPLES=500 explores new random cases locally.
EXPLORE = bool(os.environ.get("MBOXII_STORE_EXAMPLES"))
EXAMPLES = int(os.environ.get("MBOXII_STORE_EXAMPLES") or 25)


# ------------------------------------------------------------------ the reference model


@dataclasses.dataclass
class Model:
    """Each delivery's state after every report, the rule applied one report at a time."""

    seen: set[int] = dataclasses.field(default_factory=set)
    deliveries: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)

    def apply(self, batch: Sequence[Arrival]) -> tuple[list[bool], int, dict[Any, Any]]:
        """The batch's new flags, its batch-ID mismatches, and its changes by delivery
        (state with the winning report's key as report_id, version, previous)."""
        before = {key: d["winner"] for key, d in self.deliveries.items()}
        new: list[bool] = []
        mismatch = 0
        for arrival in batch:
            r = arrival.report
            new.append(r.key not in self.seen)
            if not new[-1]:
                continue
            self.seen.add(r.key)
            d = self.deliveries.get((r.msgid, r.mobile))
            if d is None:
                d = self.deliveries[(r.msgid, r.mobile)] = {
                    "winner": r,
                    "batch_id": r.batch_id,
                    "type": r.type,
                    "first": arrival.received_at,
                    "last": arrival.received_at,
                    "reports": 0,
                    "version": 0,
                    "previous": None,
                }
            d["reports"] += 1
            d["first"] = min(d["first"], arrival.received_at)
            d["last"] = max(d["last"], arrival.received_at)
            mismatch += r.batch_id != d["batch_id"]
            if wins(r, d["winner"]):
                d["winner"] = r
        changes = {}
        for key, d in self.deliveries.items():
            old = before.get(key)
            if old is d["winner"]:
                continue
            # One change per batch: the states between were never visible to anyone.
            d["version"] += 1
            d["previous"] = (
                None if old is None else Previous(old.status, old.outcome, old.final, old.done_at)
            )
            changes[key] = self.expected(key)
        return new, mismatch, changes

    def expected(self, key: tuple[str, str]) -> tuple[DeliveryState, int, Previous | None]:
        d = self.deliveries[key]
        w: ParsedReport = d["winner"]
        state = DeliveryState(
            w.msgid,
            w.mobile,
            d["batch_id"],
            d["type"],
            w.status,
            w.statuscode,
            w.outcome,
            w.final,
            w.inconsistent,
            w.done_at,
            d["first"],
            d["last"],
            d["reports"],
            w.key,
        )
        return state, d["version"], d["previous"]


# ------------------------------------------------------------------ random reports

NUMBERS = ["0911000001", "0911000002"]
WORDS = [
    ("DELIVRD", "1"),
    ("DELIVRD", "0"),  # inconsistent
    ("UNDELIV", "0"),
    ("EXPIRED", "0"),
    ("ENROUTE", "0"),
    ("ENROUTE", "1"),
]


@st.composite
def identity(draw: st.DrawFn) -> dict[str, Any]:
    """A report's fields, from small pools: ties, conflicts and several batch IDs abound."""
    word, code = draw(st.sampled_from(WORDS))
    return {
        "msgid": draw(st.sampled_from(["m1", "m2"])),
        "mobile": draw(st.sampled_from(NUMBERS)),
        "ID": draw(st.sampled_from(["B1", "B1", "B2"])),
        "type": draw(st.sampled_from(["Now", "dlv"])),
        "statusstr": word,
        "statuscode": code,
        "minute": draw(st.integers(0, 3)),  # late earlier-dated reports, and ties
    }


@st.composite
def spelled(draw: st.DrawFn, fields: dict[str, Any], prefix: str) -> dict[str, str]:
    """The fields as the gateway might spell them: a retry in another spelling is the same
    report (parse normalises; the identity is the parsed report)."""
    number = fields["mobile"]
    minute = fields["minute"]
    return {
        "msgid": f"{prefix}{fields['msgid']}",
        "mobile": draw(st.sampled_from([number, "+886" + number[1:], number[1:]])),
        "ID": fields["ID"],
        "type": draw(st.sampled_from([fields["type"], fields["type"].upper()])),
        "statusstr": draw(st.sampled_from([fields["statusstr"], fields["statusstr"].lower()])),
        "statuscode": fields["statuscode"],
        "donetime": draw(
            st.sampled_from([f"2026/11/20 10:0{minute}:00", f"2026112010{minute:02d}00"])
        ),
    }


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[dict[str, str]]], list[bool], list[int]]:
    """Batches of report fields (repeats of earlier reports included), whether each batch
    is stored beside the previous one (pipelined), and each report's receipt second."""
    prefix = f"s{next(SCENARIO)}-"
    pool: list[dict[str, Any]] = []
    sequence = []
    for _ in range(draw(st.integers(1, 24))):
        if pool and draw(st.integers(0, 3)) == 0:
            fields = draw(st.sampled_from(pool))  # a retry, or a copy in the same batch
        else:
            fields = draw(identity())
            pool.append(fields)
        sequence.append(draw(spelled(fields, prefix)))
    batches = []
    rest = sequence
    while rest:
        size = draw(st.integers(1, 8))
        batches.append(rest[:size])
        rest = rest[size:]
    beside = [draw(st.booleans()) for _ in batches]
    seconds = [draw(st.integers(0, 30)) for _ in sequence]
    return batches, beside, seconds


SCENARIO = itertools.count()


# ------------------------------------------------------------------ the stores


class Recorder:
    """An effect that keeps the changes it was given, batch by batch."""

    def __init__(self) -> None:
        self.calls: list[list[DeliveryChange]] = []

    async def apply_postgres(self, connection: Any, changes: Sequence[DeliveryChange]) -> None:
        self.calls.append(list(changes))

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> None:
        self.calls.append(list(changes))


async def stored(engine: AsyncEngine, prefix: str) -> dict[Any, Any]:
    """Every delivery of a scenario as stored, with its winning report's key as report_id
    and its count of rows in reports."""
    d = Delivery.__table__.c
    counts = (
        select(Report.msgid, Report.mobile, func.count().label("n"))
        .group_by(Report.msgid, Report.mobile)
        .subquery()
    )
    query = (
        select(Delivery, Report.report_key, counts.c.n)
        .join(Report, Report.id == d.report_id)
        .join(counts, (counts.c.msgid == d.msgid) & (counts.c.mobile == d.mobile))
        .where(d.msgid.startswith(prefix))
    )
    async with AsyncSession(engine) as session:
        rows = (await session.execute(query)).all()
    out = {}
    for delivery, key, history in rows:
        state = DeliveryState(*(getattr(delivery, name) for name in DELIVERY_COLUMNS))
        state.report_id = key
        previous = None
        if delivery.prev_status is not None:
            previous = Previous(*(getattr(delivery, f"prev_{name}") for name in PREVIOUS))
        out[(state.msgid, state.mobile)] = (state, delivery.version, previous, history)
    return out


async def report_keys(engine: AsyncEngine, prefix: str) -> dict[int, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Report.id, Report.report_key).where(Report.msgid.startswith(prefix))
        )
        return {row.id: row.report_key for row in rows}


def by_delivery(changes: Sequence[DeliveryChange], keys: dict[int, int]) -> dict[Any, Any]:
    return {
        (c.state.msgid, c.state.mobile): (
            dataclasses.replace(c.state, report_id=keys[c.state.report_id]),
            c.version,
            c.previous,
        )
        for c in changes
    }


async def run_scenario(
    store: BatchStore,
    recorder: Recorder,
    engine: AsyncEngine,
    scenario: tuple[list[list[dict[str, str]]], list[bool], list[int]],
) -> None:
    field_batches, beside, seconds = scenario
    prefix = field_batches[0][0]["msgid"].split("-")[0] + "-"
    received = iter(seconds)
    batches = [
        [
            Arrival(validate_fields(fields, TAIPEI, RECEIVED), at, "callback")
            for fields in batch
            for at in (RECEIVED + dt.timedelta(seconds=next(received)),)
        ]
        for batch in field_batches
    ]
    # Batches stored beside the previous one are handed over together, as the writer does
    # with two in flight: their statements must still apply in call order.
    groups: list[list[list[Arrival]]] = []
    for batch, together in zip(batches, beside, strict=True):
        if together and groups and len(groups[-1]) < 2:
            groups[-1].append(batch)
        else:
            groups.append([batch])
    results: list[StoreResult] = []
    recorder.calls.clear()
    for group in groups:
        results += await asyncio.gather(*(store.store(batch) for batch in group))

    model = Model()
    keys = await report_keys(engine, prefix)
    for batch, result in zip(batches, results, strict=True):
        new, mismatch, changes = model.apply(batch)
        assert result.new == new
        assert result.batch_mismatch == mismatch
        assert by_delivery(result.changes, keys) == changes
    # The effect saw exactly the changes of each batch that had any.
    assert recorder.calls == [r.changes for r in results if r.changes]
    assert len(keys) == len(model.seen)
    expected = {
        key: (*model.expected(key), model.deliveries[key]["reports"]) for key in model.deliveries
    }
    assert await stored(engine, prefix) == expected


def test_stores_agree_with_the_rule_applied_one_report_at_a_time(database_url: str) -> None:
    with asyncio.Runner() as runner:
        engine = create_engine(database_url)
        recorder = Recorder()
        store = open_store(engine, [recorder])

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=not EXPLORE,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(scenarios())
        def one(scenario: Any) -> None:
            runner.run(run_scenario(store, recorder, engine, scenario))

        try:
            one()
        finally:
            runner.run(store.close())
            runner.run(engine.dispose())


# ------------------------------------------------------------------ effects


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with_effect_log(database_url) as engine:
        yield engine


class Logger:
    """An effect that writes each changed delivery's msgid in the batch's transaction, then
    raises `fail` if given."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail

    async def apply_postgres(self, connection: Any, changes: Sequence[DeliveryChange]) -> None:
        await connection.executemany(EFFECT_LOG_POSTGRES, [(c.state.msgid,) for c in changes])
        if self.fail is not None:
            raise self.fail

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> None:
        connection.executemany(EFFECT_LOG_SQLITE, [(c.state.msgid,) for c in changes])
        if self.fail is not None:
            raise self.fail


async def counts(engine: AsyncEngine) -> list[int]:
    """Rows in reports, deliveries and effect_log."""
    async with engine.connect() as connection:
        return [
            (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in ("reports", "deliveries", "effect_log")
        ]


def arrivals(*msgids: str) -> list[Arrival]:
    fields = {"ID": "B1", "type": "Now", "mobile": "0911000001", "statuscode": "1"}
    return [
        Arrival(
            validate_fields(
                {**fields, "msgid": m, "statusstr": "DELIVRD", "donetime": "2026/11/20 10:00"},
                TAIPEI,
                RECEIVED,
            ),
            RECEIVED,
        )
        for m in msgids
    ]


@asynccontextmanager
async def opened(engine: AsyncEngine, *effects: Any) -> AsyncIterator[BatchStore]:
    store = open_store(engine, effects)
    try:
        yield store
    finally:
        await store.close()


async def test_an_effect_commits_with_its_batch(engine: AsyncEngine) -> None:
    async with opened(engine, Logger()) as store:
        result = await store.store(arrivals("a", "b"))
        assert len(result.changes) == 2
        # a duplicate changes nothing, so the effect has nothing to do
        assert (await store.store(arrivals("a"))).changes == []
    assert await counts(engine) == [2, 2, 2]


async def test_an_effect_that_raises_rolls_the_whole_batch_back(engine: AsyncEngine) -> None:
    async with opened(engine, Logger(fail=RuntimeError("effect failed"))) as store:
        with pytest.raises(RuntimeError, match="effect failed"):
            await store.store(arrivals("a", "b"))
    assert await counts(engine) == [0, 0, 0]


# ------------------------------------------------------------------ deliveries from before 0007


def test_a_delivery_stored_before_versions_starts_at_version_1(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0006")
    with sqlite3.connect(tmp_path / "old.db") as connection:
        connection.execute(
            "INSERT INTO deliveries (msgid, mobile, batch_id, type, status, statuscode, outcome,"
            " final, inconsistent, done_at, first_received_at, last_received_at, reports,"
            " report_id) VALUES ('old', '+886911000001', 'B1', 'now', 'ENROUTE', 0, 'pending',"
            " 0, 0, '2026-11-20 01:00:00.000000', '2026-11-20 01:00:01.000000',"
            " '2026-11-20 01:00:01.000000', 1, 0)"
        )
    upgrade(url)

    async def later_word() -> list[DeliveryChange]:
        engine = create_engine(url)
        try:
            async with opened(engine) as store:
                return (await store.store(arrivals("old"))).changes
        finally:
            await engine.dispose()

    (change,) = asyncio.run(later_word())
    assert change.version == 2
    assert change.previous == Previous(
        "ENROUTE", "pending", False, dt.datetime(2026, 11, 20, 1, tzinfo=dt.UTC)
    )
    assert change.state.status == "DELIVRD"
    assert change.state.reports == 2
    assert change.state.first_received_at == dt.datetime(2026, 11, 20, 1, 0, 1, tzinfo=dt.UTC)
