"""Batch summaries and time-bucketed stats through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.conftest import make_settings, report

CB = "/callbacks/mboxii"
_msgids = itertools.count(1)

FAILED = {"statusstr": "UNDELIV", "statuscode": "0"}
PENDING = {"statusstr": "ENROUTE", "statuscode": "0"}


async def send(client: httpx.AsyncClient, *reports: dict[str, str]) -> None:
    """Post callbacks concurrently (they may share a commit); every one must be stored."""
    answers = await asyncio.gather(*(client.post(CB, data=r) for r in reports))
    for answer in answers:
        assert answer.status_code == 200, answer.text


def done(when: str, **changes: str) -> dict[str, str]:
    """A report of a new delivery done at `when` (ISO 8601 with offset)."""
    fields = {"msgid": f"m{next(_msgids)}", "donetime": when, **changes}
    return report(**fields)


async def stats(client: httpx.AsyncClient, **params: str) -> Any:
    response = await client.get("/v1/stats", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def starts(answer: Any) -> list[str]:
    return [bucket["start"] for bucket in answer["buckets"]]


def counts(answer: Any) -> list[int]:
    return [bucket["deliveries"] for bucket in answer["buckets"]]


def hours(start: str, end: str) -> float:
    delta = dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)
    return delta.total_seconds() / 3600


# ---------------------------------------------------------------- batches


async def test_batch_counts_by_outcome_and_status(client: httpx.AsyncClient) -> None:
    await send(
        client,
        report(ID="B1", msgid="a", donetime="2026-11-20T01:00:00Z", **PENDING),
        report(ID="B1", msgid="b", donetime="2026-11-20T01:05:00Z"),
        report(ID="B1", msgid="c", donetime="2026-11-20T01:10:00Z", **FAILED),
        report(ID="B1", msgid="d", donetime="2026-11-20T01:20:00Z", **PENDING),
        # e was first reported under B2: it keeps that ID, but B1's report names it too
        report(ID="B2", msgid="e", donetime="2026-11-20T00:50:00Z", **PENDING),
        report(ID="B2", msgid="f", donetime="2026-11-20T00:40:00Z"),
    )
    await send(
        client,
        report(ID="B1", msgid="a", donetime="2026-11-20T01:30:00Z"),
        report(ID="B1", msgid="e", donetime="2026-11-20T02:00:00Z"),
    )
    r = await client.get("/v1/batches/B1")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "batch_id": "B1",
        "deliveries": 5,
        "delivered": 3,
        "failed": 1,
        "pending": 1,
        "by_status": {"DELIVRD": 3, "ENROUTE": 1, "UNDELIV": 1},
        "first_done_at": "2026-11-20T01:05:00Z",
        "last_done_at": "2026-11-20T02:00:00Z",
    }
    b2 = (await client.get("/v1/batches/B2")).json()
    assert (b2["deliveries"], b2["delivered"], b2["pending"]) == (2, 2, 0)
    assert (b2["first_done_at"], b2["last_done_at"]) == (
        "2026-11-20T00:40:00Z",
        "2026-11-20T02:00:00Z",
    )


async def test_batch_type_separates_the_two_id_sequences(client: httpx.AsyncClient) -> None:
    await send(
        client,
        report(ID="777", msgid="now-1", type="Now"),
        report(ID="777", msgid="dlv-1", type="dlv"),
        report(ID="777", msgid="dlv-2", type="DLV", **FAILED),
    )
    both = (await client.get("/v1/batches/777")).json()
    now = (await client.get("/v1/batches/777", params={"type": "now"})).json()
    scheduled = (await client.get("/v1/batches/777", params={"type": "scheduled"})).json()
    assert (both["deliveries"], now["deliveries"], scheduled["deliveries"]) == (3, 1, 2)
    assert scheduled["by_status"] == {"DELIVRD": 1, "UNDELIV": 1}
    assert now["by_status"] == {"DELIVRD": 1}
    bad = await client.get("/v1/batches/777", params={"type": "sms"})
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_parameters"
    assert bad.json()["errors"][0]["field"] == "type"


async def test_batch_unknown_is_404_and_any_printable_id_works(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/batches/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    await send(client, report(ID="A/B#?%1", msgid="odd"))
    r = await client.get("/v1/batches/A%2FB%23%3F%251")
    assert r.status_code == 200, r.text
    assert (r.json()["batch_id"], r.json()["deliveries"]) == ("A/B#?%1", 1)
    only_scheduled = await client.get("/v1/batches/A%2FB%23%3F%251", params={"type": "scheduled"})
    assert only_scheduled.status_code == 404


# ---------------------------------------------------------------- stats: calendars


async def test_day_buckets_across_taipei_midnight_and_in_utc(client: httpx.AsyncClient) -> None:
    await send(
        client,
        done("2026-11-20T15:30:00Z"),  # 23:30 on the 20th in Taipei
        done("2026-11-20T16:30:00Z", **FAILED),  # 00:30 on the 21st in Taipei
        done("2026-11-21T03:00:00Z"),
    )
    taipei = await stats(client, **{"from": "2026-11-20T00:00:00", "to": "2026-11-22T00:00:00"})
    assert (taipei["from"], taipei["to"]) == ("2026-11-19T16:00:00Z", "2026-11-21T16:00:00Z")
    assert (taipei["interval"], taipei["tz"]) == ("hour", "Asia/Taipei")
    assert len(taipei["buckets"]) == 48

    day = await stats(
        client, **{"from": "2026-11-20T00:00:00", "to": "2026-11-22T00:00:00", "interval": "day"}
    )
    assert starts(day) == ["2026-11-20T00:00:00+08:00", "2026-11-21T00:00:00+08:00"]
    assert counts(day) == [1, 2]
    assert day["buckets"][1]["by_status"] == {"DELIVRD": 1, "UNDELIV": 1}
    assert day["buckets"][1]["delivery_rate"] == 0.5
    assert day["totals"] == {
        "deliveries": 3,
        "delivered": 2,
        "failed": 1,
        "pending": 0,
        "by_status": {"DELIVRD": 2, "UNDELIV": 1},
        "delivery_rate": pytest.approx(2 / 3),
    }

    utc = await stats(
        client,
        **{"from": "2026-11-20T00:00:00Z", "to": "2026-11-22T00:00:00Z"},
        interval="day",
        tz="UTC",
    )
    assert utc["tz"] == "UTC"
    assert starts(utc) == ["2026-11-20T00:00:00+00:00", "2026-11-21T00:00:00+00:00"]
    assert counts(utc) == [2, 1]


async def test_berlin_spring_switch(client: httpx.AsyncClient) -> None:
    # 2026-03-29 02:00 CET became 03:00 CEST (01:00 UTC)
    await send(
        client,
        done("2026-03-29T00:30:00Z"),  # 01:30 CET
        done("2026-03-29T01:30:00Z"),  # 03:30 CEST
        done("2026-03-29T21:30:00Z"),  # 23:30 CEST, still the 29th
        done("2026-03-29T22:30:00Z"),  # 00:30 on the 30th
    )
    berlin = {"tz": "Europe/Berlin"}
    day = await stats(
        client,
        **berlin,
        interval="day",
        **{"from": "2026-03-28T00:00:00+01:00", "to": "2026-03-30T00:00:00+02:00"},
    )
    assert starts(day) == ["2026-03-28T00:00:00+01:00", "2026-03-29T00:00:00+01:00"]
    assert hours(day["buckets"][1]["start"], "2026-03-30T00:00:00+02:00") == 23
    assert counts(day) == [0, 3]

    hour = await stats(
        client,
        **berlin,
        **{"from": "2026-03-29T00:00:00+01:00", "to": "2026-03-29T05:00:00+02:00"},
    )
    assert starts(hour) == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]
    assert counts(hour) == [0, 1, 1, 0]


async def test_berlin_autumn_switch(client: httpx.AsyncClient) -> None:
    # 2026-10-25 03:00 CEST became 02:00 CET (01:00 UTC): 02:xx happens twice
    await send(
        client,
        done("2026-10-25T00:30:00Z"),  # 02:30 CEST
        done("2026-10-25T01:30:00Z", **FAILED),  # 02:30 CET
        done("2026-10-25T22:59:59Z"),  # 23:59:59 CET, the last second of the 25th
    )
    berlin = {"tz": "Europe/Berlin"}
    day = await stats(
        client,
        **berlin,
        interval="day",
        **{"from": "2026-10-25T00:00:00+02:00", "to": "2026-10-26T00:00:00+01:00"},
    )
    assert starts(day) == ["2026-10-25T00:00:00+02:00"]
    assert hours(day["buckets"][0]["start"], "2026-10-26T00:00:00+01:00") == 25
    assert counts(day) == [3]

    hour = await stats(
        client,
        **berlin,
        **{"from": "2026-10-25T01:00:00+02:00", "to": "2026-10-25T04:00:00+01:00"},
    )
    assert starts(hour) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    assert counts(hour) == [0, 1, 1, 0]
    assert [b["by_status"] for b in hour["buckets"][1:3]] == [{"DELIVRD": 1}, {"UNDELIV": 1}]


@pytest.mark.parametrize(
    ("zone", "offset", "first_start"),
    [("Asia/Kathmandu", "+05:45", "05:00"), ("Asia/Kolkata", "+05:30", "05:00")],
)
async def test_hour_buckets_start_at_local_full_hours(
    client: httpx.AsyncClient, zone: str, offset: str, first_start: str
) -> None:
    await send(
        client,
        done("2026-11-20T23:50:00Z"),  # in the first local hour, but before `from`
        done("2026-11-21T00:10:00Z"),
        done("2026-11-21T00:40:00Z"),
    )
    answer = await stats(
        client, tz=zone, **{"from": "2026-11-21T00:00:00Z", "to": "2026-11-21T03:00:00Z"}
    )
    assert starts(answer) == [f"2026-11-21T{h}:00:00{offset}" for h in ("05", "06", "07", "08")]
    assert starts(answer)[0].startswith(f"2026-11-21T{first_start}")
    # 00:10 UTC is 05:55 in Kathmandu but 05:40 in Kolkata; 00:40 UTC is 06:25 / 06:10
    assert counts(answer) == [1, 1, 0, 0]
    assert answer["totals"]["deliveries"] == 2


async def test_range_is_half_open_and_empty_buckets_have_no_rate(
    client: httpx.AsyncClient,
) -> None:
    await send(
        client,
        done("2026-11-21T10:00:00Z"),  # exactly `from`: counted
        done("2026-11-21T10:59:59.999999Z"),
        done("2026-11-21T13:00:00Z"),  # exactly `to`: not counted
        done("2026-11-21T09:59:59Z"),
    )
    answer = await stats(
        client, tz="UTC", **{"from": "2026-11-21T10:00:00Z", "to": "2026-11-21T13:00:00Z"}
    )
    assert counts(answer) == [2, 0, 0]
    assert [b["delivery_rate"] for b in answer["buckets"]] == [1.0, None, None]
    assert answer["buckets"][1] == {
        "start": "2026-11-21T11:00:00+00:00",
        "deliveries": 0,
        "delivered": 0,
        "failed": 0,
        "pending": 0,
        "by_status": {},
        "delivery_rate": None,
    }
    assert answer["totals"]["deliveries"] == 2

    # A range cut mid-hour still counts only its own part of the hour.
    part = await stats(
        client, tz="UTC", **{"from": "2026-11-21T10:30:00Z", "to": "2026-11-21T10:59:59.999999Z"}
    )
    assert starts(part) == ["2026-11-21T10:00:00+00:00"]
    assert counts(part) == [0]


async def test_type_filter_and_pending(client: httpx.AsyncClient) -> None:
    await send(
        client,
        done("2026-11-21T10:10:00Z", type="Now"),
        done("2026-11-21T10:20:00Z", type="dlv", **PENDING),
        done("2026-11-21T10:30:00Z", type="dlv"),
    )
    window = {"from": "2026-11-21T10:00:00Z", "to": "2026-11-21T11:00:00Z", "tz": "UTC"}
    every = await stats(client, **window)
    scheduled = await stats(client, **window, type="scheduled")
    now = await stats(client, **window, type="now")
    assert every["totals"]["deliveries"] == 3
    assert scheduled["totals"] | {"delivery_rate": None} == {
        "deliveries": 2,
        "delivered": 1,
        "failed": 0,
        "pending": 1,
        "by_status": {"DELIVRD": 1, "ENROUTE": 1},
        "delivery_rate": None,
    }
    assert scheduled["totals"]["delivery_rate"] == 0.5
    assert now["totals"]["deliveries"] == 1


async def test_default_range_is_the_last_24_hours(client: httpx.AsyncClient) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    await send(
        client,
        done((now - dt.timedelta(hours=1)).strftime(iso)),
        done((now - dt.timedelta(hours=25)).strftime(iso)),
    )
    before = dt.datetime.now(dt.UTC)
    answer = await stats(client)
    after = dt.datetime.now(dt.UTC)
    start = dt.datetime.fromisoformat(answer["from"])
    end = dt.datetime.fromisoformat(answer["to"])
    assert before <= end <= after
    assert end - start == dt.timedelta(hours=24)
    assert answer["totals"]["deliveries"] == 1
    assert len(answer["buckets"]) in (24, 25)  # 25 unless `to` falls on a full hour

    only_from = await stats(client, **{"from": (now - dt.timedelta(hours=2)).strftime(iso)})
    assert before <= dt.datetime.fromisoformat(only_from["to"])
    assert only_from["totals"]["deliveries"] == 1

    only_to = await stats(client, to="2026-11-21T00:00:00Z")
    assert (only_to["from"], only_to["to"]) == ("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z")


# ---------------------------------------------------------------- stats: bad parameters


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"from": "yesterday"}, "from", "ISO 8601"),
        ({"to": "2026-13-01T00:00:00"}, "to", "ISO 8601"),
        ({"from": "2026-11-21T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, "from", "before"),
        ({"from": "2026-11-22T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, "from", "before"),
        ({"interval": "week"}, "interval", ""),
        ({"tz": "Mars/Olympus_Mons"}, "tz", "unknown"),
        ({"tz": "Asia"}, "tz", "unknown"),
        ({"tz": "../../etc/passwd"}, "tz", "unknown"),
        ({"type": "sms"}, "type", ""),
        ({"from": "2025-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "interval", "10000"),
        ({"from": "1990-01-01", "to": "2026-01-01", "interval": "day"}, "interval", "10000"),
        ({"from": "0001-01-01T00:00:00"}, "from", "9998"),
    ],
)
async def test_bad_stats_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str], field: str, words: str
) -> None:
    r = await client.get("/v1/stats", params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_parameters"
    assert body["errors"][0]["field"] == field
    assert words in body["errors"][0]["message"]


async def test_longest_allowed_range(client: httpx.AsyncClient) -> None:
    await send(client, done("2026-11-21T00:00:00Z"))
    # 10,000 hours from a full hour: exactly the limit
    end = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    start = end - dt.timedelta(hours=10_000)
    answer = await stats(client, tz="UTC", **{"from": start.isoformat(), "to": end.isoformat()})
    assert len(answer["buckets"]) == 10_000
    assert answer["totals"]["deliveries"] == 1


async def test_a_range_in_an_early_year_is_written_with_four_digits(
    client: httpx.AsyncClient,
) -> None:
    # The answer's times are RFC 3339 date-times, which need a four-digit year.
    answer = await stats(
        client, tz="UTC", interval="day", **{"from": "0002-01-01T00:00Z", "to": "0002-01-02T00:00Z"}
    )
    assert (answer["from"], answer["to"]) == ("0002-01-01T00:00:00Z", "0002-01-02T00:00:00Z")


def test_openapi_documents_every_new_endpoint(tmp_path: Path) -> None:
    spec = create_app(make_settings(f"sqlite:///{tmp_path}/unused.db")).openapi()
    expected = {
        ("/v1/batches/{batch_id}", "get"): ("BatchRead", {"401", "404", "422"}),
        ("/v1/stats", "get"): ("StatsRead", {"401", "422"}),
        ("/v1/rejected", "get"): ("RejectedPage", {"401", "422"}),
        ("/v1/rejected/{id}/replay", "post"): ("DeliveryRead", {"401", "404", "422", "503"}),
    }
    schemas = spec["components"]["schemas"]
    for (path, method), (model, errors) in expected.items():
        operation = spec["paths"][path][method]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{model}"}
        assert errors <= set(operation["responses"]), path
        assert all(p.get("description") for p in operation["parameters"]), path
        assert "example" in schemas[model], model
    stats_params = {p["name"] for p in spec["paths"]["/v1/stats"]["get"]["parameters"]}
    assert stats_params == {"from", "to", "interval", "tz", "type"}
