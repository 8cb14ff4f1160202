"""Hostile reads, driven by the OpenAPI document so new endpoints are covered as they land:
schemathesis over every read operation, and SQL fragments in every string parameter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveServer, free_port, report
from tests.helpers import async_table_counts

CB = "/callbacks/mboxii"
KEY = "read-api-key-123456"
AUTH = {"x-api-key": KEY}
READ_PATHS = r"^/v1/|^/healthz$|^/readyz$"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SEEDED = [
    report(),
    report(msgid="shared", mobile="0912345678", statusstr="ENROUTE", statuscode="0"),
    report(msgid="shared", mobile="0987654321", statusstr="UNDELIV", statuscode="0"),
    report(msgid="208217565", type="dlv", donetime="2026-11-25 10:00:00"),
]
# A gateway account, so the sending paths exist too; the gateway itself never answers.
GATEWAY = {
    "mboxii_cid": "account-1",
    "mboxii_cpw": "password-1",
    "mboxii_base_url": f"http://127.0.0.1:{free_port()}/api/",
    "public_url": "https://dlr.example.com",
}
SEEDED_IDS = ("208217564", "208217565", "shared", "123456", "+886922161529", "0922161529")


def seed_over_http(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for body in SEEDED:
            assert client.post(CB, data=body).status_code == 200
        assert client.post(CB, data=report(mobile="x")).status_code == 422


@pytest.mark.slow
def test_every_read_operation_answers_by_its_schema(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(
        DLR_SEND_API_KEYS=KEY, **{f"DLR_{k.upper()}": v for k, v in GATEWAY.items()}
    )
    seed_over_http(server.url)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json").include(
        method="GET", path_regex=READ_PATHS
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    expected = {"GET /healthz", "GET /readyz", "GET /v1/deliveries/{msgid}"}
    assert expected | {"GET /v1/messages/{batch_id}"} <= labels, labels
    calls: dict[str, int] = {}
    for operation in operations:
        run_operation(operation, server.url, calls)
    assert all(calls.values()), calls


def run_operation(operation: Any, base_url: str, calls: dict[str, int]) -> None:
    calls[operation.label] = 0

    @settings(
        max_examples=30,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def call(case: Any) -> None:
        response = case.call(base_url=base_url, headers=AUTH, timeout=30)
        calls[operation.label] += 1
        case.validate_response(response, checks=CHECKS)

    call()


FRAGMENTS = [
    "' OR 1=1 --",
    '"; DROP TABLE reports; --',
    "1; DELETE FROM deliveries",
    "') OR ('1'='1",
    "1' UNION SELECT NULL, NULL --",
    "\\' OR 1=1 --",
    "%",
    "_",
    "%' OR '%'='",
    "*",
    "$1",
    "?",
    ":msgid",
    "NULL",
    "' || (SELECT 1) || '",
    "x\x00y",
    "‮'; --",
]


def _string_like(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "string":
        return True
    if schema.get("type") == "array":
        return _string_like(schema.get("items", {}))
    return any(_string_like(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def string_parameters(spec: dict[str, Any]) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
    """(path, parameters, name of a string parameter) of every read operation under /v1."""
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/") or "get" not in item:
            continue
        parameters = [p for p in item["get"].get("parameters", []) if p["in"] in ("path", "query")]
        for p in parameters:
            if _string_like(p.get("schema", {})):
                yield path, parameters, p["name"]


def _request(path: str, parameters: list[dict[str, Any]], target: str, value: str) -> Any:
    query = {}
    for p in parameters:
        if p["name"] == target:
            given = value
        elif p["in"] == "path":
            given = "nothing-here"
        elif p.get("required"):
            examples = p.get("examples") or p.get("schema", {}).get("examples") or ["x"]
            given = examples[0] if isinstance(examples, list) else next(iter(examples.values()))
        else:
            continue
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", quote(str(given), safe=""))
        else:
            query[p["name"]] = given
    return path, query


async def test_sql_fragments_in_every_string_parameter(app_factory: Any, database_url: str) -> None:
    async with app_factory(send_api_keys=KEY, **GATEWAY) as (app, client):
        client.headers.update(AUTH)
        for body in SEEDED:
            assert (await client.post(CB, data=body)).status_code == 200
        before = await async_table_counts(database_url)
        targets = list(string_parameters(app.openapi()))
        assert ("/v1/deliveries/{msgid}", "msgid") in {(p, n) for p, _, n in targets}
        for path, parameters, name in targets:
            for fragment in FRAGMENTS:
                url, query = _request(path, parameters, name, fragment)
                r = await client.get(url, params=query)
                where = (path, name, fragment, r.status_code, r.text[:200])
                assert r.status_code in (200, 404, 422), where
                assert r.headers["content-type"].split(";")[0] in ("application/json", "text/csv")
                if r.status_code == 200:
                    # an empty result: nothing seeded comes back
                    assert not any(s in r.text for s in SEEDED_IDS), where
                    if r.headers["content-type"].startswith("application/json"):
                        body = r.json()
                        if "items" in body:
                            assert body["items"] == [], where
        # the tables are all there, untouched, and still answer
        assert await async_table_counts(database_url) == before
        assert (await client.get("/v1/deliveries/208217564")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
