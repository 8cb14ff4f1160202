"""CORS for browser dashboards: off by default, preflights without a key, callbacks untouched."""

from __future__ import annotations

from typing import Any

from tests.conftest import SEED_REPORT

DASHBOARD = "https://dash.example.com"
PREFLIGHT = {
    "Origin": DASHBOARD,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization, x-api-key",
}


def cors_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def test_no_cors_headers_by_default(app_factory: Any) -> None:
    async with app_factory() as (_, client):
        response = await client.get("/v1/deliveries", headers={"Origin": DASHBOARD})
        assert response.status_code == 200
        assert cors_headers(response) == {}
        response = await client.options("/v1/deliveries", headers=PREFLIGHT)
        assert response.status_code == 405
        assert cors_headers(response) == {}


async def test_preflight_and_answers_for_a_configured_origin(app_factory: Any) -> None:
    origins = f"{DASHBOARD}, https://ops.example.com"
    async with app_factory(cors_origins=origins, api_keys="k1") as (_, client):
        for path in ("/v1/deliveries", "/v1/deliveries.csv", "/v1/deliveries/208217564"):
            # browsers send the preflight without the key; it must pass
            response = await client.options(path, headers=PREFLIGHT)
            assert response.status_code == 200, path
            headers = cors_headers(response)
            assert headers["access-control-allow-origin"] == DASHBOARD
            methods = {m.strip() for m in headers["access-control-allow-methods"].split(",")}
            assert {"GET", "POST", "DELETE", "OPTIONS"} <= methods
            allowed = {
                h.strip().lower() for h in headers["access-control-allow-headers"].split(",")
            }
            assert {"authorization", "x-api-key", "content-type"} <= allowed

        response = await client.get(
            "/v1/deliveries", headers={"Origin": DASHBOARD, "X-API-Key": "k1"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        # the dashboard can read why it was refused
        response = await client.get("/v1/deliveries", headers={"Origin": DASHBOARD})
        assert response.status_code == 401
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        assert "www-authenticate" in response.headers["access-control-expose-headers"].lower()

        other = {**PREFLIGHT, "Origin": "https://evil.example.com"}
        response = await client.options("/v1/deliveries", headers=other)
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        response = await client.get(
            "/v1/deliveries", headers={"Origin": "https://evil.example.com", "X-API-Key": "k1"}
        )
        assert "access-control-allow-origin" not in response.headers


async def test_callback_path_is_untouched_by_cors(app_factory: Any) -> None:
    async with app_factory(cors_origins=DASHBOARD) as (_, client):
        response = await client.post(
            "/callbacks/mboxii", data=SEED_REPORT, headers={"Origin": DASHBOARD}
        )
        assert (response.status_code, response.text) == (200, "OK")
        assert cors_headers(response) == {}
        # the callback answers a preflight itself: it is not for browsers
        response = await client.options("/callbacks/mboxii", headers=PREFLIGHT)
        assert response.status_code == 405
        assert cors_headers(response) == {}
