"""Limits of the send API: a budget per key, messages refused before they reach the gateway,
the gateway's answers read only so far and parsed without holding the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.gateway.answers import parse_check_answer, parse_plain_answer, parse_send_answer
from app.gateway.budget import SendBudget
from app.gateway.errors import GatewayError
from tests.conftest import make_settings, report
from tests.fake_gateway import ACCOUNT, API_KEY, FakeGateway, service

OTHER_KEY = "second-send-key-0123456789"
NUMBERS = [f"09120000{i:02d}" for i in range(10)]
KIB = 1024


def message(count: int, **extra: Any) -> dict[str, Any]:
    return {"numbers": NUMBERS[:count], "text": "hello", **extra}


# ---------------------------------------------------------------- budget per key


async def test_each_send_key_may_send_so_many_messages_a_minute(database_url: str) -> None:
    overrides = {"send_rate": 5, "send_api_keys": [API_KEY, OTHER_KEY]}
    async with service(database_url, **overrides) as (_, client, gateway):
        assert (await client.post("/v1/messages", json=message(3))).status_code == 201
        # Counted per number: 3 + 3 is over 5.
        r = await client.post("/v1/messages", json=message(3))
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too_many_requests"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert len(gateway.calls("SendSMS")) == 1
        # What is left of the minute can still be used...
        assert (await client.post("/v1/messages", json=message(2))).status_code == 201
        # ...and another key has a budget of its own.
        other = {"x-api-key": OTHER_KEY}
        assert (
            await client.post("/v1/messages", json=message(5), headers=other)
        ).status_code == 201
        # A send larger than a whole minute's budget could never pass: 422, not 429.
        r = await client.post("/v1/messages", json=message(6), headers=other)
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "numbers"
        assert len(gateway.calls("SendSMS")) == 3


def test_the_budget_frees_up_as_the_minute_passes() -> None:
    now = [1000.0]
    budget = SendBudget(10, clock=lambda: now[0])
    assert budget.take("k", 4) is None
    now[0] += 20
    assert budget.take("k", 6) is None
    assert budget.take("k", 1) == 40  # the first 4 leave the window at 1060
    now[0] += 39.5
    assert budget.take("k", 4) == 1
    now[0] += 0.5
    assert budget.take("k", 4) is None
    assert budget.take("k", 3) == 20  # then the 6 of 1020 leave at 1080
    assert budget.take("other", 10) is None


# ---------------------------------------------------------------- refused before sending


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (message(1, send_at="9999-12-31T23:55:00+08:00"), "send_at"),
        (message(1, send_at="9999-12-31T23:55"), "send_at"),
        (message(1, send_at="2999-01-01T00:00:00Z"), "send_at"),
        (message(1, text="hello\x00world"), "text"),
        (message(1, text="bell\x07"), "text"),
        (message(1, text="escape \x1b[31m"), "text"),
        (message(1, text="next line\x85"), "text"),
        (message(1, text="\x00"), "text"),
        (message(1, text=" \n "), "text"),
    ],
)
async def test_what_cannot_be_recorded_is_refused_before_the_gateway_sends_it(
    database_url: str, body: dict[str, Any], field: str
) -> None:
    async with service(database_url) as (_, client, gateway):
        r = await client.post("/v1/messages", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_parameters"
        assert [e["field"] for e in r.json()["errors"]] == [field]
        assert gateway.requests == []  # the gateway never heard of it


async def test_line_breaks_in_a_message_are_fine(database_url: str) -> None:
    async with service(database_url) as (_, client, gateway):
        r = await client.post("/v1/messages", json=message(1, text="line one\r\nline two\n"))
        assert r.status_code == 201, r.text
        assert gateway.calls("SendSMS")[0]["M"] == "line one\r\nline two\n"


async def test_a_lone_surrogate_in_the_text_is_refused(database_url: str) -> None:
    async with service(database_url) as (_, client, gateway):
        raw = b'{"numbers": ["0912345678"], "text": "bad \\ud800 text"}'
        r = await client.post(
            "/v1/messages", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "text"
        assert gateway.requests == []


# ---------------------------------------------------------------- the gateway's answers


class Endless(httpx.AsyncByteStream):
    """An answer that never ends; counts the chunks the client asked for."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.read < 10_000:  # 80 MiB: a client reading it all is wrong anyway
            self.read += 1
            yield self.chunk


