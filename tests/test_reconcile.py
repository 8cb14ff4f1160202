"""Reconciliation: CheckSMS answers become reports on the ingest path, deduplicated."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select, update

from app.db.models import Send
from app.gateway import CheckStatus
from app.gateway.reconcile import poll_report
from app.ingest.parse import parse_callback
from tests.conftest import SEED_REPORT, report
from tests.fake_gateway import FakeGateway, service

TAIPEI = ZoneInfo("Asia/Taipei")
RECEIVED = dt.datetime(2003, 5, 22, 6, 0, tzinfo=dt.UTC)
NUMBERS = ["0912345678", "0922161529", "0933000111"]


# ---------------------------------------------------------------- the mapping


@pytest.mark.parametrize(
    ("state", "word", "statuscode", "outcome"),
    [
        (0, "DELIVRD", 1, "delivered"),
        (-1, "UNDELIV", 0, "failed"),
        (-1, "EXPIRED", 0, "failed"),
        (0, "ACCEPTD", 1, "delivered"),
        (-1, "ACCEPTD", 0, "failed"),
    ],
)
def test_second_stage_state_maps_to_the_callbacks_statuscode(
    state: int, word: str, statuscode: int, outcome: str
) -> None:
    status = CheckStatus("0922161529", "208217564", "2003/05/22 13:48:50", state, word)
    polled = poll_report("123456", "now", status, TAIPEI, RECEIVED)
    assert polled is not None
    assert (polled.statuscode, polled.status, polled.outcome) == (statuscode, word, outcome)
    assert polled.inconsistent is False


def test_a_polled_delivrd_is_the_same_report_as_the_seeds_callback() -> None:
    status = CheckStatus("0922161529", "208217564", "2003/05/22 13:48:50", 0, "DELIVRD")
    polled = poll_report("123456", "now", status, TAIPEI, RECEIVED)
    body = "&".join(f"{k}={v}" for k, v in SEED_REPORT.items()).encode()
    called = parse_callback("application/x-www-form-urlencoded", body, b"", TAIPEI, RECEIVED)
    assert polled == called
    assert polled is not None and polled.key == called.key


def test_a_waiting_number_is_no_report_and_types_map() -> None:
    waiting = CheckStatus("0922161529", "208217564", "", None, "")
    assert poll_report("1", "now", waiting, TAIPEI, RECEIVED) is None
    done = CheckStatus("0922161529", "208217564", "2003/05/22 13:48:50", 0, "DELIVRD")
    polled = poll_report("1", "scheduled", done, TAIPEI, RECEIVED)
    assert polled is not None and polled.type == "scheduled"


# ---------------------------------------------------------------- against the database


def taipei(delta_seconds: float = -60) -> str:
    when = dt.datetime.now(TAIPEI) + dt.timedelta(seconds=delta_seconds)
    return when.strftime("%Y/%m/%d %H:%M:%S")


def status_line(mobile: str, msgid: str, state: int, word: str, done: str) -> str:
    return f"STATUS={mobile},{msgid},{done},{state},{word}"


async def send(client: httpx.AsyncClient, numbers: list[str] = NUMBERS, **extra: Any) -> str:
    r = await client.post("/v1/messages", json={"numbers": numbers, "text": "hi", **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["batch_id"])


async def make_due(app: Any, batch_id: str | None = None) -> None:
    """Move sends' next check to the past, as if DLR_RECONCILE_AFTER had passed."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    stmt = update(Send).where(Send.next_check_at.is_not(None)).values(next_check_at=past)
    if batch_id is not None:
        stmt = stmt.where(Send.batch_id == batch_id)
    async with app.app_state.sessionmaker() as session:
        await session.execute(stmt)
        await session.commit()


async def stored_send(app: Any, batch_id: str) -> Send:
    async with app.app_state.sessionmaker() as session:
        return (await session.scalars(select(Send).where(Send.batch_id == batch_id))).one()


