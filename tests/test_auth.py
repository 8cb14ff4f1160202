"""API keys guard /v1; the callback and operations paths stay open."""

from __future__ import annotations

from typing import Any

from tests.conftest import SEED_REPORT
from tests.helpers import database_gone


async def test_api_keys(app_factory: Any) -> None:
    async with app_factory(api_keys="key-one,key-two") as (_, client):
        r = await client.get("/v1/deliveries/208217564")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"] == "unauthorized"
        bad = {"Authorization": "Bearer nope"}
        assert (await client.get("/v1/deliveries/x", headers=bad)).status_code == 401
        assert (await client.get("/v1/deliveries/x", headers={"X-API-Key": ""})).status_code == 401
        assert (await client.post("/callbacks/mboxii", data=SEED_REPORT)).status_code == 200
        for headers in (
            {"Authorization": "Bearer key-one"},
            {"X-API-Key": "key-two"},
            {"authorization": "bearer key-two"},
        ):
            r = await client.get("/v1/deliveries/208217564", headers=headers)
            assert r.status_code == 200, headers
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_reads_answer_503_when_the_database_is_gone(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        async with database_gone(app):
            r = await client.get("/v1/deliveries/208217564")
            assert r.status_code == 503
            assert r.json()["error"] == "unavailable"
            assert "retry-after" in r.headers
            r = await client.get("/v1/batches/123456")
            assert r.status_code == 503
        assert (await client.get("/v1/deliveries/208217564")).status_code == 404
