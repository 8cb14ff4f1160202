"""The callback endpoint through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select, text

from app.db.models import Delivery, Rejected, Report
from tests.conftest import SEED_REPORT, report

CB = "/callbacks/mboxii"


async def count(app: Any, model: Any) -> int:
    async with app.app_state.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def delivery(client: httpx.AsyncClient, msgid: str = "208217564", **params: str) -> Any:
    response = await client.get(f"/v1/deliveries/{msgid}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_seed_example_is_acknowledged_and_readable(client: httpx.AsyncClient) -> None:
    r = await client.post(
        CB,
        content=urlencode(SEED_REPORT),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert r.text == "OK"
    assert r.headers["content-type"].startswith("text/plain")
    d = await delivery(client)
    assert d["done_at"] == "2003-05-22T05:48:50Z"
    assert d["mobile"] == "+886922161529"
    assert d["batch_id"] == "123456"
    assert d["type"] == "now"
    assert d["outcome"] == "delivered"
    assert d["reports"] == 1
    assert [h["status"] for h in d["history"]] == ["DELIVRD"]
    assert d["history"][0]["done_at"] == "2003-05-22T05:48:50Z"


@pytest.mark.parametrize("path", [CB, CB + "/"])
async def test_every_content_type_and_get(client: httpx.AsyncClient, path: str) -> None:
    bodies: list[dict[str, Any]] = [
        {"data": report(msgid="form")},
        {"files": {k: (None, v) for k, v in report(msgid="multi").items()}},
        {"json": report(msgid="json")},
        {"params": report(msgid="query"), "content": b""},
    ]
    for kwargs in bodies:
        r = await client.post(path, **kwargs)
        assert r.status_code == 200, (kwargs, r.text)
    r = await client.get(path, params=report(msgid="get"))
    assert r.status_code == 200
    for msgid in ("form", "multi", "json", "query", "get"):
        assert (await delivery(client, msgid))["mobile"] == "+886922161529"


async def test_custom_ack_body(app_factory: Any) -> None:
    async with app_factory(callback_ack="ACK/Jasmin") as (_, client):
        r = await client.post(CB, data=SEED_REPORT)
        assert (r.status_code, r.text) == (200, "ACK/Jasmin")


async def test_tokens_wrong_or_missing_is_404_and_nothing_stored(app_factory: Any) -> None:
    async with app_factory(callback_tokens="old-token,new.token~2") as (app, client):
        for path in (CB, CB + "/", CB + "/wrong", CB + "/new.token~2x", CB + "/old-token/x"):
            r = await client.post(path, data=SEED_REPORT)
            assert r.status_code == 404, path
            assert r.json()["error"] == "not_found"
        # a wrong token is 404 even with a body that would be quarantined
        assert (await client.post(CB + "/nope", content=b"junk")).status_code == 404
        assert await count(app, Report) == 0
        assert await count(app, Rejected) == 0
        for path in (CB + "/old-token", CB + "/new.token~2/"):
            assert (await client.post(path, data=SEED_REPORT)).status_code == 200
            assert (await client.get(path, params=SEED_REPORT)).status_code == 200
        assert await count(app, Report) == 1


async def test_without_tokens_only_the_bare_path(client: httpx.AsyncClient) -> None:
    assert (await client.post(CB + "/anything", data=SEED_REPORT)).status_code == 404


async def test_never_redirects(client: httpx.AsyncClient) -> None:
    for path in (CB, CB + "/", CB + "//"):
        r = await client.post(path, data=SEED_REPORT)
        assert not 300 <= r.status_code < 400


async def test_other_methods_are_405(client: httpx.AsyncClient) -> None:
    r = await client.put(CB, data=SEED_REPORT)
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]


async def test_body_too_large_is_413_even_streamed(app_factory: Any) -> None:
    async with app_factory(max_body_bytes=1000) as (app, client):
        r = await client.post(CB, data={**SEED_REPORT, "pad": "x" * 2000})
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"

        async def chunks() -> Any:
            for _ in range(100):
                yield b"x" * 100

        r = await client.post(
            CB, content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert r.status_code == 413
        assert await count(app, Rejected) == 0


async def test_unsupported_media_type_is_415_and_quarantined(client: httpx.AsyncClient) -> None:
    r = await client.post(CB, content=b"ID=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    body = r.json()
    assert body["error"] == "unsupported_media_type"
    assert isinstance(body["rejected_id"], int)


async def test_invalid_is_422_with_errors_and_quarantined_once(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        bad = report(mobile="02-2345-6789", statuscode="5")
        first = await client.post(CB + "?extra=1", data=bad)
        assert first.status_code == 422
        body = first.json()
        assert body["error"] == "invalid_callback"
        assert {e["field"] for e in body["errors"]} == {"mobile", "statuscode"}
        assert all(set(e) == {"field", "message"} for e in body["errors"])
        for _ in range(4):
            again = await client.post(CB + "?extra=1", data=bad)
            assert again.json()["rejected_id"] == body["rejected_id"]
        async with app.app_state.engine.connect() as conn:
            rows = (await conn.execute(select(Rejected))).all()
        assert len(rows) == 1
        row = rows[0]
        assert row.count == 5
        assert row.reason == "invalid_fields"
        assert row.method == "POST"
        assert row.query == "extra=1"
        assert row.content_type == "application/x-www-form-urlencoded"
        assert row.source_address == "127.0.0.1"
        assert row.body == urlencode(bad).encode()
        assert row.last_seen_at >= row.received_at
        assert await count(app, Report) == 0


async def test_malformed_body_is_422_and_keeps_raw_bytes(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        raw = b'{"ID": "1", \xff'
        r = await client.post(CB, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422
        async with app.app_state.engine.connect() as conn:
            row = (await conn.execute(select(Rejected))).one()
        assert row.reason == "malformed_body"
        assert row.body == raw


async def test_fifty_concurrent_copies_store_one_report(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        spellings = [
            report(),
            report(mobile="+886922161529", donetime="20030522134850"),
            report(mobile="886 922 161 529", donetime="2003-05-22T05:48:50Z", type="NOW"),
            report(mobile="922161529", donetime="2003-05-22 13:48:50", statusstr="delivrd"),
        ]
        results = await asyncio.gather(
            *(client.post(CB, data=spellings[i % len(spellings)]) for i in range(50))
        )
        assert {r.status_code for r in results} == {200}
        assert await count(app, Report) == 1
        assert (await delivery(client))["reports"] == 1


async def test_earlier_report_arriving_late_does_not_replace_state(
    client: httpx.AsyncClient,
) -> None:
    await client.post(CB, data=report(statusstr="DELIVRD", donetime="2003/05/22 13:50:00"))
    await client.post(
        CB, data=report(statusstr="UNDELIV", statuscode="0", donetime="2003/05/22 13:40:00")
    )
    d = await delivery(client)
    assert (d["status"], d["outcome"], d["reports"]) == ("DELIVRD", "delivered", 2)
    assert d["done_at"] == "2003-05-22T05:50:00Z"
    assert [h["status"] for h in d["history"]] == ["DELIVRD", "UNDELIV"]


async def test_enroute_never_replaces_a_final_word(client: httpx.AsyncClient) -> None:
    await client.post(CB, data=report(statusstr="DELIVRD", donetime="2003/05/22 13:00:00"))
    await client.post(
        CB, data=report(statusstr="ENROUTE", statuscode="0", donetime="2003/05/22 14:00:00")
    )
    d = await delivery(client)
    assert (d["status"], d["final"], d["outcome"]) == ("DELIVRD", True, "delivered")


async def test_final_replaces_enroute_even_if_dated_earlier(client: httpx.AsyncClient) -> None:
    await client.post(CB, data=report(statusstr="ENROUTE", donetime="2003/05/22 14:00:00"))
    d = await delivery(client)
    assert (d["final"], d["outcome"]) == (False, "pending")
    await client.post(
        CB, data=report(statusstr="EXPIRED", statuscode="0", donetime="2003/05/22 13:00:00")
    )
    d = await delivery(client)
    assert (d["status"], d["final"], d["outcome"]) == ("EXPIRED", True, "failed")


async def test_later_donetime_wins_between_finals(client: httpx.AsyncClient) -> None:
    await client.post(
        CB, data=report(statusstr="UNDELIV", statuscode="0", donetime="2003/05/22 13:00:00")
    )
    await client.post(CB, data=report(statusstr="DELIVRD", donetime="2003/05/22 13:05:00"))
    d = await delivery(client)
    assert (d["status"], d["done_at"]) == ("DELIVRD", "2003-05-22T05:05:00Z")


async def test_tie_goes_to_the_later_received(client: httpx.AsyncClient) -> None:
    await client.post(CB, data=report(statusstr="UNDELIV", statuscode="0"))
    await client.post(CB, data=report(statusstr="DELIVRD", statuscode="1"))
    assert (await delivery(client))["status"] == "DELIVRD"


async def test_inconsistent_mark_and_outcome_follow_the_word(client: httpx.AsyncClient) -> None:
    await client.post(CB, data=report(msgid="a", statusstr="UNDELIV", statuscode="1"))
    await client.post(CB, data=report(msgid="b", statusstr="DELIVRD", statuscode="0"))
    await client.post(CB, data=report(msgid="c", statusstr="ACCEPTD", statuscode="0"))
    a, b, c = [await delivery(client, m) for m in "abc"]
    assert (a["outcome"], a["inconsistent"]) == ("failed", True)
    assert (b["outcome"], b["inconsistent"]) == ("delivered", True)
    assert (c["outcome"], c["inconsistent"]) == ("failed", False)


async def test_other_batch_id_kept_in_history_delivery_keeps_first(
    client: httpx.AsyncClient,
) -> None:
    await client.post(CB, data=report(statusstr="ENROUTE"))
    await client.post(CB, data=report(ID="999999", donetime="2003/05/22 14:00:00"))
    d = await delivery(client)
    assert d["batch_id"] == "123456"
    assert d["status"] == "DELIVRD"
    assert [h["batch_id"] for h in d["history"]] == ["123456", "999999"]
    metrics = (await client.get("/metrics")).text
    assert "mboxii_dlr_reports_batch_mismatch_total 1.0" in metrics


async def test_json_numbers_and_query_fill(client: httpx.AsyncClient) -> None:
    body = {**report(ID=None), "statuscode": 1, "msgid": 208217564}  # type: ignore[arg-type]
    r = await client.post(CB + "?ID=123456", json=body)
    assert r.status_code == 200
    assert (await delivery(client))["batch_id"] == "123456"


async def test_delivery_404_and_409(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/deliveries/nothing")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    await client.post(CB, data=report(mobile="0912000001"))
    await client.post(CB, data=report(mobile="0912000002"))
    r = await client.get("/v1/deliveries/208217564")
    assert r.status_code == 409
    assert r.json() == {
        "error": "ambiguous",
        "message": "several deliveries share this msgid; pass mobile",
        "mobiles": ["+886912000001", "+886912000002"],
    }
    for form in ("0912000002", "+886912000002", "886912000002", "912000002"):
        assert (await delivery(client, mobile=form))["mobile"] == "+886912000002"
    assert (await client.get("/v1/deliveries/208217564", params={"mobile": "x"})).status_code == 422


@pytest.mark.parametrize(
    "dead_url",
    [
        # a file with no tables: every write fails as an outage would
        "sqlite:///{tmp}/never-migrated.db",
        pytest.param("postgresql://postgres@127.0.0.1:1/none", marks=pytest.mark.postgres),
    ],
)
async def test_503_when_the_database_is_gone(
    dead_url: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import make_settings, running_app

    settings = make_settings(dead_url.format(tmp=tmp_path), ingest_timeout_seconds=5)
    async with running_app(settings) as (_, client):
        r = await client.post(CB, data=SEED_REPORT)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"] == "unavailable"
        # nor can a rejected request be quarantined: 503, so the gateway retries it
        r = await client.post(CB, data=report(mobile="bad"))
        assert r.status_code == 503
        assert (await client.get("/readyz")).status_code == 503
    # the app said so when it started, naming the database without its password
    [started] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][:1]
    assert started.startswith("database ")
    assert "/readyz answers 503" in started


async def test_readyz_503_when_not_migrated(tmp_path: Any) -> None:
    from tests.conftest import make_settings, running_app

    async with running_app(make_settings(f"sqlite:///{tmp_path}/empty.db")) as (_, client):
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_concurrent_load_is_group_committed(app_factory: Any) -> None:
    async with app_factory(ingest_batch_delay_ms=20) as (app, client):
        results = await asyncio.gather(
            *(client.post(CB, data=report(msgid=f"m{i}")) for i in range(200))
        )
        assert {r.status_code for r in results} == {200}
        assert await count(app, Delivery) == 200
        text_metrics = (await client.get("/metrics")).text
        line = next(
            ln
            for ln in text_metrics.splitlines()
            if ln.startswith("mboxii_dlr_ingest_batch_size_count")
        )
        batches = float(line.split()[-1])
        assert batches < 200  # batches larger than one report


async def test_poison_report_fails_alone(app_factory: Any, database_url: str) -> None:
    async with app_factory(ingest_batch_delay_ms=50) as (app, client):
        # A rule the database enforces and validation does not know of.
        async with app.app_state.engine.begin() as conn:
            if database_url.startswith("postgresql"):
                await conn.execute(
                    text("ALTER TABLE reports ADD CONSTRAINT no_poison CHECK (msgid <> 'poison')")
                )
            else:
                await conn.execute(
                    text(
                        "CREATE TRIGGER no_poison BEFORE INSERT ON reports "
                        "WHEN NEW.msgid = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END"
                    )
                )
        try:
            msgids = [f"good{i}" for i in range(20)]
            msgids.insert(7, "poison")
            results = await asyncio.gather(*(client.post(CB, data=report(msgid=m)) for m in msgids))
            codes = dict(zip(msgids, (r.status_code for r in results), strict=True))
            assert codes.pop("poison") == 500
            assert set(codes.values()) == {200}
            assert await count(app, Report) == 20
            poison = results[7].json()
            assert poison["error"] == "storage_refused"
            assert isinstance(poison["rejected_id"], int)
        finally:
            async with app.app_state.engine.begin() as conn:
                if database_url.startswith("postgresql"):
                    await conn.execute(text("ALTER TABLE reports DROP CONSTRAINT no_poison"))
                else:
                    await conn.execute(text("DROP TRIGGER no_poison"))


async def test_openapi_documents_the_callback(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    ops = spec["paths"]["/callbacks/mboxii/{token}"]
    assert set(ops) == {"get", "post"}
    fields = ["ID", "msgid", "type", "mobile", "donetime", "statuscode", "statusstr"]
    get_params = {p["name"]: p["in"] for p in ops["get"]["parameters"]}
    assert get_params == {"token": "path", **dict.fromkeys(fields, "query")}
    bodies = ops["post"]["requestBody"]["content"]
    assert set(bodies) == {
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json",
    }
    for body in bodies.values():
        assert list(body["schema"]["properties"]) == fields
        assert body["example"] == SEED_REPORT
    for op in ops.values():
        responses = op["responses"]
        assert {"200", "403", "404", "413", "415", "422", "500", "503"} == set(responses)
        assert list(responses["200"]["content"]) == ["text/plain"]
        rejected = responses["422"]["content"]["application/json"]["schema"]["$ref"]
        assert rejected == "#/components/schemas/CallbackRejectedRead"
    assert spec["components"]["schemas"]["CallbackRejectedRead"]["required"] == [
        "error",
        "errors",
        "rejected_id",
    ]


async def test_every_callback_answer_is_the_endpoints_and_documented(app_factory: Any) -> None:
    # The documented routes are never reached: the callback endpoint answers first (FastAPI's
    # route would validate the query itself, and fails loudly if ever called).
    async with app_factory(callback_tokens=["tok-1"], max_body_bytes=1024) as (_, client):
        spec = (await client.get("/openapi.json")).json()["paths"]["/callbacks/mboxii/{token}"]
        url = f"{CB}/tok-1"
        answers = {
            "post": [
                await client.post(url, data=SEED_REPORT),
                await client.post(f"{CB}/wrong", data=SEED_REPORT),
                await client.post(url, content=b"x" * 2048),
                await client.post(url, content=b"<a/>", headers={"content-type": "text/xml"}),
                await client.post(url, data=report(mobile="bad")),
                await client.post(url, json=report(msgid="json")),
            ],
            "get": [
                await client.get(url, params=report(msgid="get")),
                await client.get(url),
            ],
        }
        for method, responses in answers.items():
            for r in responses:
                documented = spec[method]["responses"][str(r.status_code)]
                media = r.headers["content-type"].split(";")[0]
                assert media in documented["content"], (method, r.status_code, media)
        statuses = {m: [r.status_code for r in rs] for m, rs in answers.items()}
        assert statuses == {"post": [200, 404, 413, 415, 422, 200], "get": [200, 422]}
        # the endpoint's own 422 (quarantined), not FastAPI's parameter validation
        assert answers["get"][1].json()["error"] == "invalid_callback"
        assert answers["post"][0].text == "OK"
    async with app_factory(callback_networks="10.0.0.0/8") as (_, client):
        r = await client.post(CB, data=SEED_REPORT)
        assert r.status_code == 403
        assert "application/json" in spec["post"]["responses"]["403"]["content"]


async def test_sequential_callbacks_are_each_committed_without_waiting_for_company(
    app_factory: Any,
) -> None:
    # A lone report must not wait for a batch to fill (a writer that waited for company or
    # for a finished batch's bookkeeping answered these with the 503 of its timeout).
    async with app_factory(ingest_timeout_seconds=2) as (app, client):
        for i in range(10):
            r = await client.post(CB, data=report(msgid=f"seq{i}"))
            assert r.status_code == 200, r.text
            r = await client.post(CB, data=report(msgid=f"seq{i}"))
            assert r.status_code == 200, r.text
        assert await count(app, Report) == 10