async def test_lost_callbacks_are_recovered_as_poll_reports(database_url: str) -> None:
    async with service(database_url) as (app, client, gateway):
        batch = await send(client)
        done = taipei()
        # the first number's callback arrived; the other two were lost
        cb = report(ID=batch, msgid="m0", mobile=NUMBERS[0], donetime=done)
        assert (await client.post("/callbacks/mboxii/tok-1", data=cb)).status_code == 200
        gateway.checks[batch] = "\n".join(
            [
                f"MSGID={batch}",
                status_line(NUMBERS[0], "m0", 0, "DELIVRD", done),
                status_line(NUMBERS[1], "m1", 0, "DELIVRD", done),
                status_line(NUMBERS[2], "m2", -1, "UNDELIV", done),
                "OK=2",
                "FAIL=1",
                "WAIT=0",
            ]
        )
        # not due yet: nothing asked
        assert (await app.app_state.reconciler.run_once()).checked == 0
        assert gateway.calls("CheckSMS") == []
        await make_due(app)
        result = await app.app_state.reconciler.run_once()
        assert (result.checked, result.reports_new, result.complete) == (1, 2, 1)
        [asked] = gateway.calls("CheckSMS")
        assert (asked["ID"], asked["T"]) == (batch, "")

        m1 = (await client.get("/v1/deliveries/m1")).json()
        assert (m1["status"], m1["statuscode"], m1["outcome"]) == ("DELIVRD", 1, "delivered")
        assert m1["batch_id"] == batch and m1["type"] == "now"
        assert [h["source"] for h in m1["history"]] == ["poll"]
        m2 = (await client.get("/v1/deliveries/m2")).json()
        assert (m2["status"], m2["statuscode"], m2["outcome"]) == ("UNDELIV", 0, "failed")
        m0 = (await client.get("/v1/deliveries/m0")).json()
        assert [h["source"] for h in m0["history"]] == ["callback"]  # not asked twice

        shown = (await client.get(f"/v1/messages/{batch}")).json()
        assert shown["pending"] == 0
        assert shown["next_check_at"] is None and shown["last_checked_at"] is not None

        # the late callback of a polled message is the same report: acknowledged, not added
        late = report(ID=batch, msgid="m1", mobile="+886922161529", donetime=done)
        assert (await client.post("/callbacks/mboxii/tok-1", data=late)).status_code == 200
        m1 = (await client.get("/v1/deliveries/m1")).json()
        assert m1["reports"] == 1 and len(m1["history"]) == 1
        # and nothing more to ask
        await make_due(app)
        assert (await app.app_state.reconciler.run_once()).checked == 0


async def test_a_poll_of_a_message_whose_callback_came_is_a_duplicate(database_url: str) -> None:
    async with service(database_url) as (app, client, gateway):
        batch = await send(client, NUMBERS[:1])
        done = taipei()
        line = status_line(NUMBERS[0], "m0", 0, "DELIVRD", done)
        gateway.checks[batch] = f"MSGID={batch}\n{line}\nOK=1\nFAIL=0\nWAIT=0"
        await make_due(app)
        # the callback lands while the check is under way, after pending was computed
        original = app.app_state.reconciler.client.check

        async def check_with_callback_meanwhile(*args: Any, **kwargs: Any) -> Any:
            cb = report(ID=batch, msgid="m0", mobile=NUMBERS[0], donetime=done)
            assert (await client.post("/callbacks/mboxii/tok-1", data=cb)).status_code == 200
            return await original(*args, **kwargs)

        app.app_state.reconciler.client.check = check_with_callback_meanwhile
        result = await app.app_state.reconciler.run_once()
        assert (result.reports_new, result.reports_duplicate, result.complete) == (0, 1, 1)
        m0 = (await client.get("/v1/deliveries/m0")).json()
        assert m0["reports"] == 1
        assert [h["source"] for h in m0["history"]] == ["callback"]


async def test_a_scheduled_send_not_yet_out_is_asked_later_without_error(
    database_url: str,
) -> None:
    slot = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    slot = slot.replace(minute=slot.minute - slot.minute % 5, second=0, microsecond=0)
    async with service(database_url) as (app, client, gateway):
        batch = await send(client, send_at=slot.isoformat())
        gateway.checks[batch] = "24"
        await make_due(app)
        result = await app.app_state.reconciler.run_once()
        assert (result.checked, result.not_sent_yet, result.errors) == (1, 1, 0)
        [asked] = gateway.calls("CheckSMS")
        assert asked["T"] == "Time"
        stored = await stored_send(app, batch)
        assert stored.check_errors == 0 and stored.checks == 1
        assert stored.next_check_at is not None and stored.next_check_at > slot
        # a pass right after asks nothing: it is not due
        assert (await app.app_state.reconciler.run_once()).checked == 0


async def test_errors_back_off_per_send_and_globally(database_url: str) -> None:
    # one check at a time, so which send is asked before the pause is certain
    async with service(database_url, reconcile_concurrency=1) as (app, client, gateway):
        lost = await send(client, NUMBERS[:1])
        other = await send(client, NUMBERS[1:2])
        gateway.checks[lost] = "21"  # the gateway knows no such ID: this send's problem
        gateway.checks[other] = f"MSGID={other}\nWAIT=1"
        await make_due(app)
        result = await app.app_state.reconciler.run_once()
        assert (result.checked, result.errors) == (2, 1)
        first = await stored_send(app, lost)
        assert first.check_errors == 1 and "RecordNotFound" in (first.last_check_result or "")
        assert first.next_check_at is not None
        await make_due(app, lost)
        await app.app_state.reconciler.run_once()
        second = await stored_send(app, lost)
        assert second.check_errors == 2
        # the second delay doubles the first
        delay1 = first.next_check_at - first.last_checked_at  # type: ignore[operator]
        delay2 = second.next_check_at - second.last_checked_at  # type: ignore[operator]
        assert delay2 == 2 * delay1
        other_send = await stored_send(app, other)
        assert other_send.check_errors == 0 and other_send.checks == 1

        # an account-wide failure pauses every check, not just this send's
        gateway.answers["CheckSMS"] = "99"
        await make_due(app)
        calls = len(gateway.calls("CheckSMS"))
        result = await app.app_state.reconciler.run_once()
        assert result.errors >= 1
        after_error = len(gateway.calls("CheckSMS"))
        assert after_error - calls == 1  # the other send waited for the pause
        await make_due(app)
        assert (await app.app_state.reconciler.run_once()).checked == 0
        assert len(gateway.calls("CheckSMS")) == after_error


