"""Per-number summaries on the write path: after random report sequences (duplicates,
respellings, late reports, several msgids per number, pipelined batches, replays, lifts and
suppressions by hand), every number's summary equals a recount of its deliveries, both the
recount of this file (the contract's definitions in Python) and the one check-numbers runs;
and the streak rules, one case at a time."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.metrics import Metrics
from app.db.engine import create_engine
from app.db.models import Delivery, Number
from app.db.numbers import mismatches
from app.gateway.suppressions import lift, suppress
from app.ingest.fold import Arrival
from app.ingest.numbers import NumberSummaries
from app.ingest.parse import validate_fields
from app.ingest.store import BatchStore
from app.ingest.writer import open_store

TAIPEI = ZoneInfo("Asia/Taipei")
RECEIVED = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)
EXPLORE = bool(os.environ.get("MBOXII_STORE_EXAMPLES"))
EXAMPLES = int(os.environ.get("MBOXII_STORE_EXAMPLES") or 25)
THRESHOLD = 2
SCENARIO = itertools.count()

WORDS = [
    ("DELIVRD", "1"),
    ("DELIVRD", "0"),  # inconsistent: its outcome follows the word
    ("UNDELIV", "0"),
    ("EXPIRED", "0"),
    ("REJECTD", "1"),
    ("ENROUTE", "0"),
]


def minute(n: int) -> dt.datetime:
    """The instant `2026/11/20 10:0n` in the gateway zone."""
    return dt.datetime(2026, 11, 20, 10, n, tzinfo=TAIPEI).astimezone(dt.UTC)


# ------------------------------------------------------------------ the contract in Python


def expected_summary(deliveries: Sequence[Delivery], lifted_at: dt.datetime | None) -> Any:
    """A number's summary from its deliveries, as section 5 of the contract defines it."""
    if not deliveries:
        return (0, 0, 0, 0, None, None, None, None, None, 0)
    latest = min(deliveries, key=lambda d: (-d.done_at.timestamp(), d.msgid))
    delivered = [d.done_at for d in deliveries if d.outcome == "delivered"]
    last_delivered = max(delivered, default=None)
    bounds = [t for t in (last_delivered, lifted_at) if t is not None]
    streak = sum(
        1
        for d in deliveries
        if d.outcome == "failed" and d.final and (not bounds or d.done_at > max(bounds))
    )
    return (
        len(deliveries),
        sum(d.outcome == "delivered" for d in deliveries),
        sum(d.outcome == "failed" for d in deliveries),
        sum(d.outcome == "pending" for d in deliveries),
        min(d.done_at for d in deliveries),
        latest.done_at,
        latest.status,
        latest.outcome,
        last_delivered,
        streak,
    )


def stored_summary(number: Number) -> Any:
    return (
        number.deliveries,
        number.delivered,
        number.failed,
        number.pending,
        number.first_done_at,
        number.last_done_at,
        number.last_status,
        number.last_outcome,
        number.last_delivered_at,
        number.failure_streak,
    )


async def check_numbers(engine: AsyncEngine, mobiles: Sequence[str]) -> dict[str, Number]:
    """Every number's stored summary equals both recounts; returns the rows by mobile."""
    async with AsyncSession(engine) as session:
        numbers = {
            n.mobile: n
            for n in await session.scalars(select(Number).where(Number.mobile.in_(mobiles)))
        }
        deliveries = list(
            await session.scalars(select(Delivery).where(Delivery.mobile.in_(mobiles)))
        )
        differing = set((await session.execute(mismatches())).scalars())
    for mobile in mobiles:
        mine = [d for d in deliveries if d.mobile == mobile]
        number = numbers.get(mobile)
        if number is None:
            assert not mine, f"{mobile} has deliveries but no summary"
            continue
        assert stored_summary(number) == expected_summary(mine, number.lifted_at), mobile
        assert mobile not in differing
    return numbers


# ------------------------------------------------------------------ random scenarios


@st.composite
def identity(draw: st.DrawFn, numbers: list[str]) -> dict[str, Any]:
    word, code = draw(st.sampled_from(WORDS))
    return {
        "msgid": draw(st.sampled_from(["m1", "m2", "m3", "m4"])),
        "mobile": draw(st.sampled_from(numbers)),
        "ID": draw(st.sampled_from(["B1", "B2"])),
        "statusstr": word,
        "statuscode": code,
        "minute": draw(st.integers(0, 5)),  # late earlier-dated reports, and ties
    }


