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


async def test_refused_keys_on_v1_lock_the_address_even_for_a_right_key(
    app_factory: Any,
) -> None:
    async with app_factory(api_keys="key-one,key-two", trusted_proxies="127.0.0.1/32") as (
        app,
        client,
    ):
        throttle = app.app_state.key_throttle
        guesser = {"x-forwarded-for": "203.0.113.50"}
        for _ in range(throttle.allowed + 5):  # asking without a key guesses nothing
            assert (await client.get("/v1/stats", headers=guesser)).status_code == 401
        for i in range(throttle.allowed):
            r = await client.get("/v1/stats", headers={**guesser, "x-api-key": f"guess-{i}"})
            assert r.status_code == 401
        r = await client.get("/v1/stats", headers={**guesser, "authorization": "Bearer key-one"})
        assert r.status_code == 429
        assert r.json()["error"] == "too_many_requests"
        assert 0 < int(r.headers["retry-after"]) <= throttle.window
        other = {"x-forwarded-for": "198.51.100.50", "x-api-key": "key-one"}
        assert (await client.get("/v1/stats", headers=other)).status_code == 200
        schema = (await client.get("/openapi.json")).json()
        assert "429" in schema["paths"]["/v1/stats"]["get"]["responses"]


async def test_the_key_throttle_counts_across_processes(app_factory: Any) -> None:
    keys = {"api_keys": "key-one", "trusted_proxies": "127.0.0.1/32"}
    async with app_factory(**keys) as (one, a), app_factory(**keys) as (two, b):
        now = [10_000.0]
        for app in (one, two):
            app.app_state.key_throttle.clock = lambda: now[0]
        guesser = {"x-forwarded-for": "203.0.113.51"}
        right = {**guesser, "x-api-key": "key-one"}
        assert (await a.get("/v1/stats", headers=right)).status_code == 200
        allowed = one.app_state.key_throttle.allowed
        for i in range(allowed):  # the guesses spread over two processes
            client = a if i % 2 else b
            r = await client.get("/v1/stats", headers={**guesser, "x-api-key": f"guess-{i}"})
            assert r.status_code == 401
        # the process that saw the last guess refuses at once
        assert (await a.get("/v1/stats", headers=right)).status_code == 429
        # the other one read the address as free a moment ago; once what it read is older
        # than the cache's few seconds, it refuses too
        now[0] += two.app_state.key_throttle.cache_seconds
        assert (await b.get("/v1/stats", headers=right)).status_code == 429
