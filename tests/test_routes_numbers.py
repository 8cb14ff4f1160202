"""Section 5 through HTTP, on SQLite and PostgreSQL: numbers, their list, cursors and CSV,
suppressions by hand, and sends that leave suppressed numbers out."""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

import httpx
import pytest

from app.read.numbers import CSV_COLUMNS
from tests.conftest import report
from tests.fake_gateway import FakeGateway, service

CB = "/callbacks/mboxii"


async def post(client: httpx.AsyncClient, mobile: str, msgid: str, word: str, at: str) -> None:
    code = "1" if word == "DELIVRD" else "0"
    fields = report(msgid=msgid, mobile=mobile, statusstr=word, statuscode=code, donetime=at)
    response = await client.post(CB, data=fields)
    assert response.status_code == 200, response.text


# number (national), failures after its last delivered, deliveries in all
STREAKS = {
    "0911000001": 3,
    "0911000002": 1,
    "0911000003": 3,
    "0911000004": 0,
    "0911000005": 0,
    "0911000006": 2,
}


async def seed(client: httpx.AsyncClient) -> None:
    """For each number one delivered delivery, then its streak of failures (a day each)."""
    for i, (mobile, streak) in enumerate(STREAKS.items()):
        await post(client, mobile, f"ok{i}", "DELIVRD", "2026/11/01 10:00:00")
        for f in range(streak):
            await post(client, mobile, f"f{i}-{f}", "UNDELIV", f"2026/11/{2 + f:02d} 10:00:00")


def e164(national: str) -> str:
    return "+886" + national[1:]


# The list order: highest streak first, then mobile.
ORDER = [e164(m) for m, _ in sorted(STREAKS.items(), key=lambda kv: (-kv[1], e164(kv[0])))]