async def test_an_answer_over_64_kib_is_not_read_to_its_end(database_url: str) -> None:
    streams: list[Endless] = []

    def endless(request: httpx.Request) -> httpx.Response:
        streams.append(Endless(b"0" * (8 * KIB)))
        return httpx.Response(200, stream=streams[-1])

    settings = make_settings(database_url, **ACCOUNT)
    from app.main import create_app

    app = create_app(settings, gateway_transport=httpx.MockTransport(endless))
    async with app.router.lifespan_context(app):
        await app.app_state.reconciler.stop()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"x-api-key": API_KEY}
        ) as client:
            r = await client.post("/v1/messages", json=message(1))
    assert r.status_code == 502, r.text
    assert r.json()["error"] == "gateway_bad_answer"
    assert "64 KiB" in r.json()["message"]
    assert streams[0].read <= 64 // 8 + 2


PATHOLOGICAL = {
    "unclosed angle brackets": "<" * (60 * KIB),
    "unclosed hidden blocks": "<head>" * (10 * KIB),
    "openings without an end": "<script" * (8 * KIB),
    "status keys without fields": "STATUS " * (8 * KIB),
    "status keys and spaces": "STATUS=" + " " * (60 * KIB),
    "a key and spaces": "MSGID" + " " * (60 * KIB),
    "many separators": ", " * (30 * KIB),
    "no separator at all": "7" * (60 * KIB),
    "entities": "&#" * (30 * KIB),
}


@pytest.mark.parametrize("answer", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_every_answer_parses_in_linear_time(answer: str) -> None:
    for parse in (
        parse_check_answer,
        lambda raw: parse_send_answer("SendSMS", raw),
        lambda raw: parse_plain_answer("SendTimeSMS", raw),
    ):
        started = time.perf_counter()
        with contextlib.suppress(GatewayError):
            parse(answer)
        # Tens of milliseconds here; the backtracking patterns took seconds to minutes.
        assert time.perf_counter() - started < 0.5


async def _callback_latencies(
    client: httpx.AsyncClient, busy: Callable[[], Any], prefix: str
) -> tuple[Any, list[float]]:
    latencies: list[float] = []
    stop = asyncio.Event()

    async def callbacks() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            r = await client.post("/callbacks/mboxii/tok-1", data=report(msgid=f"{prefix}{n}"))
            assert r.status_code == 200
            latencies.append(time.perf_counter() - started)

    runner = asyncio.create_task(callbacks())
    await asyncio.sleep(0.05)
    try:
        result = await busy()
    finally:
        stop.set()
        await runner
    return result, latencies


async def test_callbacks_are_answered_while_nonsense_answers_are_read(database_url: str) -> None:
    gateway = FakeGateway()
    async with service(database_url, gateway, send_rate=1000) as (app, client, _):
        for i, (name, answer) in enumerate(PATHOLOGICAL.items()):
            gateway.answers["SendSMS"] = answer
            r, latencies = await _callback_latencies(
                client, lambda: client.post("/v1/messages", json=message(1)), f"p{i}-"
            )
            assert r.status_code == 502, (name, r.text)
            assert latencies and max(latencies) < 1.0, (name, max(latencies))
        # CheckSMS answers are read by the reconciler, in the same event loop.
        gateway.answers.pop("SendSMS")
        sent = await client.post("/v1/messages", json=message(1))
        batch = sent.json()["batch_id"]
        gateway.checks[batch] = PATHOLOGICAL["status keys without fields"]
        _, latencies = await _callback_latencies(
            client, lambda: app.app_state.reconciler.run_once(everything=True), "chk"
        )
        assert latencies and max(latencies) < 1.0, max(latencies)


# ---------------------------------------------------------------- plain HTTP, or https


async def test_a_plain_http_gateway_is_said_at_start_and_https_is_accepted(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[httpx.URL] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, text=f"00,{777 + len(seen)}")

    from app.main import create_app

    for base_url in ("http://op.mboxii.com/api/", "https://sms.example.com/api/"):
        caplog.clear()
        settings = make_settings(database_url, **ACCOUNT, mboxii_base_url=base_url)
        app = create_app(settings, gateway_transport=httpx.MockTransport(record))
        with caplog.at_level(logging.WARNING, logger="mboxii_dlr"):
            async with app.router.lifespan_context(app):
                await app.app_state.reconciler.stop()
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://t",
                    headers={"x-api-key": API_KEY},
                ) as client:
                    assert (await client.post("/v1/messages", json=message(1))).status_code == 201
        warned = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
        assert bool(warned) == base_url.startswith("http://"), (base_url, warned)
        if warned:
            assert "in clear" in warned[0]
    assert [url.scheme for url in seen] == ["http", "https"]
    assert seen[1].host == "sms.example.com"
