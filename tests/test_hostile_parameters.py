"""Hostile values in every parameter of every dashboard and /v1 route, on both databases:
huge numbers, NUL and other control characters, very long text, traversal, SQL. Whatever
comes, the answer is never a 5xx (a page for people, JSON for programs)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
from fastapi.routing import APIRoute, iter_route_contexts

from tests.conftest import report
from tests.fake_gateway import API_KEY, service

HOSTILE = [
    "99999999999999999999",
    "9223372036854775808",
    "-9223372036854775809",
    "-1",
    "0",
    "1e308",
    "NaN",
    "",
    " ",
    "\x00",
    "x\x00y",
    "\x01\x7f\x85",
    "\r\nSet-Cookie: x=1",
    "../../../etc/passwd",
    "%00",
    "%",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "‮😀",
    "A" * 5000,
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+14:00",
]
# Routes that only redirect or serve fixed files take their parameters as they are; they are
# requested all the same. POST routes get a body of the same values.
SAMPLE_PATH_VALUE = "208217564"


def _params(dependant: Any, kind: str) -> Iterator[Any]:
    yield from getattr(dependant, kind)
    for sub in dependant.dependencies:
        yield from _params(sub, kind)


def routes(app: Any) -> Iterator[tuple[str, str, list[str], list[str]]]:
    """(method, path template, path parameters, query parameters) of every dashboard and
    /v1 route, from the application itself so new routes are covered as they land."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        if not (route.path.startswith("/dashboard") or route.path.startswith("/v1")):
            continue
        path_params = sorted({p.alias for p in _params(route.dependant, "path_params")})
        query_params = sorted({p.alias for p in _params(route.dependant, "query_params")})
        for method in sorted(route.methods - {"HEAD"}):
            yield method, route.path, path_params, query_params


def fill(template: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m[1].split(":")[0]
        return quote(values.get(name, SAMPLE_PATH_VALUE), safe="")

    return re.sub(r"\{([^}]+)\}", one, template)


async def log_in(client: httpx.AsyncClient) -> str:
    """Log the client in to the dashboard; the session's CSRF token."""
    r = await client.post(
        "/dashboard/login", data={"key": API_KEY}, headers={"origin": "http://testserver"}
    )
    assert r.status_code == 303, r.text
    page = (await client.get("/dashboard")).text
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "the page carries the session's CSRF token"
    return m[1]


def assert_answered(r: httpx.Response, where: object) -> None:
    assert r.status_code < 500, (where, r.status_code, r.text[:300])
    kind = r.headers.get("content-type", "")
    if r.request.url.path.startswith("/dashboard") and r.status_code in (400, 422):
        # A page refusing a parameter is a page for people, not a JSON error.
        assert kind.startswith(("text/html", "text/plain")), (where, kind, r.text[:200])


async def call(
    client: httpx.AsyncClient, method: str, url: str, query: dict[str, str], csrf: str
) -> httpx.Response:
    if method == "POST":
        return await client.post(
            url, params=query, data={"csrf": csrf}, headers={"origin": "http://testserver"}
        )
    return await client.request(method, url, params=query)


async def test_hostile_values_in_every_parameter_never_get_a_5xx(database_url: str) -> None:
    async with service(database_url, callback_tokens=[]) as (app, client, _):
        for body in (report(), report(mobile="x")):
            await client.post("/callbacks/mboxii", data=body)
        csrf = await log_in(client)
        seen = set()
        for method, template, path_params, query_params in routes(app):
            seen.add(template)
            for value in HOSTILE:
                for name in path_params:
                    url = fill(template, {name: value})
                    r = await call(client, method, url, {}, csrf)
                    assert_answered(r, (method, template, name, value))
                for name in query_params:
                    url = fill(template, {})
                    r = await call(client, method, url, {name: value}, csrf)
                    assert_answered(r, (method, template, name, value))
        assert {"/dashboard/rejected", "/dashboard/deliveries/{msgid:path}"} <= seen
        assert "/v1/messages/{batch_id}" in seen
        # Still serving, nothing broken.
        assert (await client.get("/dashboard")).status_code == 200
        assert (await client.get("/v1/deliveries/208217564")).status_code == 200


def random_values(count: int, seed: int = 13) -> list[str]:
    """Random text (control characters, any plane, no surrogates) and random huge numbers."""
    rng = random.Random(seed)
    values = []
    for _ in range(count):
        length = rng.choice([1, 2, 5, 20, 80])
        text = "".join(
            chr(
                rng.choice(
                    [
                        rng.randrange(0, 0x80),
                        rng.randrange(0x80, 0xD800),
                        rng.randrange(0xE000, 0x110000),
                    ]
                )
            )
            for _ in range(length)
        )
        values += [text, str(rng.randrange(-(2**70), 2**70))]
    return values


async def test_random_values_in_every_dashboard_parameter(database_url: str) -> None:
    async with service(database_url, callback_tokens=[]) as (app, client, _):
        csrf = await log_in(client)
        for method, template, path_params, query_params in routes(app):
            if not template.startswith("/dashboard"):
                continue
            for value in random_values(30):
                for name in path_params:
                    r = await call(client, method, fill(template, {name: value}), {}, csrf)
                    assert_answered(r, (method, template, name, value))
                for name in query_params:
                    r = await call(client, method, fill(template, {}), {name: value}, csrf)
                    assert_answered(r, (method, template, name, value))
