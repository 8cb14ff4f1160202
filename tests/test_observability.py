"""Metrics, request ids and logs: what an operator sees, and what must never show up in it."""

from __future__ import annotations

import gc
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.logging import REQUEST_ID, ConsoleFormatter, JsonFormatter
from app.core.mobiles import mask_numbers
from tests.conftest import SEED_REPORT, LiveServer, report

TOKEN = "tok-Observability_1"
# Everything of the seed report that is a number, an id or a secret.
SECRETS = (TOKEN, "208217564", "123456", "0922161529", "922161529", "+886922161529")


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Our JSON format on a handler of its own; returns the lines written so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("mboxii_dlr")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    found = [v for n, lbl, v in samples(text) if n == name and labels.items() <= lbl.items()]
    return sum(found)


async def test_http_metrics_are_labelled_by_route_template(
    app_factory: Callable[..., Any],
) -> None:
    async with app_factory(callback_tokens=[TOKEN]) as (_, client):
        assert (
            await client.post(f"/callbacks/mboxii/{TOKEN}", data=SEED_REPORT)
        ).status_code == 200
        assert (
            await client.post(f"/callbacks/mboxii/{TOKEN}/", data=SEED_REPORT)
        ).status_code == 200
        assert (await client.get("/callbacks/mboxii/wrong-token")).status_code == 404
        assert (await client.get("/v1/deliveries/208217564")).status_code == 200
        assert (await client.get("/v1/deliveries/unknown-id")).status_code == 404
        assert (await client.get("/no/such/0922161529")).status_code == 404
        assert (await client.request("BREW", "/healthz")).status_code == 405
        text = (await client.get("/metrics")).text

    requests = "mboxii_dlr_http_requests_total"
    cb = "/callbacks/mboxii/{token}"
    assert value(text, requests, method="POST", route=cb, status="200") == 2
    assert value(text, requests, method="GET", route=cb, status="404") == 1
    assert value(text, requests, route="/v1/deliveries/{msgid}", status="200") == 1
    assert value(text, requests, route="/v1/deliveries/{msgid}", status="404") == 1
    assert value(text, requests, method="GET", route="unmatched", status="404") == 1
    assert value(text, requests, method="OTHER", route="/healthz", status="405") == 1
    seconds = "mboxii_dlr_http_request_duration_seconds_count"
    assert value(text, seconds, method="POST", route=cb) == 2
    # The /metrics request itself is counted once it has answered, not in its own body.
    assert value(text, requests, route="/metrics") == 0

    routes = {lbl["route"] for n, lbl, _ in samples(text) if "route" in lbl}
    assert routes == {cb, "/v1/deliveries/{msgid}", "unmatched", "/healthz"}


async def test_no_number_id_or_token_in_any_label(app_factory: Callable[..., Any]) -> None:
    async with app_factory(callback_tokens=[TOKEN]) as (_, client):
        url = f"/callbacks/mboxii/{TOKEN}"
        await client.post(url, data=SEED_REPORT)
        await client.post(url, data=report(statusstr="WEIRD0922161529", statuscode="0"))
        await client.post(url, data=report(mobile="12345"))
        await client.post(url + "?mobile=0922161529", content=b"x", headers={"content-type": "a/b"})
        await client.get("/v1/deliveries/208217564", params={"mobile": "0922161529"})
        await client.get("/0922161529")
        text = (await client.get("/metrics")).text

    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("mboxii_dlr_")]
    assert len(ours) >= 12
    for family in families:
        assert family.name.startswith(("mboxii_dlr_", "process_")), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if "duration" in family.name or "latency" in family.name:
            assert family.name.endswith("_seconds"), family.name
    for name, labels, _ in samples(text):
        for label, label_value in labels.items():
            assert not any(secret in label_value for secret in SECRETS), (name, labels)
            if label == "status" and name.startswith("mboxii_dlr_http_"):
                assert re.fullmatch(r"[1-5][0-9][0-9]", label_value)
            elif label != "le":
                # The API's version prefix is the one digit a label may hold.
                assert not re.search(r"[0-9]", label_value.replace("/v1/", "/")), (name, labels)
    # The undocumented word is counted, under OTHER.
    assert value(text, "mboxii_dlr_reports_received_total", status="OTHER") == 1


async def test_every_series_exists_before_any_traffic(app_factory: Callable[..., Any]) -> None:
    async with app_factory() as (_, client):
        text = (await client.get("/metrics")).text
    for outcome in ("delivered", "failed", "pending"):
        assert f'outcome="{outcome}"' in text
    for reason in ("invalid_fields", "malformed_body", "unsupported_media_type"):
        assert f'mboxii_dlr_callbacks_rejected_total{{reason="{reason}"}} 0.0' in text
    assert 'mboxii_dlr_callbacks_unavailable_total{cause="saturated"} 0.0' in text
    assert "mboxii_dlr_ingest_queue_depth 0.0" in text
    assert "process_resident_memory_bytes" in text