async def test_unreachable_gateway_pauses_too(database_url: str) -> None:
    async with service(database_url, reconcile_concurrency=1) as (app, client, gateway):
        for number in NUMBERS:
            await send(client, [number])
        gateway.answers["CheckSMS"] = httpx.ConnectError("refused")
        await make_due(app)
        result = await app.app_state.reconciler.run_once()
        assert (result.checked, result.errors) == (1, 1)


async def test_give_up_after_the_give_up_age(database_url: str) -> None:
    async with service(database_url, reconcile_give_up_after="1h") as (app, client, gateway):
        batch = await send(client)
        async with app.app_state.sessionmaker() as session:
            old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
            await session.execute(update(Send).values(created_at=old, next_check_at=old))
            await session.commit()
        result = await app.app_state.reconciler.run_once()
        assert (result.gave_up, result.checked) == (1, 0)
        assert gateway.calls("CheckSMS") == []
        stored = await stored_send(app, batch)
        assert stored.next_check_at is None
        assert (await client.get(f"/v1/messages/{batch}")).json()["pending"] == 3


async def test_cancelled_sends_are_not_asked_about(database_url: str) -> None:
    slot = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    slot = slot.replace(minute=slot.minute - slot.minute % 5, second=0, microsecond=0)
    async with service(database_url) as (app, client, gateway):
        batch = await send(client, send_at=slot.isoformat())
        assert (await client.delete(f"/v1/messages/{batch}")).status_code == 200
        await make_due(app)
        assert (await app.app_state.reconciler.run_once(everything=True)).checked == 0
    assert gateway.calls("CheckSMS") == []


async def test_at_most_n_checks_at_once(database_url: str) -> None:
    gateway = FakeGateway()
    in_flight = 0
    most = 0

    async def slow_check(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        if not request.url.path.endswith("CheckSMS.php"):
            return gateway.handler(request)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, text="MSGID=1\nWAIT=1")

    async with service(
        database_url,
        gateway,
        httpx.MockTransport(slow_check),
        reconcile_concurrency=2,
        reconcile_rate=1000,
    ) as (app, client, _):
        for i in range(6):
            await send(client, [f"09123456{i:02d}"])
        await make_due(app)
        result = await app.app_state.reconciler.run_once()
    assert result.checked == 6
    assert most == 2


async def test_checks_are_spaced_evenly_at_the_rate(database_url: str) -> None:
    asked_at: list[float] = []

    def timed_check(fields: dict[str, str]) -> str:
        asked_at.append(asyncio.get_running_loop().time())
        return "MSGID=1\nWAIT=1"

    # 20 a second: one every 50 ms, however many may run at once
    async with service(database_url, reconcile_concurrency=5, reconcile_rate=20) as (
        app,
        client,
        gateway,
    ):
        gateway.answers["CheckSMS"] = timed_check
        for i in range(5):
            await send(client, [f"09123457{i:02d}"])
        await make_due(app)
        assert (await app.app_state.reconciler.run_once()).checked == 5
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert len(gaps) == 4, gaps
    # The slots are 50 ms apart on one schedule shared by every process (app.db.rates); a
    # caller that wakes late does not push the next one back, so on a busy machine one gap
    # may be shorter by that lateness, but the five calls take their four slots' time and
    # none come together.
    assert asked_at[-1] - asked_at[0] > 4 * 0.05 * 0.9, gaps
    assert min(gaps) > 0.02, gaps


async def test_the_background_task_reconciles_on_its_own(database_url: str) -> None:
    from app.main import create_app
    from tests.conftest import make_settings
    from tests.fake_gateway import ACCOUNT, API_KEY

    gateway = FakeGateway()
    settings = make_settings(
        database_url, **ACCOUNT, reconcile_after="50ms", reconcile_interval="50ms"
    )
    app = create_app(settings, gateway_transport=gateway.transport())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"x-api-key": API_KEY}
        ) as client:
            batch = await send(client, NUMBERS[:1])
            done = taipei()
            line = status_line(NUMBERS[0], "m0", 0, "DELIVRD", done)
            gateway.checks[batch] = f"MSGID={batch}\n{line}\nOK=1\nFAIL=0\nWAIT=0"
            for _ in range(200):
                if (await client.get(f"/v1/messages/{batch}")).json()["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
            d = (await client.get("/v1/deliveries/m0")).json()
    assert d["history"][0]["source"] == "poll"
