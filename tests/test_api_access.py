"""Who may do what: read keys read, send keys also send and cancel, keys are checked before
any body is read, and /metrics sits behind the same keys unless it is public."""

from __future__ import annotations

import pytest

from app.core.settings import load_settings
from tests.conftest import SEED_REPORT, make_settings, running_app
from tests.fake_gateway import API_KEY, FakeGateway, service

READ_KEY = "read-only-key-0123456789"
SEND = {"x-api-key": API_KEY}
READ = {"x-api-key": READ_KEY}
READ_JSON = {**READ, "content-type": "application/json"}
MESSAGE = {"numbers": ["0912345678"], "text": "hello"}


async def test_a_read_key_reads_but_may_not_send_or_cancel(database_url: str) -> None:
    gateway = FakeGateway()
    async with service(database_url, gateway, api_keys=[READ_KEY]) as (_, client, _gw):
        r = await client.post("/v1/messages", json=MESSAGE, headers=READ)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "forbidden"
        assert (await client.delete("/v1/messages/500", headers=READ)).status_code == 403
        assert gateway.requests == []  # nothing reached the gateway

        sent = await client.post("/v1/messages", json=MESSAGE, headers=SEND)
        assert sent.status_code == 201, sent.text
        batch = sent.json()["batch_id"]
        # Both kinds of key read everything.
        for headers in (READ, SEND):
            assert (await client.get(f"/v1/messages/{batch}", headers=headers)).status_code == 200
            assert (await client.get("/v1/deliveries", headers=headers)).status_code == 200
            assert (await client.get("/v1/rejected", headers=headers)).status_code == 200
        wrong = await client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": "x"})
        assert wrong.status_code == 401


async def test_a_send_key_opens_the_dashboard_too(database_url: str) -> None:
    async with service(database_url) as (_, client, _gw):
        r = await client.post(
            "/dashboard/login",
            data={"key": API_KEY, "next": "/dashboard"},
            headers={"origin": "http://testserver"},
        )
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/dashboard"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/messages"),
        ("DELETE", "/v1/messages/123"),
        ("POST", "/v1/rejected/1/replay"),
        ("POST", "/v1/deliveries"),
        ("GET", "/v1/no-such-route"),
    ],
)
async def test_a_request_without_a_key_is_refused_before_its_body_is_read(
    database_url: str, method: str, path: str
) -> None:
    async with service(database_url, api_keys=[READ_KEY]) as (_, client, gateway):
        for body in (b"{not json", b"\x95\x1d", b'{"numbers": 1}'):
            r = await client.request(
                method,
                path,
                content=body,
                headers={"x-api-key": "", "content-type": "application/json"},
            )
            # Not a 422 or 400 about the body: that would tell a stranger the route exists.
            assert r.status_code == 401, (method, path, body, r.text)
            assert r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        # A read key sending a broken body is told it may not send, not what is wrong with it.
        if method == "POST" and path == "/v1/messages":
            r = await client.post(path, content=b"{not json", headers=READ_JSON)
            assert r.status_code == 403, r.text
        assert gateway.requests == []


async def test_metrics_need_a_key_unless_public(database_url: str) -> None:
    keys = {"api_keys": [READ_KEY]}
    async with running_app(make_settings(database_url, **keys, metrics_public=False)) as (_, c):
        r = await c.get("/metrics")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "mboxii_dlr" not in r.text
        for headers in (READ, {"authorization": f"Bearer {READ_KEY}"}):
            ok = await c.get("/metrics", headers=headers)
            assert ok.status_code == 200
            assert "mboxii_dlr_reports_received_total" in ok.text
        # The operations probes stay open: orchestrators call them without keys.
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        # The document says so.
        document = (await c.get("/openapi.json")).json()
        assert document["paths"]["/metrics"]["get"]["security"]
        assert "security" not in document["paths"]["/healthz"]["get"]
    async with running_app(make_settings(database_url, **keys, metrics_public=True)) as (_, c):
        assert (await c.get("/metrics")).status_code == 200


def test_metrics_are_public_in_development_and_private_in_production() -> None:
    secrets = {"callback_tokens": ["t" * 32], "api_keys": ["k" * 32]}
    assert load_settings(_env_file=None).metrics_open
    assert not load_settings(_env_file=None, env="production", **secrets).metrics_open
    opened = load_settings(_env_file=None, env="production", metrics_public="true", **secrets)
    assert opened.metrics_open


async def test_callbacks_and_open_api_need_no_key_without_keys(database_url: str) -> None:
    async with running_app(make_settings(database_url)) as (_, c):
        assert (await c.post("/callbacks/mboxii", data=SEED_REPORT)).status_code == 200
        assert (await c.get("/v1/deliveries/208217564")).status_code == 200
        document = (await c.get("/openapi.json")).json()
        assert "security" not in document["paths"]["/v1/deliveries"]["get"]


async def test_send_keys_alone_guard_the_reads_too(database_url: str) -> None:
    settings = make_settings(database_url, send_api_keys=[API_KEY])
    async with running_app(settings) as (_, c):
        assert (await c.get("/v1/deliveries")).status_code == 401
        assert (await c.get("/v1/deliveries", headers=SEND)).status_code == 200