async def test_request_id_is_generated_or_echoed(app_factory: Callable[..., Any]) -> None:
    async with app_factory(callback_tokens=[TOKEN], api_keys=["k"]) as (_, client):
        first = await client.post(f"/callbacks/mboxii/{TOKEN}", data=SEED_REPORT)
        second = await client.get("/healthz")
        generated = {first.headers["x-request-id"], second.headers["x-request-id"]}
        assert len(generated) == 2
        assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in generated)

        for path in ("/healthz", "/v1/deliveries/1", "/nowhere", f"/callbacks/mboxii/{TOKEN}"):
            r = await client.get(path, headers={"X-Request-ID": "lb-7f3a.2:x_y-z"})
            assert r.headers["x-request-id"] == "lb-7f3a.2:x_y-z", path
        assert r.status_code == 422  # an empty callback: quarantined, still with the id

        for bad in ("a" * 65, "has space", "semi;colon", "ünï"):
            r = await client.get("/healthz", headers={"X-Request-ID": bad.encode()})
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
        assert r.headers.get_list("x-request-id") == [r.headers["x-request-id"]]


async def test_access_log_shows_the_template_and_carries_the_request_id(
    app_factory: Callable[..., Any], log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    async with app_factory(
        callback_tokens=[TOKEN], callback_networks=["10.0.0.0/8"], api_keys=["k"]
    ) as (_, client):
        refused = await client.post(
            f"/callbacks/mboxii/{TOKEN}?mobile=0922161529", data=SEED_REPORT
        )
        assert refused.status_code == 403
        await client.get("/v1/deliveries/208217564", headers={"X-Request-ID": "dash-1"})
        await client.get(f"/callbacks/{TOKEN}/0922161529")

    lines = log_lines()
    text = json.dumps(lines)
    assert not any(secret in text for secret in SECRETS), text
    access = [line for line in lines if line["logger"] == "mboxii_dlr.access"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("POST", "/callbacks/mboxii/{token}", 403),
        ("GET", "/v1/deliveries/{msgid}", 401),
        ("GET", "/callbacks/***/0922***529", 404),
    ]
    assert access[0]["request_id"] == refused.headers["x-request-id"]
    assert access[1]["request_id"] == "dash-1"
    assert access[0]["client"] == "127.0.0.1"
    assert isinstance(access[0]["duration_ms"], float)
    # A line the callback wrote during the request carries the same id.
    (warning,) = [line for line in lines if line["logger"] == "mboxii_dlr.callback"]
    assert warning["level"] == "warning"
    assert warning["request_id"] == access[0]["request_id"]


async def test_acknowledged_callbacks_are_summarised_not_logged_one_by_one(
    app_factory: Callable[..., Any], log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    async with app_factory(callback_tokens=[TOKEN]) as (_, client):
        for _ in range(3):
            assert (await client.post(f"/callbacks/mboxii/{TOKEN}", data=SEED_REPORT)).is_success
        assert (await client.post(f"/callbacks/mboxii/{TOKEN}", data={})).status_code == 422
        assert not [line for line in log_lines() if line["message"].startswith("ingest:")]
    # the writer writes its summary each minute, and what is left when it stops
    lines = log_lines()
    access = [line for line in lines if line["logger"] == "mboxii_dlr.access"]
    assert [(a["route"], a["status"]) for a in access] == [("/callbacks/mboxii/{token}", 422)]
    (summary,) = [line for line in lines if line["message"].startswith("ingest:")]
    assert "1 reports stored, 2 duplicates, in 3 commits" in summary["message"]


async def test_a_stopped_app_leaves_the_process_as_it_found_it(
    app_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # What start-up changes for the whole process (log redaction, uvicorn's overload answer,
    # the frozen garbage-collector generation) is undone at shutdown: apps built one after
    # another, as tests build them, never see each other's.
    from uvicorn.protocols.http import h11_impl

    plain_factory, plain_answer = logging.getLogRecordFactory(), h11_impl.service_unavailable
    async with app_factory(callback_tokens=[TOKEN]):
        assert logging.getLogRecordFactory() is not plain_factory
        assert h11_impl.service_unavailable is not plain_answer
        assert gc.get_freeze_count() > 0
        with caplog.at_level(logging.INFO):
            logging.getLogger("x").info("token %s", TOKEN)
    assert logging.getLogRecordFactory() is plain_factory
    assert h11_impl.service_unavailable is plain_answer
    assert gc.get_freeze_count() == 0
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("token %s", TOKEN)
    mine = [r.getMessage() for r in caplog.records if r.name == "x"]
    assert mine == ["token ***", f"token {TOKEN}"]


async def test_access_log_can_be_turned_off(
    app_factory: Callable[..., Any], log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    async with app_factory(access_log=False) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
    assert not [line for line in log_lines() if line["logger"] == "mboxii_dlr.access"]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mobile=0922161529", "mobile=0922***529"),
        ("to +886922161529.", "to 0922***529."),
        ("886922161529 and 922161529", "0922***529 and 0922***529"),
        ("+886 0922-161-529", "0922***529"),
        ("0922 161 529", "0922***529"),
        # Not mobile numbers: ids, times, hex request ids, durations.
        ("msgid 208217564 ID 123456", "msgid 208217564 ID 123456"),
        ("2003/05/22 13:48:50", "2003/05/22 13:48:50"),
        ("1209221615290 0922161529000", "1209221615290 0922161529000"),
        # Letters do not hide a number (a number glued to a word is still one).
        ("ab0922161529cd", "ab0922***529cd"),
        ("took 912.35ms", "took 912.35ms"),
    ],
)
def test_numbers_are_masked_in_log_text(text: str, masked: str) -> None:
    assert mask_numbers(text) == masked


def test_console_format_masks_and_shows_the_request_id() -> None:
    record = logging.LogRecord(
        "mboxii_dlr.x", logging.INFO, __file__, 1, "report for %s", ("+886922161529",), None
    )
    record.request_id = "req-9"
    line = ConsoleFormatter().format(record)
    assert line.endswith("INFO    mboxii_dlr.x [req-9] report for 0922***529")
    del record.request_id
    token = REQUEST_ID.set("from-context")
    try:
        assert "[from-context]" in ConsoleFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert "[-]" in ConsoleFormatter().format(record)
    # The record is left as it was, for the next handler.
    assert "request_id" not in record.__dict__


def test_json_format_keeps_extras_and_masks_tracebacks() -> None:
    try:
        raise ValueError("bad mobile 0922161529")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    record.route = "/x"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["route"] == "/x"
    assert line["time"].endswith("Z")
    assert "0922***529" in line["exception"] and "0922161529" not in line["exception"]
    assert "request_id" not in line


@pytest.mark.slow
def test_real_server_writes_json_lines_for_uvicorn_and_us(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(
        DLR_CALLBACK_TOKENS=TOKEN,
        DLR_LOG_FORMAT="json",
        DLR_LOG_LEVEL="info",
        DLR_ACCESS_LOG_CALLBACKS="true",
    )
    r = httpx.post(
        f"{server.url}/callbacks/mboxii/{TOKEN}",
        data=SEED_REPORT,
        headers={"X-Request-ID": "gw-42"},
    )
    assert (r.status_code, r.headers["x-request-id"]) == (200, "gw-42")
    server.stop()
    lines = [json.loads(line) for line in server.output.splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "mboxii_dlr.access"} <= loggers
    assert "uvicorn.access" not in loggers
    (access,) = [
        line
        for line in lines
        if line["logger"] == "mboxii_dlr.access" and line["route"].startswith("/callbacks")
    ]
    assert (access["route"], access["status"], access["request_id"]) == (
        "/callbacks/mboxii/{token}",
        200,
        "gw-42",
    )
    assert TOKEN not in server.output


FORGED = "2031-01-02 03:04:05,678 INFO    mboxii_dlr.access [-] GET /v1/stats 200 1.00ms"


@pytest.mark.parametrize("formatter", [ConsoleFormatter, JsonFormatter])
async def test_a_request_cannot_forge_log_lines(
    app_factory: Callable[..., Any], formatter: type[logging.Formatter]
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    logger = logging.getLogger("mboxii_dlr")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with app_factory() as (_, client):
            for path in (
                "/nope%0A" + FORGED,  # LF
                "/nope%0D%0A" + FORGED,  # CR LF
                "/nope%1B%5B2K%0D" + FORGED,  # ANSI: erase the line, back to its start
                "/nope%C2%9B2K%C2%85" + FORGED,  # C1: CSI and NEL
                "/nope%E2%80%A8" + FORGED,  # Unicode line separator
            ):
                assert (await client.get(path)).status_code == 404
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    output = stream.getvalue()
    lines = output.split("\n")[:-1]
    access = [line for line in lines if "/nope" in line]
    assert len(access) == 5, output  # one line per request, nothing else
    for line in lines:
        assert not line.startswith("2031-01-02"), line
        assert not any(c in line for c in "\r\x1b\x85\x9b\u2028\u2029"), repr(line)
    assert "/nope\\n2031-01-02" in output


def test_console_tracebacks_keep_their_lines_indented() -> None:
    try:
        raise ValueError("bad\n" + FORGED)
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    first, *rest = ConsoleFormatter().format(record).split("\n")
    assert first.endswith("ERROR   t [-] failed")
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert "  Traceback (most recent call last):" in rest
