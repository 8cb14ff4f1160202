"""POST, GET and DELETE /v1/messages against a scripted gateway, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.core.settings import Settings, SettingsError, load_settings
from app.gateway.sends import unreported_numbers
from tests.conftest import ROOT, make_settings, report
from tests.fake_gateway import ACCOUNT, PUBLIC_URL, FakeGateway, service

NUMBERS = ["0912345678", "+886922161529", "886933000111"]
E164 = ["+886912345678", "+886922161529", "+886933000111"]


def future_slot(minutes: int = 60) -> str:
    """A time on the 5-minute grid, `minutes` or so from now, in Taipei."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
    when = when.replace(minute=when.minute - when.minute % 5, second=0, microsecond=0)
    return when.astimezone(dt.timezone(dt.timedelta(hours=8))).isoformat()


# ---------------------------------------------------------------- configuration


async def test_without_an_account_the_endpoints_do_not_exist(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "hi"})
    assert r.status_code == 404
    assert (await client.get("/v1/messages/1")).status_code == 404
    assert (await client.delete("/v1/messages/1")).status_code == 404
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/v1/messages")]


async def test_with_an_account_they_exist_behind_the_api_keys(database_url: str) -> None:
    async with service(database_url) as (_, client, gateway):
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/messages", "/v1/messages/{batch_id}"} <= set(paths)
        assert set(paths["/v1/messages/{batch_id}"]) == {"get", "delete"}
        r = await client.post(
            "/v1/messages", json={"numbers": NUMBERS, "text": "hi"}, headers={"x-api-key": "no"}
        )
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("/v1/messages/1", headers={"x-api-key": "no"})).status_code == 401
    assert gateway.requests == []


def test_an_account_without_send_keys_refuses_to_start(tmp_path: Any) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**ACCOUNT, "send_api_keys": [], "api_keys": ["k" * 20]})
    assert "DLR_SEND_API_KEYS" in str(exc.value) and "DLR_MBOXII_CID" in str(exc.value)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DLR_")},
        "DLR_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "DLR_MBOXII_CID": "acct",
        "DLR_MBOXII_CPW": "gw-secret-pw",
        "DLR_PUBLIC_URL": PUBLIC_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "DLR_SEND_API_KEYS" in done.stderr
    assert "gw-secret-pw" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"mboxii_cpw": ""}, "both DLR_MBOXII_CID and DLR_MBOXII_CPW"),
        ({"mboxii_cid": ""}, "both DLR_MBOXII_CID and DLR_MBOXII_CPW"),
        ({"public_url": ""}, "DLR_PUBLIC_URL"),
        ({"public_url": "dlr.example.com"}, "DLR_PUBLIC_URL: must be an http"),
        ({"mboxii_base_url": "ftp://x/"}, "DLR_MBOXII_BASE_URL: must be an http"),
        ({"reconcile_after": "0"}, "DLR_RECONCILE_AFTER: must be a positive duration"),
        ({"reconcile_after": "soon"}, "DLR_RECONCILE_AFTER: must be seconds or a duration"),
        ({"reconcile_give_up_after": "-5"}, "DLR_RECONCILE_GIVE_UP_AFTER"),
    ],
)
def test_account_settings_are_checked(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**ACCOUNT, **overrides})
    assert problem in str(exc.value)
    assert "gw-secret-pw" not in str(exc.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30m", 1800),
        ("90", 90),
        ("1.5", 1.5),
        ("1h30m", 5400),
        ("2d", 172800),
        ("PT5M", 300),
        ("500ms", 0.5),
        (" 2 s ", 2),
    ],
)
def test_durations_in_seconds_or_with_units(value: str, seconds: float) -> None:
    settings = Settings(_env_file=None, reconcile_after=value)  # type: ignore[call-arg]
    assert settings.reconcile_after.total_seconds() == seconds


def test_the_password_is_a_secret_and_the_callback_url_is_derived() -> None:
    settings = make_settings("sqlite://", **ACCOUNT)
    assert isinstance(settings.mboxii_cpw, SecretStr)
    assert "gw-secret-pw" not in repr(settings) and "gw-secret-pw" not in str(settings)
    assert settings.callback_url == f"{PUBLIC_URL}/callbacks/mboxii/tok-1"
    bare = make_settings(
        "sqlite://", **{**ACCOUNT, "callback_tokens": [], "public_url": "http://h/"}
    )
    assert bare.callback_url == "http://h/callbacks/mboxii"
    assert make_settings("sqlite://").reconcile_after == dt.timedelta(minutes=30)
    assert make_settings("sqlite://").mboxii_base_url == "http://op.mboxii.com/api/"


# ---------------------------------------------------------------- sending


