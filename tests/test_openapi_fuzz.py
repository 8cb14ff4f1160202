"""The OpenAPI document says exactly what the server accepts: schemathesis, with every check,
over every operation (POST and DELETE too, a gateway account configured against a scripted
gateway), in every phase (examples, coverage, fuzzing, and the stateful phase that follows
the document's links), with no failure. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.checks import CheckContext
from schemathesis.engine import Status, events, from_schema
from schemathesis.python.asgi import shutdown_lifespans

from app.db.throttle import KeyThrottle
from app.main import create_app
from tests.conftest import make_settings, report, running_app
from tests.fake_gateway import ACCOUNT, API_KEY, FakeGateway

READ_KEY = "read-only-key-0123456789"
STATUS_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
CALLBACK = "/callbacks/mboxii/tok-1"
EXAMPLES = 15  # per operation and phase
STATEFUL_RUNS = 10  # scenarios of the stateful phase, of up to 20 steps each
# Rules a JSON Schema cannot state: what a value means next to another one (a range that
# ends before it starts, a number spelt twice two ways), next to the clock (a schedule time
# in the past), or next to the server's secret (a cursor's signature). A schema-valid
# request may break them; the answer is then a 422 naming exactly this field and rule.
BEYOND_SCHEMA: dict[str, list[tuple[str, str]]] = {
    "GET /v1/deliveries": [
        ("cursor", "is not a cursor"),
        ("cursor", "belongs to other filters"),
        ("done_to", "must be later than done_from"),
    ],
    "GET /v1/deliveries.csv": [("done_to", "must be later than done_from")],
    "GET /v1/rejected": [("cursor", "is not a cursor"), ("cursor", "belongs to other filters")],
    "GET /v1/numbers": [
        ("cursor", "is not a cursor"),
        ("cursor", "belongs to other filters"),
        ("last_done_to", "must be later than last_done_from"),
    ],
    "GET /v1/numbers.csv": [("last_done_to", "must be later than last_done_from")],
    "GET /v1/suppressions": [
        ("cursor", "is not a cursor"),
        ("cursor", "belongs to other filters"),
    ],
    "GET /v1/stats": [
        ("from", "must be before to"),
        ("interval", "buckets"),
        ("from", "the range must lie within"),
    ],
    "GET /v1/subscriptions": [("cursor", "is not a cursor"), ("cursor", "belongs to other")],
    "GET /v1/events": [("cursor", "is not a cursor"), ("cursor", "belongs to other filters")],
    # What a URL must be (scheme, host, no user info, printable) is more than its schema says.
    "POST /v1/subscriptions": [("url", "")],
    "PATCH /v1/subscriptions/{id}": [("url", "")],
    "POST /v1/messages": [
        ("status_callback", ""),
        ("send_at", "must be in the future"),
        ("send_at", "must be at most ten years ahead"),
        ("send_at", "must fall on a 5-minute step"),
        (r"numbers\.\d+", "the same number as"),
        ("text", "characters; "),
        ("text", "English text may hold only ASCII"),
    ],
}


# A 422 about what is stored, not about the request: a quarantined request that still fails
# validation when replayed; a send whose every number has been suppressed meanwhile.
ABOUT_STORED_DATA = {
    "POST /v1/rejected/{id}/replay": "invalid_callback",
    "POST /v1/messages": "all_numbers_suppressed",
}


def beyond_schema(operation: str, errors: list[dict[str, str]]) -> bool:
    rules = BEYOND_SCHEMA.get(operation, [])
    return bool(errors) and all(
        any(
            re.fullmatch(field, e.get("field", "")) and text in e.get("message", "")
            for field, text in rules
        )
        for e in errors
    )


@schemathesis.check
def valid_data_is_accepted(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except for a 422 that names only rules beyond any schema."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status in (401, 403, 404, 409, 429) or status >= 500:
        return None  # not_a_server_error judges the 5xx
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    if not isinstance(body, dict):
        body = {}
    label = case.operation.label
    if status == 422 and (
        beyond_schema(label, body.get("errors", []))
        or body.get("error") == ABOUT_STORED_DATA.get(label)
    ):
        return None
    raise AssertionError(
        f"{label}: schema-valid request refused with {status}: {response.text[:500]}"
    )


@dataclass
class Run:
    failures: list[str] = field(default_factory=list)
    #: how often each (phase, operation, status) was seen
    seen: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    checks: set[str] = field(default_factory=set)
    #: every operation of the document, as `METHOD /path`
    operations: set[str] = field(default_factory=set)


def run_schemathesis(database_url: str) -> Run:
    """Every phase of schemathesis over the whole document."""
    gateway = FakeGateway()
    settings = make_settings(
        database_url,
        **ACCOUNT,
        api_keys=[READ_KEY],
        send_rate=100_000,
        metrics_public=False,
        reconcile_after="30d",
        # Subscriptions to whatever URL it makes up: no name looked up, nothing sent.
        webhook_allow_private=True,
        webhook_dispatch=False,
        status_callback_secret=STATUS_SECRET,
    )
    asyncio.run(seed(settings))
    app = create_app(settings, gateway_transport=gateway.transport())
    unthrottled(app)
    config = schemathesis.Config.from_dict(
        {
            "headers": {"X-API-Key": API_KEY},
            # No cache on disk: every run starts from the document alone, and leaves nothing.
            "cache": {"enabled": False},
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            # Every check, with positive_data_acceptance replaced by valid_data_is_accepted.
            "checks": {"enabled": True, "positive_data_acceptance": {"enabled": False}},
            "phases": {
                "stateful": {"max-steps": 20, "generation": {"max-examples": STATEFUL_RUNS}}
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    run = Run()
    run.operations = {
        f"{method.upper()} {path}"
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    failures, seen, checks_run = run.failures, run.seen, run.checks
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                for case_id, interaction in event.recorder.interactions.items():
                    if interaction.response is not None:
                        label = event.recorder.cases[case_id].value.operation.label
                        seen[(event.phase.value, label, interaction.response.status_code)] += 1
                for case_id, checks in event.recorder.checks.items():
                    for check in checks:
                        checks_run.add(check.name)
                        if check.status == Status.FAILURE and check.failure_info is not None:
                            case = event.recorder.cases[case_id].value
                            failures.append(
                                f"[{event.phase.value}] {check.name}: "
                                f"{check.failure_info.failure.message[:400]}\n"
                                f"    {case.method} {case.formatted_path} "
                                f"query={case.query} body={case.body!r:.300}"
                            )
            elif isinstance(event, events.NonFatalError | events.FatalError):
                failures.append(f"error: {event!r}")
    finally:
        shutdown_lifespans()
    return run


def unthrottled(app: Any) -> None:
    """Let refused keys go uncounted: schemathesis sends wrong and missing keys on purpose
    (ignored_auth), always from the same address, which the key throttle would soon lock out
    of every operation. The throttle has tests of its own (tests/test_security.py)."""
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with started(app):
            app.app_state.key_throttle = KeyThrottle(app.app_state.engine, allowed=1_000_000)
            yield

    app.router.lifespan_context = lifespan


async def seed(settings: Any) -> None:
    """Reports and a quarantined request, so lists and links have something to follow."""
    async with running_app(settings) as (_, client):
        for body in (
            report(),
            report(msgid="208217565", mobile="0912345678", statusstr="UNDELIV", statuscode="0"),
            report(mobile="x"),
        ):
            assert (await client.post(CALLBACK, data=body)).status_code in (200, 422)


def test_every_operation_answers_exactly_as_the_document_says(database_url: str) -> None:
    run = run_schemathesis(database_url)
    assert not run.failures, "\n".join(dict.fromkeys(run.failures))
    # Every operation was called, by every check schemathesis has...
    assert run.operations == {label for _, label, _ in run.seen}
    assert {"POST /v1/messages", "DELETE /v1/messages/{batch_id}", "GET /metrics"} <= (
        run.operations
    )
    assert {
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "valid_data_is_accepted",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
        "use_after_free",
        "ensure_resource_availability",
    } <= run.checks
    # ...and the stateful phase followed the links to sends made and rows listed.
    stateful = {(label, status) for phase, label, status in run.seen if phase == "stateful"}
    assert ("GET /v1/messages/{batch_id}", 200) in stateful
    assert any(label == "DELETE /v1/messages/{batch_id}" for label, _ in stateful)
    assert any(label == "POST /v1/rejected/{id}/replay" for label, _ in stateful)
