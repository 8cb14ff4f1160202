"""The ordering rule and the batch plan, without a database."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from app.ingest.fold import Arrival, BatchPlan, DeliveryChange, DeliveryState, Previous, wins
from app.ingest.parse import ParsedReport, validate_fields
from tests.conftest import report

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 11, 30, 4, 0, tzinfo=dt.UTC)


def parsed(**fields: str) -> ParsedReport:
    return validate_fields(report(**fields), TAIPEI, NOW)


def at(seconds: int) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


DELIVERED = parsed(statusstr="DELIVRD", statuscode="1", donetime="2026/11/30 10:00:00")
ENROUTE_LATER = parsed(statusstr="ENROUTE", statuscode="0", donetime="2026/11/30 11:00:00")
FAILED_EARLIER = parsed(statusstr="UNDELIV", statuscode="0", donetime="2026/11/30 09:00:00")
FAILED_LATER = parsed(statusstr="UNDELIV", statuscode="0", donetime="2026/11/30 10:30:00")
FAILED_LATER_OTHER_ID = parsed(
    ID="999", statusstr="UNDELIV", statuscode="0", donetime="2026/11/30 10:30:00"
)
EXPIRED_SAME_TIME = parsed(statusstr="EXPIRED", statuscode="0", donetime="2026/11/30 10:00:00")


# ------------------------------------------------------------------ the rule


def test_a_final_word_beats_a_non_final_one_whatever_the_time() -> None:
    assert wins(DELIVERED, ENROUTE_LATER)
    assert not wins(ENROUTE_LATER, DELIVERED)


def test_between_finals_the_later_donetime_wins() -> None:
    assert wins(FAILED_LATER, DELIVERED)
    assert not wins(FAILED_EARLIER, DELIVERED)


def test_between_non_finals_the_later_donetime_wins() -> None:
    earlier = parsed(statusstr="ENROUTE", statuscode="0", donetime="2026/11/30 08:00:00")
    assert wins(ENROUTE_LATER, earlier)
    assert not wins(earlier, ENROUTE_LATER)


def test_a_tie_goes_to_the_later_received() -> None:
    # wins(candidate, current): the candidate is the one received later
    assert wins(EXPIRED_SAME_TIME, DELIVERED)
    assert wins(DELIVERED, EXPIRED_SAME_TIME)


FINALITY = st.sampled_from([("DELIVRD", "1"), ("UNDELIV", "0"), ("ENROUTE", "0"), ("EXPIRED", "0")])
MINUTES = st.integers(0, 59)


@st.composite
def reports(draw: st.DrawFn) -> ParsedReport:
    word, code = draw(FINALITY)
    minute = draw(MINUTES)
    return parsed(statusstr=word, statuscode=code, donetime=f"2026/11/30 10:{minute:02d}:00")


@given(reports(), reports(), reports())
def test_the_rule_is_a_total_preorder(a: ParsedReport, b: ParsedReport, c: ParsedReport) -> None:
    # Whatever order reports arrive in, one of each pair wins, and winning chains: so the
    # state after any sequence is the newest report by the rule, the last received on ties.
    assert wins(a, b) or wins(b, a)
    if wins(a, b) and wins(b, c):
        assert wins(a, c)
    assert wins(a, a)


# ------------------------------------------------------------------ the batch plan


def test_copies_within_a_batch_are_one_row_and_only_the_first_is_new() -> None:
    respelled = parsed(mobile="+886922161529", statusstr="delivrd", donetime="20030522134850")
    original = parsed()
    assert respelled.key == original.key
    batch = [Arrival(original, at(0)), Arrival(respelled, at(1)), Arrival(original, at(2))]
    plan = BatchPlan(batch)
    assert len(plan.report_rows()) == 1
    plan.delivery_rows({original.key: 10})
    assert plan.result([]).new == [True, False, False]


def test_a_report_already_stored_is_not_folded_and_not_new() -> None:
    plan = BatchPlan([Arrival(DELIVERED, at(0))])
    assert plan.delivery_rows({}) == []
    assert plan.result([]).new == [False]


def test_a_deliverys_new_reports_fold_into_one_row_in_the_order_received() -> None:
    other_id = FAILED_LATER_OTHER_ID
    batch = [
        Arrival(ENROUTE_LATER, at(5)),
        Arrival(DELIVERED, at(1)),
        Arrival(other_id, at(9)),
        Arrival(FAILED_EARLIER, at(3)),
    ]
    plan = BatchPlan(batch)
    ids = {a.report.key: i for i, a in enumerate(batch, start=100)}
    (row,) = plan.delivery_rows(ids)
    winner = other_id  # final, and the latest donetime among the finals
    assert row == (
        winner.msgid,
        winner.mobile,
        ENROUTE_LATER.batch_id,  # the first report's ID: a delivery keeps its first
        ENROUTE_LATER.type,
        winner.status,
        winner.statuscode,
        winner.outcome,
        winner.final,
        winner.inconsistent,
        winner.done_at,
        at(1),
        at(9),
        4,
        102,
    )


def test_a_delivery_changed_when_its_report_is_the_one_this_batch_proposed() -> None:
    won = parsed(msgid="won")
    lost = parsed(msgid="lost", ID="other")
    fresh = parsed(msgid="fresh")
    plan = BatchPlan([Arrival(won, at(0)), Arrival(lost, at(1)), Arrival(fresh, at(2))])
    plan.delivery_rows({won.key: 1, lost.key: 2, fresh.key: 3})
    replaced = Previous("ENROUTE", "pending", False, at(-60))
    # What the upsert hands back: msgid, mobile, batch_id, report_id, version, then type,
    # first and last receipt, report count and the previous state (NULL in a first state).
    returned = [
        (
            "won",
            won.mobile,
            won.batch_id,
            1,
            2,
            "now",
            at(-90),
            at(0),
            2,
            *dataclasses.astuple(replaced),
        ),
        ("lost", lost.mobile, "first-id", 7, 1, *(None,) * 8),  # an older report stayed
        ("fresh", fresh.mobile, fresh.batch_id, 3, 1, *(None,) * 8),
    ]
    result = plan.result(returned)
    assert result.new == [True, True, True]
    # "lost" carried another batch ID than its delivery's first one
    assert result.batch_mismatch == 1
    updated, first = result.changes
    assert updated.version == 2
    assert updated.previous == replaced
    assert updated.state == dataclasses.replace(
        first_state(won), first_received_at=at(-90), reports=2
    )
    assert first == DeliveryChange(first_state(fresh, report_id=3, received=at(2)), 1, None)


def first_state(r: ParsedReport, report_id: int = 1, received: dt.datetime = NOW) -> DeliveryState:
    return DeliveryState(
        r.msgid,
        r.mobile,
        r.batch_id,
        r.type,
        r.status,
        r.statuscode,
        r.outcome,
        r.final,
        r.inconsistent,
        r.done_at,
        received,
        received,
        1,
        report_id,
    )