def spellings(number: str) -> list[str]:
    return [
        number,
        "+886" + number[1:],
        number[1:],
        f"+886 {number[:4]}-{number[4:7]}-{number[7:]}",
    ]


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Steps: ("batches", [one or two batches of fields, stored side by side]),
    ("suppress", number), ("lift", (number, minute))."""
    n = next(SCENARIO)
    numbers = [f"09{n % 10**5:05d}{i:03d}" for i in range(3)]
    prefix = f"n{n}-"
    pool: list[dict[str, Any]] = []
    steps: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["batches", "batches", "batches", "suppress", "lift"]))
        if kind == "suppress":
            steps.append(("suppress", draw(st.sampled_from(numbers))))
            continue
        if kind == "lift":
            steps.append(("lift", (draw(st.sampled_from(numbers)), draw(st.integers(0, 5)))))
            continue
        batches = []
        for _ in range(draw(st.integers(1, 2))):
            batch = []
            for _ in range(draw(st.integers(1, 6))):
                if pool and draw(st.integers(0, 3)) == 0:
                    fields = draw(st.sampled_from(pool))  # a retry (or a replay) of an earlier one
                else:
                    fields = draw(identity(numbers))
                    pool.append(fields)
                batch.append(
                    {
                        "msgid": prefix + fields["msgid"],
                        "mobile": draw(st.sampled_from(spellings(fields["mobile"]))),
                        "ID": fields["ID"],
                        "type": "Now",
                        "statusstr": draw(
                            st.sampled_from([fields["statusstr"], fields["statusstr"].lower()])
                        ),
                        "statuscode": fields["statuscode"],
                        "donetime": draw(
                            st.sampled_from(
                                [
                                    f"2026/11/20 10:0{fields['minute']}:00",
                                    f"2026112010{fields['minute']:02d}00",
                                ]
                            )
                        ),
                    }
                )
            batches.append(batch)
        steps.append(("batches", batches))
    return [("numbers", numbers), *steps]


def arrivals(batch: list[dict[str, str]], source: str) -> list[Arrival]:
    return [
        Arrival(validate_fields(fields, TAIPEI, RECEIVED), RECEIVED, source) for fields in batch
    ]


async def run_scenario(
    store: BatchStore, engine: AsyncEngine, steps: list[tuple[str, Any]], metrics: Metrics
) -> None:
    (_, numbers), *rest = steps
    e164 = ["+886" + n[1:] for n in numbers]
    for kind, payload in rest:
        if kind == "batches":
            sources = ["callback", "replay"]
            await asyncio.gather(
                *(store.store(arrivals(b, sources[i % 2])) for i, b in enumerate(payload))
            )
        else:
            async with AsyncSession(engine) as session:
                if kind == "suppress":
                    await suppress(session, "+886" + payload[1:], "by hand", RECEIVED, metrics)
                else:
                    mobile, at = payload
                    await lift(session, "+886" + mobile[1:], minute(at), metrics)
                await session.commit()
        rows = await check_numbers(engine, e164)
        for number in rows.values():
            # The last writer of a number recounted everything, so a number left unsuppressed
            # is below the threshold.
            if number.suppressed_since is None:
                assert number.failure_streak < THRESHOLD


def test_summaries_equal_a_recount_after_any_sequence(database_url: str) -> None:
    logging.getLogger("mboxii_dlr.numbers").setLevel(logging.ERROR)
    with asyncio.Runner() as runner:
        engine = create_engine(database_url)
        metrics = Metrics()
        store = open_store(engine, [NumberSummaries(metrics, THRESHOLD)])

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=not EXPLORE,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(scenarios())
        def one(steps: list[tuple[str, Any]]) -> None:
            runner.run(run_scenario(store, engine, steps, metrics))

        try:
            one()
        finally:
            runner.run(store.close())
            runner.run(engine.dispose())


# ------------------------------------------------------------------ the rules, case by case

NUMBER = "+886911000001"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


class Reports:
    """Stores reports for NUMBER through a store with the summaries, one batch per call."""

    def __init__(self, engine: AsyncEngine, threshold: int | None = None) -> None:
        self.engine = engine
        self.metrics = Metrics()
        self.store = open_store(engine, [NumberSummaries(self.metrics, threshold)])

    async def send(self, *reports: tuple[str, str, int]) -> Number:
        """(msgid, status word, minute) each; returns the number's row afterwards."""
        batch = []
        for msgid, word, at in reports:
            code = "1" if word == "DELIVRD" else "0"
            fields = {
                "ID": "B1",
                "msgid": msgid,
                "type": "Now",
                "mobile": NUMBER,
                "statusstr": word,
                "statuscode": code,
                "donetime": f"2026/11/20 10:0{at}:00",
            }
            batch.append(Arrival(validate_fields(fields, TAIPEI, RECEIVED), RECEIVED))
        await self.store.store(batch)
        return await self.number()

    async def number(self) -> Number:
        rows = await check_numbers(self.engine, [NUMBER])
        return rows[NUMBER]

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture
async def reports(engine: AsyncEngine) -> AsyncIterator[Reports]:
    r = Reports(engine)
    yield r
    await r.close()


async def test_a_delivered_report_resets_the_streak_and_pending_ones_do_not_count(
    reports: Reports,
) -> None:
    n = await reports.send(("a", "DELIVRD", 0), ("b", "UNDELIV", 1))
    assert (n.failure_streak, n.last_delivered_at) == (1, minute(0))
    n = await reports.send(("c", "ENROUTE", 2))
    assert (n.failure_streak, n.pending, n.last_status) == (1, 1, "ENROUTE")
    n = await reports.send(("d", "EXPIRED", 3))
    assert n.failure_streak == 2
    n = await reports.send(("e", "DELIVRD", 4))
    assert (n.failure_streak, n.last_delivered_at, n.last_outcome) == (0, minute(4), "delivered")
    # A failure done before the latest delivered one does not count, whenever it arrives.
    n = await reports.send(("f", "REJECTD", 2))
    assert (n.failure_streak, n.failed) == (0, 3)
    assert (n.deliveries, n.delivered, n.pending) == (6, 2, 1)