async def walk(client: httpx.AsyncClient, limit: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/numbers", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == limit


async def test_a_number_in_any_spelling_with_its_latest_deliveries(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    for spelling in ("0911000001", "+886911000001", "886911000001", "+886 0911-000-001"):
        response = await client.get(f"/v1/numbers/{spelling}")
        assert response.status_code == 200, response.text
    number = response.json()
    assert {k: v for k, v in number.items() if k != "recent"} == {
        "mobile": "+886911000001",
        "deliveries": 4,
        "delivered": 1,
        "failed": 3,
        "pending": 0,
        "first_done_at": "2026-11-01T02:00:00Z",
        "last_done_at": "2026-11-04T02:00:00Z",
        "last_status": "UNDELIV",
        "last_outcome": "failed",
        "last_delivered_at": "2026-11-01T02:00:00Z",
        "failure_streak": 3,
        "suppressed": None,
    }
    assert [d["msgid"] for d in number["recent"]] == ["f0-2", "f0-1", "f0-0", "ok0"]
    assert set(number["recent"][0]) >= {"msgid", "batch_id", "status", "outcome", "done_at"}


async def test_recent_holds_the_latest_20(client: httpx.AsyncClient) -> None:
    for i in range(23):
        await post(client, "0911000009", f"m{i:02d}", "DELIVRD", f"2026/11/{1 + i:02d} 10:00:00")
    number = (await client.get("/v1/numbers/0911000009")).json()
    assert number["deliveries"] == 23
    assert [d["msgid"] for d in number["recent"]] == [f"m{i:02d}" for i in range(22, 2, -1)]


async def test_unknown_and_invalid_numbers(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/numbers/0911000001")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")
    for bad in ("0211000001", "abc", "9" * 40):
        response = await client.get(f"/v1/numbers/{bad}")
        assert response.status_code == 422, bad
        assert response.json()["error"] == "invalid_parameters"
    for method in ("put", "delete"):
        response = await client.request(method.upper(), "/v1/suppressions/12", json={"reason": "x"})
        assert response.status_code == 422


async def test_the_list_by_streak_and_every_cursor_walk(client: httpx.AsyncClient) -> None:
    await seed(client)
    first = (await client.get("/v1/numbers")).json()
    assert [n["mobile"] for n in first["items"]] == ORDER
    assert first["next_cursor"] is None
    assert [n["failure_streak"] for n in first["items"]] == [3, 3, 2, 1, 0, 0]
    # pages that end inside a streak, at its end, and inside the numbers without one
    for limit in (1, 2, 3, 4, 5):
        assert [n["mobile"] for n in await walk(client, limit)] == ORDER


async def test_filters(client: httpx.AsyncClient) -> None:
    await seed(client)
    put = await client.put("/v1/suppressions/0911000005", json={"reason": "asked"})
    assert put.status_code == 200

    async def mobiles(limit: int = 2, **params: Any) -> list[str]:
        return [n["mobile"] for n in await walk(client, limit, **params)]

    assert await mobiles(failure_streak_min=2) == ORDER[:3]
    assert await mobiles(failure_streak_min=0) == ORDER
    assert await mobiles(failure_streak_min=4) == []
    assert await mobiles(suppressed="true") == [e164("0911000005")]
    assert await mobiles(1, suppressed="false") == [m for m in ORDER if m != e164("0911000005")]
    # the latest done_at: 11-01 for the numbers without failures, 11-02 to 11-04 for the rest
    assert await mobiles(last_done_from="2026-11-03T00:00:00+08:00") == ORDER[:3]
    assert await mobiles(last_done_to="2026-11-02T00:00:00") == ORDER[4:]
    assert await mobiles(1, last_done_from="2026-11-02", last_done_to="2026-11-03") == [
        e164("0911000002")
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"failure_streak_min": "-1"}, "failure_streak_min"),
        ({"failure_streak_min": "x"}, "failure_streak_min"),
        ({"suppressed": "perhaps"}, "suppressed"),
        ({"last_done_from": "yesterday"}, "last_done_from"),
        ({"last_done_from": "2026-11-02", "last_done_to": "2026-11-01"}, "last_done_to"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "forged"}, "cursor"),
    ],
)
async def test_bad_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    paging = field in ("limit", "cursor")
    paths = ["/v1/numbers", "/v1/suppressions"] if paging else ["/v1/numbers", "/v1/numbers.csv"]
    for path in paths:
        response = await client.get(path, params=params)
        assert response.status_code == 422, (path, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_a_cursor_belongs_to_its_filters_and_its_list(client: httpx.AsyncClient) -> None:
    await seed(client)
    cursor = (await client.get("/v1/numbers", params={"limit": 1})).json()["next_cursor"]
    assert (await client.get("/v1/numbers", params={"cursor": cursor})).status_code == 200
    for params in ({"failure_streak_min": 1}, {"suppressed": "false"}):
        response = await client.get("/v1/numbers", params={**params, "cursor": cursor})
        assert response.status_code == 422
    assert (await client.get("/v1/suppressions", params={"cursor": cursor})).status_code == 422
    deliveries = (await client.get("/v1/deliveries", params={"limit": 1})).json()["next_cursor"]
    assert (await client.get("/v1/numbers", params={"cursor": deliveries})).status_code == 422


async def test_the_csv_export(client: httpx.AsyncClient) -> None:
    await seed(client)
    await client.put("/v1/suppressions/0911000002", json={"reason": "=cmd|' /C calc'!A0"})
    response = await client.get("/v1/numbers.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="numbers.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == list(CSV_COLUMNS)
    assert [r[0] for r in rows[1:]] == ORDER
    by_mobile = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    two = by_mobile[e164("0911000002")]
    assert (two["failure_streak"], two["suppressed_source"]) == ("1", "manual")
    assert two["suppressed_reason"] == "'=cmd|' /C calc'!A0"  # a formula is not run
    assert by_mobile[e164("0911000004")]["suppressed_since"] == ""
    filtered = await client.get("/v1/numbers.csv", params={"failure_streak_min": 3})
    assert [r[0] for r in list(csv.reader(io.StringIO(filtered.text)))[1:]] == ORDER[:2]


async def test_suppress_by_hand_lift_and_list(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(client)
    caplog.set_level(logging.INFO, "mboxii_dlr.numbers")
    put = await client.put("/v1/suppressions/+886911000001", json={"reason": " asked us "})
    assert put.status_code == 200, put.text
    one = put.json()
    assert (one["mobile"], one["failure_streak"]) == ("+886911000001", 3)
    assert (one["suppressed"]["source"], one["suppressed"]["reason"]) == ("manual", "asked us")
    # again, with another reason: the same suppression, since unchanged
    again = (await client.put("/v1/suppressions/0911000001", json={"reason": "still"})).json()
    assert again["suppressed"]["since"] == one["suppressed"]["since"]
    assert again["suppressed"]["reason"] == "still"
    # a number never seen can be suppressed too
    never = (await client.put("/v1/suppressions/0999888777", json={"reason": "x"})).json()
    assert (never["deliveries"], never["last_done_at"]) == (0, None)
    assert (await client.get("/v1/numbers/0999888777")).status_code == 200

    listed = (await client.get("/v1/suppressions")).json()
    assert [n["mobile"] for n in listed["items"]] == ["+886999888777", "+886911000001"]
    first = (await client.get("/v1/suppressions", params={"limit": 1})).json()
    rest = await client.get("/v1/suppressions", params={"limit": 1, "cursor": first["next_cursor"]})
    assert [n["mobile"] for n in rest.json()["items"]] == ["+886911000001"]
    assert rest.json()["next_cursor"] is None

    lifted = await client.delete("/v1/suppressions/886911000001")
    assert lifted.status_code == 200
    assert (lifted.json()["suppressed"], lifted.json()["failure_streak"]) == (None, 0)
    assert (await client.get("/v1/numbers/0911000001")).json()["failure_streak"] == 0
    gone = await client.delete("/v1/suppressions/0911000001")
    assert (gone.status_code, gone.json()["error"]) == (404, "not_found")
    assert (await client.delete("/v1/suppressions/0922000000")).status_code == 404

    logged = [r.getMessage() for r in caplog.records]
    assert "number 0911***001 suppressed by hand" in logged
    assert "suppression of number 0911***001 lifted" in logged
    assert not any("911000001" in line for line in logged)
    metrics = (await client.get("/metrics")).text
    assert 'mboxii_dlr_numbers_suppressed_total{source="manual"} 2.0' in metrics
    assert "mboxii_dlr_numbers_lifted_total 1.0" in metrics
    assert "911000001" not in metrics


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": ""},
        {"reason": "   "},
        {"reason": "a\nb"},
        {"reason": "x" * 501},
        {"why": "x"},
    ],
)
async def test_a_suppression_needs_a_reason(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.put("/v1/suppressions/0911000001", json=body)
    assert response.status_code == 422
    assert (await client.get("/v1/numbers/0911000001")).status_code == 404


# ---------------------------------------------------------------- sending


async def test_sends_leave_suppressed_numbers_out(database_url: str) -> None:
    gateway = FakeGateway()
    async with service(database_url, gateway) as (_, client, _):
        for mobile in ("0912000001", "0912000003"):
            response = await client.put(f"/v1/suppressions/{mobile}", json={"reason": "no"})
            assert response.status_code == 200
        numbers = ["0912000001", "0912000002", "+886912000003"]
        sent = await client.post("/v1/messages", json={"numbers": numbers, "text": "hi"})
        assert sent.status_code == 201, sent.text
        body = sent.json()
        assert body["numbers"] == ["+886912000002"]
        assert body["suppressed"] == ["+886912000001", "+886912000003"]
        assert gateway.calls("SendSMS")[-1]["N"] == "0912000002"
        shown = (await client.get(f"/v1/messages/{body['batch_id']}")).json()
        assert shown["numbers"] == ["+886912000002"]

        # every number suppressed: nothing sent
        before = len(gateway.requests)
        refused = await client.post(
            "/v1/messages", json={"numbers": ["0912000001", "0912000003"], "text": "hi"}
        )
        assert refused.status_code == 422
        assert refused.json()["error"] == "all_numbers_suppressed"
        assert refused.json()["suppressed"] == ["+886912000001", "+886912000003"]
        assert len(gateway.requests) == before

        # a word for true is no true: nothing is sent on a guess
        for loose in ("yes", "true", 1):
            r = await client.post(
                "/v1/messages",
                json={"numbers": numbers, "text": "hi", "include_suppressed": loose},
            )
            assert r.status_code == 422, loose
        assert len(gateway.requests) == before

        # include_suppressed sends to them anyway
        forced = await client.post(
            "/v1/messages",
            json={"numbers": numbers, "text": "hi", "include_suppressed": True},
        )
        assert forced.status_code == 201
        assert forced.json()["suppressed"] == []
        assert len(forced.json()["numbers"]) == 3
        assert gateway.calls("SendSMS")[-1]["N"] == "0912000001,0912000002,0912000003"
        metrics = (await client.get("/metrics")).text
        assert "mboxii_dlr_send_numbers_suppressed_total 4.0" in metrics


async def test_the_openapi_document_describes_section_5(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    assert set(paths["/v1/numbers/{mobile}"]) == {"get"}
    assert set(paths["/v1/suppressions/{mobile}"]) == {"put", "delete"}
    assert {"/v1/numbers", "/v1/numbers.csv", "/v1/suppressions"} <= set(paths)
    schemas = document["components"]["schemas"]
    assert schemas["NumberRead"]["example"]["failure_streak"] == 5
    assert "recent" in schemas["NumberDetail"]["properties"]
    assert "example" in schemas["SuppressionCreate"]


async def test_suppression_writes_need_a_send_key(app_factory: Any) -> None:
    read, send = "read-key-0123456789abcdef", "send-key-0123456789abcdef"
    async with app_factory(api_keys=[read], send_api_keys=[send]) as (_, client):
        as_reader = {"x-api-key": read}
        as_sender = {"authorization": f"Bearer {send}"}
        body = {"reason": "asked"}
        r = await client.put("/v1/suppressions/0911000001", json=body, headers=as_reader)
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
        r = await client.put("/v1/suppressions/0911000001", json=body, headers=as_sender)
        assert r.status_code == 200
        # reading needs any key; a read key cannot lift
        assert (await client.get("/v1/suppressions", headers=as_reader)).status_code == 200
        assert (await client.get("/v1/numbers/0911000001", headers=as_reader)).status_code == 200
        r = await client.delete("/v1/suppressions/0911000001", headers=as_reader)
        assert r.status_code == 403
        r = await client.delete("/v1/suppressions/0911000001", headers=as_sender)
        assert r.status_code == 200
        assert (await client.get("/v1/numbers")).status_code == 401


async def test_with_no_send_keys_every_key_suppresses_and_lifts(app_factory: Any) -> None:
    key = {"x-api-key": "only-key-0123456789abcdef"}
    async with app_factory(api_keys=["only-key-0123456789abcdef"]) as (_, client):
        r = await client.put("/v1/suppressions/0911000001", json={"reason": "asked"}, headers=key)
        assert r.status_code == 200 and r.json()["suppressed"]["source"] == "manual"
        r = await client.delete("/v1/suppressions/0911000001", headers=key)
        assert r.status_code == 200 and r.json()["suppressed"] is None
        r = await client.put("/v1/suppressions/0911000001", json={"reason": "asked"})
        assert r.status_code == 401


async def test_a_threshold_set_later_suppresses_the_streaks_already_reached(
    app_factory: Any,
) -> None:
    async with app_factory() as (_, client):
        await seed(client)  # streaks 3, 1, 3, 0, 0, 2
        await client.put("/v1/suppressions/0911000003", json={"reason": "by hand"})
    async with app_factory(suppress_after_failures=2) as (_, client):
        listed = (await client.get("/v1/suppressions")).json()["items"]
        by_source = {n["mobile"]: n["suppressed"]["source"] for n in listed}
        assert by_source == {
            e164("0911000001"): "automatic",
            e164("0911000003"): "manual",  # already suppressed: left as it was
            e164("0911000006"): "automatic",
        }
        first = next(n for n in listed if n["mobile"] == e164("0911000001"))
        assert first["suppressed"]["reason"] == "2 failed deliveries in a row"
        metrics = (await client.get("/metrics")).text
        assert 'mboxii_dlr_numbers_suppressed_total{source="automatic"} 2.0' in metrics
