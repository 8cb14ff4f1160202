"""The deliveries list, its cursors and its CSV export through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import itertools
import re
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from app.api.schemas.deliveries import DeliveryRead
from app.db.models import Delivery
from app.ingest.fold import Arrival
from app.ingest.parse import validate_fields
from app.ingest.writer import open_store
from tests.conftest import report
from tests.helpers import database_gone

FIELDS = list(DeliveryRead.model_fields)


async def seed(app: Any, reports: Iterable[dict[str, str]]) -> None:
    """Store reports the way the writer does, all in one transaction (fast for thousands)."""
    zone = app.app_state.settings.zone
    now = dt.datetime.now(dt.UTC)
    arrivals = [Arrival(validate_fields(fields, zone, now), now) for fields in reports]
    store = open_store(app.app_state.engine)
    try:
        await store.store(arrivals)
    finally:
        await store.close()


async def page(client: httpx.AsyncClient, path: str = "/v1/deliveries", **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def walk(client: httpx.AsyncClient, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item of a cursor walk."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        body = await page(client, limit=limit, **params, **extra)
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == limit


def keys(items: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["msgid"], i["mobile"]) for i in items]


# msgid, mobile, ID, type, statusstr, statuscode, donetime (gateway zone, Asia/Taipei)
SMALL = [
    ("m1", "0911111111", "B1", "Now", "DELIVRD", "1", "2026-11-20 10:00:00"),
    ("m2", "0911111111", "B1", "Now", "EXPIRED", "0", "2026-11-20 10:00:00"),
    ("m1", "0933333333", "B1", "Now", "REJECTD", "0", "2026-11-20 10:00:00"),
    ("m3", "0922222222", "B2", "dlv", "UNDELIV", "0", "2026-11-21 09:00:00"),
    ("m4", "0922222222", "B2", "dlv", "ENROUTE", "0", "2026-11-21 23:59:59"),
    ("m5", "0933333333", "B3", "Now", "DELIVRD", "1", "2026-11-22 00:00:00"),
    ("m6", "0911111111", "B3", "dlv", "ACCEPTD", "0", "2026-11-19 08:00:00"),
]
# The list order: newest done_at first, then msgid, then mobile.
SMALL_ORDER = [
    ("m5", "+886933333333"),
    ("m4", "+886922222222"),
    ("m3", "+886922222222"),
    ("m1", "+886911111111"),
    ("m1", "+886933333333"),
    ("m2", "+886911111111"),
    ("m6", "+886911111111"),
]


def small_reports() -> list[dict[str, str]]:
    return [
        report(msgid=m, mobile=mob, ID=b, type=t, statusstr=s, statuscode=c, donetime=d)
        for m, mob, b, t, s, c, d in SMALL
    ]


Pred = Callable[[dict[str, Any]], bool]
FILTER_CASES: list[tuple[dict[str, Any], Pred]] = [
    ({"mobile": "0911111111"}, lambda i: i["mobile"] == "+886911111111"),
    ({"msgid": "m1"}, lambda i: i["msgid"] == "m1"),
    ({"batch_id": "B2"}, lambda i: i["batch_id"] == "B2"),
    ({"status": "delivrd"}, lambda i: i["status"] == "DELIVRD"),
    ({"status": ["EXPIRED", "Undeliv"]}, lambda i: i["status"] in ("EXPIRED", "UNDELIV")),
    ({"outcome": "failed"}, lambda i: i["outcome"] == "failed"),
    ({"outcome": "pending"}, lambda i: i["outcome"] == "pending"),
    ({"outcome": "delivered"}, lambda i: i["outcome"] == "delivered"),
    ({"type": "scheduled"}, lambda i: i["type"] == "scheduled"),
    ({"type": "now"}, lambda i: i["type"] == "now"),
    # Taipei midnight of the 21st is 16:00 UTC on the 20th
    ({"done_from": "2026-11-21"}, lambda i: i["done_at"] >= "2026-11-20T16:00:00Z"),
    ({"done_from": "2026-11-21T01:00:00Z"}, lambda i: i["done_at"] >= "2026-11-21T01:00:00Z"),
    ({"done_to": "2026-11-21T09:00:00"}, lambda i: i["done_at"] < "2026-11-21T01:00:00Z"),
    (
        {"done_from": "2026-11-20T10:00:00+08:00", "done_to": "2026-11-21T09:00:00+08:00"},
        lambda i: "2026-11-20T02:00:00Z" <= i["done_at"] < "2026-11-21T01:00:00Z",
    ),
    (
        {"outcome": "failed", "type": "now", "mobile": "+886911111111"},
        lambda i: (i["outcome"], i["type"], i["mobile"]) == ("failed", "now", "+886911111111"),
    ),
    (
        {"batch_id": "B1", "status": ["EXPIRED", "REJECTD"], "done_from": "2026-11-20"},
        lambda i: i["batch_id"] == "B1" and i["status"] in ("EXPIRED", "REJECTD"),
    ),
    ({"msgid": "m1", "mobile": "933333333"}, lambda i: keys([i]) == [("m1", "+886933333333")]),
    ({"batch_id": "B3", "outcome": "pending"}, lambda i: False),
    ({"msgid": "nothing"}, lambda i: False),
]


async def test_each_filter_alone_and_combined(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(app, small_reports())
        everything = (await page(client))["items"]
        assert keys(everything) == SMALL_ORDER
        assert (await page(client))["next_cursor"] is None
        for params, wanted in FILTER_CASES:
            expected = [i for i in everything if wanted(i)]
            body = await page(client, **params)
            assert body["items"] == expected, params
            assert body["next_cursor"] is None
            # the same matches, one per page
            assert await walk(client, 1, **params) == expected, params
            # and the same in the CSV export
            csv_response = await client.get("/v1/deliveries.csv", params=params)
            assert csv_response.status_code == 200
            rows = list(csv.DictReader(io.StringIO(csv_response.text)))
            assert rows == [as_csv(i) for i in expected], params


def as_csv(item: dict[str, Any]) -> dict[str, str]:
    """A JSON item as the CSV writes it."""
    return {
        k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in item.items()
    }


async def test_delivery_shape_matches_the_single_delivery(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(app, small_reports())
        for item in (await page(client))["items"]:
            assert list(item) == FIELDS
            one = await page(client, f"/v1/deliveries/{item['msgid']}", mobile=item["mobile"])
            assert {k: one[k] for k in FIELDS} == item


@pytest.mark.parametrize(
    "form", ["0922161529", "+886922161529", "886922161529", "922161529", "+886 0922161529"]
)
async def test_mobile_in_every_accepted_form(app_factory: Any, form: str) -> None:
    async with app_factory() as (app, client):
        await seed(app, [report(), report(msgid="other", mobile="0911111111")])
        items = (await page(client, mobile=form))["items"]
        assert keys(items) == [("208217564", "+886922161529")]
        csv_response = await client.get("/v1/deliveries.csv", params={"mobile": form})
        assert len(csv_response.text.splitlines()) == 2


def bulk(count: int, start: dt.datetime, prefix: str = "m") -> list[dict[str, str]]:
    """`count` reports on 5 numbers, 4 per second: many share a done_at, some a msgid."""
    words = itertools.cycle([("DELIVRD", "1"), ("EXPIRED", "0"), ("ENROUTE", "0")])
    out = []
    for n, (word, code) in zip(range(count), words, strict=False):
        done = start + dt.timedelta(seconds=n // 4)
        out.append(
            report(
                msgid=f"{prefix}{n // 2:05d}",
                mobile=f"09{n % 5:08d}",
                ID=f"B{n // 80}",
                type="Now" if n % 3 else "dlv",
                statusstr=word,
                statuscode=code,
                donetime=done.strftime("%Y-%m-%d %H:%M:%S"),
            )
        )
    return out


async def test_cursor_walk_sees_every_delivery_once_while_new_ones_arrive(
    app_factory: Any,
) -> None:
    start = dt.datetime(2026, 11, 20, 8, 0, 0)
    async with app_factory() as (app, client):
        await seed(app, bulk(2500, start))
        expected = set(keys(await walk(client, 1000)))
        assert len(expected) == 2500

        seen: list[dict[str, Any]] = []
        cursor = None
        for n, limit in enumerate(itertools.cycle([700, 400, 1000, 250])):
            extra = {"cursor": cursor} if cursor else {}
            body = await page(client, limit=limit, **extra)
            seen.extend(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            # New deliveries land before, inside and after the rest of the walk, some at
            # exactly the done_at (and msgid) where this page stopped.
            last = body["items"][-1]
            at = dt.datetime.fromisoformat(last["done_at"].replace("Z", "+00:00"))
            fresh = [
                report(msgid=f"new{n}a", mobile="0999999999", donetime="2026-11-21 00:00:00"),
                report(msgid=last["msgid"], mobile="0999999999", donetime=at.isoformat()),
                report(msgid=f"new{n}c", mobile="0999999999", donetime=at.isoformat()),
                report(msgid=f"new{n}d", mobile="0999999999", donetime="2026-11-20 08:05:00"),
                report(msgid=f"new{n}e", mobile="0999999999", donetime="2026-11-20 07:00:00"),
            ]
            for fields in fresh:
                response = await client.post("/callbacks/mboxii", data=fields)
                assert response.status_code == 200, response.text

        walked = keys(seen)
        assert len(walked) == len(set(walked)), "a delivery came twice"
        assert expected <= set(walked), "a delivery that existed at the start was missed"
        # newest first throughout, ties by msgid then mobile
        order = [(-_epoch(i["done_at"]), i["msgid"], i["mobile"]) for i in seen]
        assert order == sorted(order)


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_cursor_belongs_to_its_filters(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(app, small_reports())
        first = await page(client, outcome="failed", status=["EXPIRED", "REJECTD"], limit=1)
        cursor = first["next_cursor"]
        assert cursor
        # the same filters (statuses in another order and case) and another limit: fine
        rest = await page(
            client, outcome="failed", status=["rejectd", "EXPIRED"], limit=5, cursor=cursor
        )
        assert keys(first["items"] + rest["items"]) == [
            ("m1", "+886933333333"),
            ("m2", "+886911111111"),
        ]
        for other in (
            {},
            {"outcome": "delivered", "status": ["EXPIRED", "REJECTD"]},
            {"outcome": "failed", "status": "EXPIRED"},
            {"outcome": "failed", "status": ["EXPIRED", "REJECTD"], "type": "now"},
            {"outcome": "failed", "status": ["EXPIRED", "REJECTD"], "done_to": "2030-01-01"},
        ):
            response = await client.get("/v1/deliveries", params={**other, "cursor": cursor})
            assert response.status_code == 422, other
            assert response.json()["error"] == "invalid_parameters"
            assert [e["field"] for e in response.json()["errors"]] == ["cursor"]

        # a cursor altered anywhere, or signed with another secret, is refused too. (Not
        # its last character: base64 leaves that one's low bits unused, so some changes
        # there decode to the very same signature.)
        def altered(at: int) -> str:
            return cursor[:at] + ("A" if cursor[at] != "A" else "B") + cursor[at + 1 :]

        middle = len(cursor) // 2
        for forged in (altered(0), altered(middle), altered(len(cursor) - 3), cursor[:20], "x"):
            response = await client.get(
                "/v1/deliveries",
                params={"outcome": "failed", "status": ["EXPIRED", "REJECTD"], "cursor": forged},
            )
            assert response.status_code == 422
    async with app_factory(cursor_secret="another secret") as (_, client):
        response = await client.get(
            "/v1/deliveries",
            params={"outcome": "failed", "status": ["EXPIRED", "REJECTD"], "cursor": cursor},
        )
        assert response.status_code == 422


BAD_PARAMETERS = [
    ({"done_from": "yesterday"}, "done_from"),
    ({"done_to": "2026-13-01"}, "done_to"),
    ({"done_from": "2026-11-26T10:00:00+08:00", "done_to": "2026-11-26T02:00:00Z"}, "done_to"),
    ({"done_from": "2026-11-27", "done_to": "2026-11-26"}, "done_to"),
    ({"outcome": "lost"}, "outcome"),
    ({"type": "later"}, "type"),
    ({"type": "Now"}, "type"),
    ({"mobile": "12345"}, "mobile"),
    ({"mobile": "+14155550100"}, "mobile"),
    ({"status": "not-a-word"}, "status"),
    ({"status": ["DELIVRD", "S" * 17]}, "status"),
    ({"msgid": "m" * 65}, "msgid"),
]
LIST_ONLY = [
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "garbage"}, "cursor"),
    ({"cursor": ""}, "cursor"),
]


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [("/v1/deliveries", p, f) for p, f in BAD_PARAMETERS + LIST_ONLY]
    + [("/v1/deliveries.csv", p, f) for p, f in BAD_PARAMETERS],
)
async def test_bad_parameters_are_422(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], field: str
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameters"
    assert [e["field"] for e in body["errors"]] == [field]
    assert all(e["message"] for e in body["errors"])


async def test_limits_at_the_bounds(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(app, bulk(1001, dt.datetime(2026, 11, 20, 8, 0, 0)))
        assert len((await page(client))["items"]) == 100
        assert len((await page(client, limit=1))["items"]) == 1
        full = await page(client, limit=1000)
        assert len(full["items"]) == 1000
        last = await page(client, limit=1000, cursor=full["next_cursor"])
        assert len(last["items"]) == 1
        assert last["next_cursor"] is None


async def test_csv_has_every_match_and_escapes_fields(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(
            app,
            [
                *bulk(230, dt.datetime(2026, 11, 20, 8, 0, 0)),
                report(msgid='a,"b', ID="=1+2", mobile="0911111111"),
                report(msgid="-1+cmd|'/Ccalc'!A0", ID="@SUM(A1)", mobile="0911111111"),
                report(msgid="-42", ID="+7", mobile="0911111111"),
            ],
        )
        response = await client.get("/v1/deliveries.csv")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == 'attachment; filename="deliveries.csv"'
        text = response.content.decode("utf-8")
        lines = text.split("\r\n")
        assert lines[0] == ",".join(FIELDS)
        assert lines[-1] == ""
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert len(rows) == 233
        everything = await walk(client, 1000)
        assert len(rows) == len(everything)
        # (no msgid here starts with a quote but the guarded one)
        assert [(r["msgid"].removeprefix("'"), r["mobile"]) for r in rows] == keys(everything)

        # RFC 4180: the field with a comma and a quote is quoted, its quote doubled
        assert '"a,""b",' in text
        by_msgid = {r["msgid"]: r for r in rows}
        assert by_msgid['a,"b']["batch_id"] == "'=1+2"
        assert by_msgid["'-1+cmd|'/Ccalc'!A0"]["batch_id"] == "'@SUM(A1)"
        # numbers, E.164 and times are written as they are
        assert by_msgid["-42"]["batch_id"] == "+7"
        assert by_msgid["-42"]["mobile"] == "+886911111111"
        assert by_msgid["-42"]["done_at"] == "2003-05-22T05:48:50Z"
        assert by_msgid["-42"]["final"] == "true"
        assert by_msgid["-42"]["inconsistent"] == "false"
        # the JSON keeps the values untouched, and the msgid filter finds the odd one
        found = (await page(client, msgid='a,"b'))["items"]
        assert [(i["msgid"], i["batch_id"]) for i in found] == [('a,"b', "=1+2")]
        for params in ({"outcome": "failed"}, {"status": "ENROUTE", "type": "now"}):
            matches = await walk(client, 1000, **params)
            response = await client.get("/v1/deliveries.csv", params=params)
            rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
            assert len(rows) == len(matches) > 0


async def test_csv_with_no_match_is_the_header_alone(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/deliveries.csv", params={"msgid": "none"})
    assert response.status_code == 200
    assert response.text == ",".join(FIELDS) + "\r\n"


async def test_routes_are_not_confused_with_a_msgid(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(app, [report(msgid="x.csv"), report(msgid="deliveries.csv")])
        assert (await page(client, "/v1/deliveries/x.csv"))["msgid"] == "x.csv"
        assert (await page(client, "/v1/deliveries/deliveries.csv"))["msgid"] == "deliveries.csv"
        assert len((await page(client))["items"]) == 2
        response = await client.get("/v1/deliveries.csv")
        assert response.headers["content-type"].startswith("text/csv")


@pytest.mark.parametrize("path", ["/v1/deliveries", "/v1/deliveries.csv"])
async def test_api_keys_guard_the_list_and_the_export(app_factory: Any, path: str) -> None:
    async with app_factory(api_keys="key-one,key-two") as (_, client):
        response = await client.get(path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == "unauthorized"
        assert (await client.get(path, headers={"X-API-Key": "nope"})).status_code == 401
        for headers in ({"Authorization": "Bearer key-one"}, {"X-API-Key": "key-two"}):
            assert (await client.get(path, headers=headers)).status_code == 200


async def insert_deliveries(app: Any, count: int) -> None:
    """`count` deliveries written straight into their table (the export reads nothing else)."""
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    rows = [
        {
            "msgid": f"{n:09d}",
            "mobile": f"+8869{n % 100_000_000:08d}",
            "batch_id": f"B{n // 80}",
            "type": "now",
            "status": "DELIVRD",
            "statuscode": 1,
            "outcome": "delivered",
            "final": True,
            "inconsistent": False,
            "done_at": base + dt.timedelta(seconds=n),
            "first_received_at": base + dt.timedelta(seconds=n + 1),
            "last_received_at": base + dt.timedelta(seconds=n + 1),
            "reports": 1,
            "report_id": n,
        }
        for n in range(count)
    ]
    async with app.app_state.engine.begin() as connection:
        await connection.execute(Delivery.__table__.insert(), rows)


async def asgi_get(
    app: Any,
    path: str,
    on_chunk: Callable[[bytes], None],
    spec_version: str = "2.4",
    hang_up: asyncio.Event | None = None,
) -> int:
    """GET through the raw ASGI interface, handing each body chunk to `on_chunk` as it is
    sent (httpx's ASGI transport would collect the whole body first). Setting `hang_up`
    makes the client disconnect."""
    status = 0
    done = hang_up or asyncio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            on_chunk(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()
            # let a disconnect listener run, as a real server would between writes
            await asyncio.sleep(0)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return status


async def test_csv_is_streamed_in_chunks_from_a_server_side_cursor(app_factory: Any) -> None:
    count = 20_000
    async with app_factory() as (app, _):
        await insert_deliveries(app, count)
        server_side: list[bool] = []

        def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            context = args[-2]
            if statement.lstrip().upper().startswith("SELECT") and "deliveries" in statement:
                server_side.append(bool(context.execution_options.get("stream_results")))

        event.listen(app.app_state.engine.sync_engine, "before_cursor_execute", spy)
        chunks: list[int] = []
        lines = 0

        def take(chunk: bytes) -> None:
            nonlocal lines
            chunks.append(len(chunk))
            lines += chunk.count(b"\r\n")

        tracemalloc.start()
        try:
            status = await asgi_get(app, "/v1/deliveries.csv", take)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 200
        assert lines == count + 1
        assert server_side == [True]
        # the body leaves in many bounded pieces, never as one block
        assert len([c for c in chunks if c]) >= count // 1000
        assert max(chunks) < sum(chunks) / 10
        # a buffered export would hold all rows (several MB) at once
        # holding all 20,000 rows at once takes about 20 MB; streaming stays near 2 MB
        assert peak < 8_000_000, (peak, sum(chunks))


async def test_openapi_documents_the_list_and_the_export(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    doc = (await client.get("/openapi.json")).json()
    filters = {"mobile", "msgid", "batch_id", "status", "outcome", "type", "done_from", "done_to"}
    for path, names in (
        ("/v1/deliveries", filters | {"limit", "cursor"}),
        ("/v1/deliveries.csv", filters),
    ):
        operation = doc["paths"][path]["get"]
        params = {p["name"]: p for p in operation["parameters"]}
        assert set(params) == names, path
        assert all(p.get("description") for p in params.values()), path
        assert {"200", "401", "422", "503"} <= set(operation["responses"]), path
        error = operation["responses"]["422"]["content"]["application/json"]["schema"]
        assert error["$ref"].endswith("/ValidationErrorRead")
        assert operation["description"]
    listed = doc["paths"]["/v1/deliveries"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"]["$ref"].endswith("/DeliveryPage")
    page_schema = doc["components"]["schemas"]["DeliveryPage"]
    assert page_schema["example"]["items"][0]["done_at"] == "2003-05-22T05:48:50Z"
    exported = doc["paths"]["/v1/deliveries.csv"]["get"]
    example = exported["responses"]["200"]["content"]["text/csv"]["example"]
    assert example.startswith(",".join(FIELDS) + "\r\n")
    assert "formula" in exported["description"]


PLANS = [
    ({}, "ix_deliveries_done_at_msgid_mobile"),
    ({"done_from": "2026-11-20", "done_to": "2026-11-22"}, "ix_deliveries_done_at_msgid_mobile"),
    ({"mobile": "0911111111"}, "ix_deliveries_mobile_done_at_msgid"),
    ({"batch_id": "B1"}, "ix_deliveries_batch_id_done_at_msgid_mobile"),
    ({"status": "EXPIRED"}, "ix_deliveries_status_done_at_msgid_mobile"),
    ({"outcome": "failed"}, "ix_deliveries_outcome_done_at_msgid_mobile"),
    (
        {"outcome": "failed", "done_from": "2026-11-20"},
        "ix_deliveries_outcome_done_at_msgid_mobile",
    ),
    # a number, an ID or a msgid drives the query even beside an outcome or a status
    ({"mobile": "0911111111", "outcome": "failed"}, "ix_deliveries_mobile_done_at_msgid"),
    ({"batch_id": "B1", "status": ["EXPIRED", "DELIVRD"]}, "ix_deliveries_batch_id_"),
    ({"msgid": "m1", "outcome": "failed"}, "pk_deliveries|sqlite_autoindex_deliveries_1"),
]


@pytest.mark.parametrize(("params", "index"), PLANS)
async def test_list_queries_use_the_read_indexes(
    app_factory: Any, params: dict[str, Any], index: str
) -> None:
    async with app_factory() as (app, client):
        await seed(app, small_reports())
        engine = app.app_state.engine
        postgres = engine.dialect.name == "postgresql"
        queries: list[tuple[str, Any]] = []

        def spy(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            if "FROM deliveries" in statement and not statement.startswith("EXPLAIN"):
                queries.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", spy)
        first = await page(client, limit=1, **params)
        if first["next_cursor"]:
            await page(client, limit=1, cursor=first["next_cursor"], **params)
        await client.get("/v1/deliveries.csv", params=params)
        event.remove(engine.sync_engine, "before_cursor_execute", spy)
        assert len(queries) == (3 if first["next_cursor"] else 2)
        for statement, parameters in queries:
            async with engine.begin() as conn:
                if postgres:
                    # a table this small is read whole; ask which index serves the query
                    await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                    await conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
                    explain = "EXPLAIN (COSTS OFF) "
                else:
                    explain = "EXPLAIN QUERY PLAN "
                result = await conn.exec_driver_sql(explain + statement, parameters)
                plan = "\n".join(str(row[-1]) for row in result)
            assert re.search(rf"\b({index})", plan), (params, plan)


@pytest.mark.parametrize("spec_version", ["2.4", "2.3"])
async def test_csv_client_going_away_gives_the_connection_back(
    app_factory: Any, spec_version: str
) -> None:
    async with app_factory() as (app, _):
        await insert_deliveries(app, 3000)
        pool = app.app_state.engine.pool
        idle = pool.checkedout()
        received: list[int] = []
        gone = asyncio.Event()

        def take(chunk: bytes) -> None:
            received.append(len(chunk))
            if len(received) == 2:
                gone.set()
                if spec_version >= "2.4":  # ASGI 2.4: send raises once the client is gone
                    raise OSError("client went away")

        try:
            await asgi_get(app, "/v1/deliveries.csv", take, spec_version, hang_up=gone)
        except Exception as exc:  # Starlette turns the OSError into ClientDisconnect
            assert spec_version >= "2.4", exc
        assert 2 <= len(received) < 3001 // 500
        assert pool.checkedout() == idle
        # and the next export works
        lines = 0

        def count(chunk: bytes) -> None:
            nonlocal lines
            lines += chunk.count(b"\r\n")

        assert await asgi_get(app, "/v1/deliveries.csv", count) == 200
        assert lines == 3001


async def test_list_and_export_answer_503_when_the_database_is_gone(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        await seed(app, [report()])
        async with database_gone(app):
            for path in ("/v1/deliveries", "/v1/deliveries.csv"):
                response = await client.get(path)
                # never a 200 with a truncated file
                assert response.status_code == 503, path
                assert response.json()["error"] == "unavailable"
                assert "retry-after" in response.headers
        assert len((await page(client))["items"]) == 1
