"""Privacy: numbers masked and secrets absent in every log line and metric of a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Callable

import httpx
import pytest

from app.core import redact
from app.core.logging import JsonFormatter
from tests.conftest import LiveServer, free_port, report

TOKEN = "tok-Secret-4f9a2c7e"
TOKEN2 = "second.token~77"
KEY = "apikey-0b5e6d1f9c"
KEY2 = "other-key-8a8a8a"
GATEWAY_PASSWORD = "gw-Pass-77c1e0aa"
CURSOR_SECRET = "cursor-signing-9d2f1b"
SECRETS = (TOKEN, TOKEN2, KEY, KEY2, GATEWAY_PASSWORD, CURSOR_SECRET)
# The seed's number in every spelling a log could carry; "922161529" is inside all of them.
RAW_NUMBERS = ("0922161529", "+886922161529", "922161529", "886922161529", "0922-161-529")


def drive(server: LiveServer) -> list[int]:
    """Callbacks good and bad, reads with and without keys; returns the statuses seen."""
    cb = f"{server.url}/callbacks/mboxii"
    seen: list[int] = []
    with httpx.Client(timeout=30) as c:

        def go(method: str, url: str, **kwargs: object) -> None:
            seen.append(c.request(method, url, **kwargs).status_code)  # type: ignore[arg-type]

        for i, mobile in enumerate(("0922161529", "+886922161529", "922161529", "886922161529")):
            go("POST", f"{cb}/{TOKEN}", data=report(msgid=f"form{i}", mobile=mobile))
        go("POST", f"{cb}/{TOKEN2}/", json=report(msgid="json", mobile="0922-161-529"))
        go("GET", f"{cb}/{TOKEN}", params=report(msgid="get"))
        go("POST", f"{cb}/{TOKEN}", files={k: (None, v) for k, v in report(msgid="mp").items()})
        go("POST", f"{cb}/{TOKEN}", data=report(msgid="form0"))  # a duplicate
        go("POST", f"{cb}/{TOKEN}", data=report())  # the seed itself
        # rejected: 422 (one with the number inside a bad donetime), 415, 413, 405
        go("POST", f"{cb}/{TOKEN}", data=report(statuscode="7"))
        go("POST", f"{cb}/{TOKEN}", data=report(donetime="0922161529T1"))
        go("POST", f"{cb}/{TOKEN}", json=[report()])
        go("POST", f"{cb}/{TOKEN}", content=b'{"mobile": "0922161529", \xff')
        go("POST", f"{cb}/{TOKEN}", content=b"mobile=0922161529", headers={"content-type": "x/y"})
        go("POST", f"{cb}/{TOKEN}", data={**report(), "pad": "x" * 20000})
        go("PUT", f"{cb}/{TOKEN}", data=report())
        # wrong tokens: an API key as token, a token with a suffix or a path behind it
        go("POST", f"{cb}/{KEY}", data=report())
        go("POST", f"{cb}/{TOKEN}x", data=report())
        go("POST", f"{cb}/{TOKEN}/0922161529", data=report())
        go("GET", f"{server.url}/{TOKEN}/{KEY}?mobile=0922161529")
        # the read API with keys in both headers, wrong keys, no key
        d = f"{server.url}/v1/deliveries"
        go("GET", f"{d}/208217564", params={"mobile": "0922161529"}, headers={"x-api-key": KEY})
        go("GET", f"{d}/208217564", headers={"authorization": f"Bearer {KEY2}"})
        go("GET", f"{d}/0922161529", headers={"authorization": f"Bearer {KEY2}"})
        go("GET", f"{d}/208217564", params={"mobile": "+886922161529x"}, headers={"x-api-key": KEY})
        go("GET", f"{d}/208217564", headers={"authorization": f"Bearer {TOKEN}"})
        go("GET", f"{d}/208217564", headers={"x-api-key": KEY + "x"})
        go("GET", f"{d}/208217564?api_key={KEY}")
        go("GET", f"{d}", params={"mobile": "0922161529", "limit": "1"}, headers={"x-api-key": KEY})
        go("GET", f"{server.url}/v1/rejected", headers={"x-api-key": KEY})
        # sending through a gateway that does not answer (its password is in every request)
        message = {"numbers": ["0922161529", "+886912345678"], "text": "code 0922161529"}
        go("POST", f"{server.url}/v1/messages", json=message, headers={"x-api-key": KEY})
        go("GET", f"{server.url}/v1/messages/123456", headers={"x-api-key": KEY})
        go("GET", f"{server.url}/readyz")

    # A burst beyond the one-report queue: some callbacks get 503.
    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            posts = [
                client.post(f"{cb}/{TOKEN}", data=report(msgid=f"burst{i}", mobile="0922161529"))
                for i in range(40)
            ]
            return [r.status_code for r in await asyncio.gather(*posts)]

    seen += asyncio.run(burst())

    # Requests uvicorn itself refuses, with the secrets in them.
    for raw in (
        f"POST /callbacks/mboxii/{TOKEN} HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        f"GET /v1/deliveries/1 HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\nbad header\r\n\r\n",
        f"\x00\x01 /{TOKEN} 0922161529\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw.encode("latin-1"))
            while sock.recv(65536):
                pass
    return seen


def leaks(text: str) -> list[str]:
    return [s for s in (*SECRETS, *RAW_NUMBERS) if s in text]


@pytest.mark.slow
def test_no_secret_or_number_in_logs_or_metrics(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    # Both log formats, one per database run (the format does not depend on the database).
    log_format = "json" if database_url.startswith("postgresql") else "console"
    server = live_server(
        DLR_LOG_LEVEL="debug",
        DLR_LOG_FORMAT=log_format,
        DLR_CALLBACK_TOKENS=f"{TOKEN},{TOKEN2}",
        DLR_API_KEYS=KEY2,
        DLR_SEND_API_KEYS=KEY,
        DLR_INGEST_QUEUE_SIZE="1",
        DLR_INGEST_BATCH_DELAY_MS="200",
        DLR_MBOXII_CID="account-1",
        DLR_MBOXII_CPW=GATEWAY_PASSWORD,
        DLR_MBOXII_BASE_URL=f"http://127.0.0.1:{free_port()}/api/",
        DLR_CURSOR_SECRET=CURSOR_SECRET,
        DLR_PUBLIC_URL="https://dlr.example.com",
    )
    seen = drive(server)
    # 502: the send through the gateway that does not answer
    assert {200, 401, 404, 405, 413, 415, 422, 502, 503} <= set(seen), sorted(set(seen))
    metrics = httpx.get(server.url + "/metrics").text
    assert "mboxii_dlr_reports_received" in metrics
    assert leaks(metrics) == []
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    output = server.output
    # the server did log what happened, at debug level, with the numbers masked
    assert "0922***529" in output
    assert "DEBUG" in output or '"debug"' in output.lower()
    assert leaks(output) == [], [line for line in output.splitlines() if leaks(line)][:5]


def test_redaction_of_records_from_any_logger(caplog: pytest.LogCaptureFixture) -> None:
    undo = redact.install([TOKEN, KEY])
    try:
        log = logging.getLogger("uvicorn.access")
        with caplog.at_level(logging.INFO):
            log.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "POST", f"/cb/{TOKEN}", "1.1", 200)
            logging.getLogger("x").info("to %(mobile)s", {"mobile": "+886922161529"})
            logging.getLogger("y").warning("key %s number 0922 161 529", KEY)
            try:
                raise ValueError(f"row (+886922161529, {TOKEN})")
            except ValueError:
                logging.getLogger("z").exception("failed")
        text = caplog.text
        assert leaks(text) == [], text
        access = caplog.records[0]
        # formatters that read the arguments (uvicorn's access log) still can
        assert access.args == ("1.2.3.4", "POST", "/cb/***", "1.1", 200)
        assert "to 0922***529" in text
        assert "number 0922***529" in text
        assert "ValueError: row (0922***529, ***)" in text
        # the JSON format prints the redacted traceback too
        line = json.loads(JsonFormatter().format(caplog.records[-1]))
        assert "ValueError: row (0922***529, ***)" in line["exception"]
        assert leaks(json.dumps(line)) == []
        assert redact.redact("ids 208217564 and 20031105123456 stay") == (
            "ids 208217564 and 20031105123456 stay"
        )
    finally:
        undo()


def test_redaction_can_be_undone(caplog: pytest.LogCaptureFixture) -> None:
    plain = logging.getLogRecordFactory()
    undo = redact.install([KEY])
    assert logging.getLogRecordFactory() is not plain
    undo()
    assert logging.getLogRecordFactory() is plain
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("key %s", KEY)
    assert caplog.records[0].getMessage() == f"key {KEY}"


def test_redactor_spares_ordinary_text() -> None:
    r = redact.Redactor(["k", "a-long-secret-value"])
    # a short secret goes only where it stands alone
    assert r("callbacks keep working; key=k") == "callbacks keep working; key=***"
    # a long one wherever it appears, even inside a longer token
    assert r("x-a-long-secret-valuey") == "x-***y"
    # any token of a callback path, right or wrong, and nothing else of the path
    assert r('"POST /callbacks/mboxii/near-miss?ID=1 HTTP/1.1" 404') == (
        '"POST /callbacks/mboxii/***?ID=1 HTTP/1.1" 404'
    )
    assert r("on /callbacks/mboxii without a secret") == "on /callbacks/mboxii without a secret"
    assert r("route /callbacks/mboxii/{token} 403") == "route /callbacks/mboxii/{token} 403"
    for spelling in (*RAW_NUMBERS, "+886 0922161529", "0922.161.529"):
        assert r(f"to {spelling}.") == "to 0922***529.", spelling