async def test_send_now_records_and_answers_the_send(database_url: str) -> None:
    async with service(database_url) as (_, client, gateway):
        r = await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "Your code 42"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["batch_id"] == "500"
        assert body["type"] == "now"
        assert body["numbers"] == E164
        assert body["language"] == "english"
        assert body["text"] == "Your code 42"
        assert body["send_at"] is None and body["cancelled_at"] is None
        assert body["gateway_answer"] == "00,500"
        assert body["pending"] == 3
        assert body["created_at"].endswith("Z")
        assert r.headers["location"] == "/v1/messages/500?type=now"
        [fields] = gateway.calls("SendSMS")
        assert fields == {
            "CID": "acct",
            "CPW": "gw-secret-pw",
            "L": "E",
            "N": "0912345678,0922161529,0933000111",
            "M": "Your code 42",
            "Value": f"{PUBLIC_URL}/callbacks/mboxii/tok-1",
        }
        # no number was suppressed; the send as recorded is what GET shows
        assert body.pop("suppressed") == []
        assert (await client.get("/v1/messages/500")).json() == body


async def test_without_tokens_the_callback_url_is_the_bare_path(database_url: str) -> None:
    async with service(database_url, callback_tokens=[]) as (_, client, gateway):
        r = await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "你好"})
        assert r.status_code == 201
        assert r.json()["language"] == "chinese"
    [fields] = gateway.calls("SendSMS")
    assert fields["Value"] == f"{PUBLIC_URL}/callbacks/mboxii"
    assert fields["L"] == ""


async def test_schedule_records_the_time(database_url: str) -> None:
    slot = future_slot()
    async with service(database_url) as (_, client, gateway):
        r = await client.post(
            "/v1/messages", json={"numbers": NUMBERS[:1], "text": "later", "send_at": slot}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["type"] == "scheduled"
        when = dt.datetime.fromisoformat(slot)
        assert body["send_at"] == when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    [fields] = gateway.calls("SendTimeSMS")
    assert fields["T"] == when.strftime("%Y%m%d%H%M")
    assert fields["D"] == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"numbers": [f"09123456{i:02d}" for i in range(81)], "text": "hi"}, "numbers"),
        ({"numbers": [], "text": "hi"}, "numbers"),
        ({"numbers": ["0912345678", "02-1234-5678"], "text": "hi"}, "numbers.1"),
        ({"numbers": ["0912345678", "+886912345678"], "text": "hi"}, "numbers.1"),
        ({"numbers": NUMBERS, "text": "a" * 141}, "text"),
        ({"numbers": NUMBERS, "text": "中" * 71}, "text"),
        ({"numbers": NUMBERS, "text": "中文", "language": "english"}, "text"),
        ({"numbers": NUMBERS, "text": ""}, "text"),
        ({"numbers": NUMBERS, "text": " "}, "text"),
        ({"numbers": NUMBERS, "text": "hi", "send_at": "2030-01-01T10:02:00+08:00"}, "send_at"),
        ({"numbers": NUMBERS, "text": "hi", "send_at": "2020-01-01T10:00:00+08:00"}, "send_at"),
        ({"numbers": NUMBERS, "text": "hi", "send_at": "next week"}, "send_at"),
        ({"numbers": NUMBERS}, "text"),
        ({"numbers": NUMBERS, "text": "hi", "language": "klingon"}, "language"),
        ({"numbers": NUMBERS, "text": "hi", "sender": "x"}, "sender"),
    ],
)
async def test_what_the_gateway_would_refuse_is_a_422_before_sending(
    database_url: str, body: dict[str, Any], field: str
) -> None:
    async with service(database_url) as (_, client, gateway):
        r = await client.post("/v1/messages", json=body)
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["error"] == "invalid_parameters"
    assert field in [e["field"] for e in answer["errors"]]
    assert all(e["message"] for e in answer["errors"])
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("scheduled", "answer", "status", "expected"),
    [
        (
            False,
            "30",
            502,
            {
                "error": "gateway_error",
                "code": "30",
                "meaning": "the account has no messages left to send",
                "interface": "SendSMS",
                "answer": "30",
            },
        ),
        (
            True,
            "<html><body>27</body></html>",
            502,
            {
                "error": "gateway_error",
                "code": "27",
                "meaning": "the schedule time (T) has a bad format",
                "interface": "SendTimeSMS",
            },
        ),
        (False, "24", 502, {"code": "24", "meaning": "bad message text (M): too long or empty"}),
        (False, "77", 502, {"error": "gateway_error", "code": "77", "interface": "SendSMS"}),
        (False, "Fatal error: oops", 502, {"error": "gateway_bad_answer", "interface": "SendSMS"}),
        (False, httpx.ConnectError("refused"), 502, {"error": "gateway_unreachable"}),
        (True, httpx.ReadTimeout("slow"), 504, {"error": "gateway_timeout"}),
    ],
)
async def test_gateway_failures_are_502_or_504_and_nothing_is_recorded(
    database_url: str,
    scheduled: bool,
    answer: str | Exception,
    status: int,
    expected: dict[str, str],
) -> None:
    gateway = FakeGateway()
    gateway.answers["SendTimeSMS" if scheduled else "SendSMS"] = answer
    body: dict[str, Any] = {"numbers": NUMBERS, "text": "hi"}
    if scheduled:
        body["send_at"] = future_slot()
    async with service(database_url, gateway) as (_, client, _):
        r = await client.post("/v1/messages", json=body)
        assert r.status_code == status, r.text
        assert r.json().items() >= expected.items()
        assert "gw-secret-pw" not in r.text
        assert (await client.get("/v1/messages/500")).status_code == 404