async def test_a_late_report_that_loses_changes_nothing(reports: Reports) -> None:
    before = stored_summary(await reports.send(("a", "UNDELIV", 3), ("b", "DELIVRD", 1)))
    # An earlier-dated ENROUTE of a final delivery loses the ordering rule.
    after = stored_summary(await reports.send(("a", "ENROUTE", 0)))
    assert after == before


async def test_a_final_report_beating_a_later_dated_enroute_moves_the_summary_back(
    reports: Reports,
) -> None:
    n = await reports.send(("a", "DELIVRD", 0), ("b", "ENROUTE", 5))
    assert (n.last_done_at, n.pending) == (minute(5), 1)
    n = await reports.send(("b", "UNDELIV", 2))
    assert (n.last_done_at, n.last_status, n.pending, n.failed) == (minute(2), "UNDELIV", 0, 1)
    assert n.failure_streak == 1


async def test_respellings_and_duplicates_count_once(engine: AsyncEngine) -> None:
    r = Reports(engine)
    try:
        n = await r.send(("a", "UNDELIV", 1), ("a", "UNDELIV", 1))
        await r.send(("a", "UNDELIV", 1))
        fields = {
            "ID": "B1",
            "msgid": "a",
            "type": "now",
            "mobile": "0911-000-001",
            "statusstr": "undeliv",
            "statuscode": "0",
            "donetime": "202611201001",
        }
        await r.store.store([Arrival(validate_fields(fields, TAIPEI, RECEIVED), RECEIVED)])
        again = await r.number()
        assert stored_summary(again) == stored_summary(n)
        assert (again.deliveries, again.failed, again.failure_streak) == (1, 1, 1)
    finally:
        await r.close()


async def test_a_lift_resets_the_streak_and_only_later_failures_count(
    engine: AsyncEngine, reports: Reports
) -> None:
    await reports.send(("a", "UNDELIV", 0), ("b", "EXPIRED", 1))
    metrics = Metrics()
    async with AsyncSession(engine, expire_on_commit=False) as session:
        assert await lift(session, NUMBER, minute(2), metrics) is None  # not suppressed
        await suppress(session, NUMBER, "asked", minute(2), metrics)
        lifted = await lift(session, NUMBER, minute(2), metrics)
        await session.commit()
    assert lifted is not None
    assert (lifted.failure_streak, lifted.suppressed_since) == (0, None)
    n = await reports.number()
    assert n.failure_streak == 0
    n = await reports.send(("c", "UNDELIV", 1))  # done before the lift
    assert n.failure_streak == 0
    n = await reports.send(("d", "UNDELIV", 3))
    assert n.failure_streak == 1


async def test_a_lift_leaves_out_failures_dated_after_it_but_already_stored(
    engine: AsyncEngine, reports: Reports
) -> None:
    """The gateway may date a report up to a day ahead: the streak after a lift is 0 all the
    same, by the summary and by a recount."""
    await reports.send(("a", "UNDELIV", 5))
    metrics = Metrics()
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await suppress(session, NUMBER, "asked", minute(1), metrics)
        lifted = await lift(session, NUMBER, minute(1), metrics)
        await session.commit()
    assert lifted is not None and lifted.failure_streak == 0
    assert (await reports.number()).failure_streak == 0


def suppressions(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "mboxii_dlr_numbers_suppressed_total", {"source": "automatic"}
    )


@pytest.mark.parametrize("threshold", [1, 3])
async def test_automatic_suppression_at_exactly_the_threshold(
    engine: AsyncEngine, threshold: int, caplog: pytest.LogCaptureFixture
) -> None:
    r = Reports(engine, threshold)
    try:
        for i in range(threshold - 1):
            n = await r.send((f"f{i}", "UNDELIV", i))
            assert n.suppressed_since is None
        with caplog.at_level(logging.WARNING, "mboxii_dlr.numbers"):
            n = await r.send((f"f{threshold}", "EXPIRED", threshold))
        assert n.failure_streak == threshold
        assert (n.suppressed_source, n.suppressed_reason) == (
            "automatic",
            f"{threshold} failed deliveries in a row",
        )
        assert suppressions(r.metrics) == 1
        # logged once, with the number masked
        lines = [rec.getMessage() for rec in caplog.records if "suppressed" in rec.getMessage()]
        assert lines == [
            f"number 0911***001 suppressed automatically: {threshold} failed deliveries in a row"
        ]
        # A delivered report does not lift it; more failures do not suppress it again.
        n = await r.send(("ok", "DELIVRD", 8), ("f9", "UNDELIV", 9))
        assert (n.suppressed_source, n.failure_streak) == ("automatic", 1)
        assert suppressions(r.metrics) == 1
    finally:
        await r.close()