async def test_a_reused_gateway_id_is_reported_not_overwritten(database_url: str) -> None:
    gateway = FakeGateway()
    gateway.answers["SendSMS"] = "00,42"
    async with service(database_url, gateway) as (_, client, _):
        first = await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "a"})
        assert first.status_code == 201
        r = await client.post("/v1/messages", json={"numbers": NUMBERS[:1], "text": "b"})
        assert r.status_code == 502
        assert r.json()["error"] == "gateway_id_reused"
        assert (await client.get("/v1/messages/42")).json()["text"] == "a"


# ---------------------------------------------------------------- show and cancel


async def test_cancel_a_scheduled_send(database_url: str) -> None:
    async with service(database_url) as (_, client, gateway):
        body = {"numbers": NUMBERS, "text": "later", "send_at": future_slot()}
        batch = (await client.post("/v1/messages", json=body)).json()["batch_id"]
        r = await client.delete(f"/v1/messages/{batch}")
        assert r.status_code == 200, r.text
        assert r.json()["cancelled_at"] is not None
        assert r.json()["pending"] == 0 and r.json()["next_check_at"] is None
        [cancel] = [f for f in gateway.calls("SendTimeSMS") if f.get("D") == "Y"]
        assert cancel["ID"] == batch
        again = await client.delete(f"/v1/messages/{batch}")
        assert again.status_code == 409
        assert again.json()["error"] == "not_cancellable"
        assert len(gateway.calls("SendTimeSMS")) == 2  # not asked again
        assert (await client.get(f"/v1/messages/{batch}")).json()["cancelled_at"] is not None


async def test_a_cancel_that_loses_the_race_is_409_not_cancellable(database_url: str) -> None:
    # Two cancels of one send pass the checks together; the gateway accepts both (its D=Y
    # is idempotent), but only one of them records the cancellation.
    gateway = FakeGateway()
    both_asking = asyncio.Barrier(2)

    async def answer(request: httpx.Request) -> httpx.Response:
        if b"D=Y" in request.content:
            await both_asking.wait()
        return gateway.handler(request)

    async with service(database_url, gateway, httpx.MockTransport(answer)) as (_, client, _):
        body = {"numbers": NUMBERS, "text": "later", "send_at": future_slot()}
        batch = (await client.post("/v1/messages", json=body)).json()["batch_id"]
        answers = await asyncio.gather(
            client.delete(f"/v1/messages/{batch}"), client.delete(f"/v1/messages/{batch}")
        )
        assert sorted(r.status_code for r in answers) == [200, 409]
        [lost] = [r for r in answers if r.status_code == 409]
        assert lost.json()["error"] == "not_cancellable"
        [won] = [r for r in answers if r.status_code == 200]
        shown = (await client.get(f"/v1/messages/{batch}")).json()
        assert shown["cancelled_at"] == won.json()["cancelled_at"] is not None


async def test_cancel_refusals(database_url: str) -> None:
    gateway = FakeGateway()
    async with service(database_url, gateway) as (_, client, _):
        assert (await client.delete("/v1/messages/nope")).status_code == 404
        now = (await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "a"})).json()
        r = await client.delete(f"/v1/messages/{now['batch_id']}")
        assert r.status_code == 409
        assert "immediate" in r.json()["message"]

        body = {"numbers": NUMBERS, "text": "later", "send_at": future_slot()}
        later = (await client.post("/v1/messages", json=body)).json()
        gateway.answers["SendTimeSMS"] = "25"
        r = await client.delete(f"/v1/messages/{later['batch_id']}")
        assert r.status_code == 502
        assert r.json() | {"message": None, "answer": None} == {
            "error": "gateway_error",
            "code": "25",
            "meaning": "no scheduled send with that ID to delete",
            "interface": "SendTimeSMS",
            "message": None,
            "answer": None,
        }
        shown = await client.get(f"/v1/messages/{later['batch_id']}")
        assert shown.json()["cancelled_at"] is None


async def test_an_immediate_and_a_scheduled_send_may_share_an_id(database_url: str) -> None:
    gateway = FakeGateway()
    gateway.answers["SendSMS"] = "00,7"
    gateway.answers["SendTimeSMS"] = lambda f: "00" if f.get("D") else "00,7"
    async with service(database_url, gateway) as (_, client, _):
        now = await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "a"})
        body = {"numbers": NUMBERS[:1], "text": "b", "send_at": future_slot()}
        later = await client.post("/v1/messages", json=body)
        assert (now.status_code, later.status_code) == (201, 201)
        r = await client.get("/v1/messages/7")
        assert r.status_code == 409
        assert r.json()["error"] == "ambiguous" and r.json()["types"] == ["now", "scheduled"]
        assert (await client.get("/v1/messages/7", params={"type": "now"})).json()["text"] == "a"
        assert (await client.get("/v1/messages/7?type=scheduled")).json()["text"] == "b"
        assert (await client.get("/v1/messages/7?type=later")).status_code == 422
        cancelled = await client.delete("/v1/messages/7")
        assert cancelled.status_code == 200
        assert cancelled.json()["type"] == "scheduled"
        assert (await client.delete("/v1/messages/7?type=now")).status_code == 409


async def test_pending_counts_numbers_without_a_final_report(database_url: str) -> None:
    async with service(database_url) as (app, client, _):
        sent = (await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "a"})).json()
        batch = sent["batch_id"]
        delivered = report(ID=batch, msgid="m1", mobile=NUMBERS[0], donetime=_recent())
        enroute = report(
            ID=batch, msgid="m2", mobile=NUMBERS[1], statusstr="ENROUTE", donetime=_recent()
        )
        for fields in (delivered, enroute):
            assert (await client.post("/callbacks/mboxii/tok-2", data=fields)).status_code == 200
        assert (await client.get(f"/v1/messages/{batch}")).json()["pending"] == 2
        summary = (await client.get(f"/v1/batches/{batch}")).json()
        assert (summary["deliveries"], summary["delivered"], summary["pending"]) == (2, 1, 2)
        assert summary["by_status"] == {"DELIVRD": 1, "ENROUTE": 1}
        async with app.app_state.sessionmaker() as session:
            # Only the third number has no report at all; the ENROUTE one is a non-final
            # delivery, which the batch summary counts already.
            assert await unreported_numbers(session, batch, "now") == 1
            assert await unreported_numbers(session, batch) == 1
            assert await unreported_numbers(session, batch, "scheduled") == 0
            assert await unreported_numbers(session, "other") == 0


def _recent() -> str:
    when = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))) - dt.timedelta(seconds=5)
    return when.strftime("%Y/%m/%d %H:%M:%S")


async def test_the_batch_summary_knows_recorded_sends_before_any_report(
    database_url: str,
) -> None:
    async with service(database_url) as (_, client, _):
        batch = (await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "a"})).json()[
            "batch_id"
        ]
        r = await client.get(f"/v1/batches/{batch}")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "batch_id": batch,
            "deliveries": 0,
            "delivered": 0,
            "failed": 0,
            "pending": 3,
            "by_status": {},
            "first_done_at": None,
            "last_done_at": None,
        }
        assert (await client.get(f"/v1/batches/{batch}?type=now")).json()["pending"] == 3
        assert (await client.get(f"/v1/batches/{batch}?type=scheduled")).status_code == 404
        assert (await client.get("/v1/batches/999999")).status_code == 404

        body = {"numbers": NUMBERS[:2], "text": "later", "send_at": future_slot()}
        later = (await client.post("/v1/messages", json=body)).json()["batch_id"]
        assert (await client.get(f"/v1/batches/{later}?type=scheduled")).json()["pending"] == 2
        assert (await client.delete(f"/v1/messages/{later}")).status_code == 200
        cancelled = await client.get(f"/v1/batches/{later}?type=scheduled")
        assert (cancelled.status_code, cancelled.json()["pending"]) == (200, 0)


async def test_gateway_calls_are_counted_by_result(database_url: str) -> None:
    gateway = FakeGateway()
    async with service(database_url, gateway) as (_, client, _):
        await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "a"})
        gateway.answers["SendSMS"] = "30"
        await client.post("/v1/messages", json={"numbers": NUMBERS, "text": "b"})
        text = (await client.get("/metrics")).text
    assert 'mboxii_dlr_gateway_requests_total{interface="SendSMS",result="ok"} 1.0' in text
    assert 'mboxii_dlr_gateway_requests_total{interface="SendSMS",result="NoCredit"} 1.0' in text
