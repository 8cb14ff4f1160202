"""The gateway simulator: the seed's rules and codes, its answers, its callbacks."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.cli import build_parser
from app.gateway import MboxiiClient, prepare_message
from app.gateway.errors import AuthenticationFailed, NotSentYet, RecordNotFound
from app.ingest.parse import FIELDS
from simulator.app import create_simulator
from simulator.config import ANSWER_FORMATS, SimulatorConfig, parse_accounts, parse_delay

TAIPEI = ZoneInfo("Asia/Taipei")
START = dt.datetime(2026, 11, 26, 12, 2, 30, tzinfo=TAIPEI).timestamp()


class Clock:
    """The simulator's time, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def simulator(
    clock: Clock | None = None,
    callback_transport: httpx.AsyncBaseTransport | None = None,
    **config: Any,
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    config.setdefault("first_id", 1000)
    config.setdefault("seed", 1)
    app = create_simulator(SimulatorConfig(**config), callback_transport, clock or (lambda: START))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as raw:
            yield app, raw


def gateway(app: Starlette, password: str = "pw") -> MboxiiClient:
    return MboxiiClient(
        "http://sim/api/",
        "acct",
        SecretStr(password),
        zone=TAIPEI,
        transport=httpx.ASGITransport(app=app),
    )


def message(text: str = "hello", send_at: str | None = None, numbers: int = 2) -> Any:
    return prepare_message(
        [f"09123456{i:02d}" for i in range(numbers)],
        text,
        zone=TAIPEI,
        now=dt.datetime.fromtimestamp(START, dt.UTC),
        send_at=send_at,
    )


ACCOUNT = {"CID": "acct", "CPW": "pw"}
GOOD = {**ACCOUNT, "L": "E", "N": "0912345678", "M": "hi"}


@pytest.mark.parametrize(
    ("path", "fields", "code"),
    [
        ("SendSMS", {**GOOD, "CPW": ""}, "20"),
        ("SendSMS", {**GOOD, "CPW": "wrong"}, "20"),
        ("SendSMS", {**GOOD, "L": "X"}, "22"),
        ("SendSMS", {**GOOD, "N": ""}, "23"),
        ("SendSMS", {**GOOD, "M": ""}, "24"),
        ("SendSMS", {**GOOD, "M": "a" * 141}, "24"),
        ("SendSMS", {**GOOD, "M": "中文"}, "24"),
        ("SendSMS", {**GOOD, "L": "", "M": "中" * 71}, "24"),
        ("SendSMS", {**GOOD, "N": ",".join(["0912345678"] * 81)}, "31"),
        ("SendSMS", {**GOOD, "N": "0912345678,+886912345678"}, "32"),
        ("SendSMS", {**GOOD, "M": "a" * 140}, "00"),
        ("SendTimeSMS", {**GOOD}, "21"),
        ("SendTimeSMS", {**GOOD, "T": "20301231235"}, "26"),
        ("SendTimeSMS", {**GOOD, "T": "2030123123x5"}, "26"),
        ("SendTimeSMS", {**GOOD, "T": "203013312355"}, "27"),
        ("SendTimeSMS", {**GOOD, "T": "203012312353"}, "27"),
        ("SendTimeSMS", {**GOOD, "T": "202001011200"}, "27"),
        ("SendTimeSMS", {**GOOD, "T": "203012312355", "M": "a" * 161}, "24"),
        ("SendTimeSMS", {**GOOD, "T": "203012312355", "M": "a" * 160}, "00"),
        ("SendTimeSMS", {**GOOD, "T": "203012312355", "L": "Z"}, "22"),
        ("SendTimeSMS", {**ACCOUNT, "D": "Y", "ID": "999"}, "25"),
        ("SendTimeSMS", {**ACCOUNT, "D": "C", "ID": "999"}, "25"),
        ("CheckSMS", {**ACCOUNT, "T": "Later", "ID": "1"}, "22"),
        ("CheckSMS", {**ACCOUNT, "ID": "999"}, "21"),
        ("CheckSMS", {**ACCOUNT, "T": "Time", "ID": "999"}, "23"),
        ("CheckSMS", {"CID": "acct", "ID": "1"}, "20"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_the_seeds_rules_and_codes(
    path: str, fields: dict[str, str], code: str, method: str
) -> None:
    async with simulator(accounts={"acct": "pw"}) as (_, raw):
        url = f"/api/{path}.php"
        if method == "GET":
            r = await raw.get(url, params=fields)
        else:
            r = await raw.post(url, data=fields)
    assert r.status_code == 200
    assert r.text.split(",")[0] == code


async def test_send_schedule_cancel_and_check_through_the_client() -> None:
    clock = Clock()
    async with simulator(clock) as (app, _), gateway(app) as client:
        now = await client.send(message())
        later = await client.send(message(send_at="2026-11-26T12:30"))
        # two sequences that start together: the IDs collide, their types keep them apart
        assert (now.batch_id, later.batch_id) == ("1000", "1000")
        with pytest.raises(NotSentYet) as exc:
            await client.check(later.batch_id, scheduled=True)
        assert exc.value.code == "24"
        assert (await client.scheduled_sent(later.batch_id)).sent is False
        waiting = await client.check(now.batch_id, scheduled=False)
        assert (waiting.batch_id, waiting.wait, waiting.statuses) == ("1000", 2, ())

        clock.now += 3600
        assert (await client.scheduled_sent(later.batch_id)).sent is True
        with pytest.raises(RecordNotFound) as exc2:
            await client.cancel(later.batch_id)  # already gone out
        assert exc2.value.code == "25"
        done = await client.check(now.batch_id, scheduled=False)
        assert (done.ok or 0) + (done.fail or 0) == 2 and done.wait == 0
        truth = {m.mobile: m for m in app.state.simulator.sends[("now", "1000")].messages}
        for status in done.statuses:
            m = truth[status.mobile]
            assert (status.msgid, status.text) == (m.msgid, m.status)
            assert status.statuscode == m.statuscode

        third = await client.send(message(send_at="2026-11-26T13:30"))
        assert third.batch_id == "1001"
        await client.cancel(third.batch_id)
        with pytest.raises(RecordNotFound) as exc3:
            await client.check(third.batch_id, scheduled=True)
        assert exc3.value.code == "23"


async def test_wrong_account_is_refused() -> None:
    async with simulator(accounts=parse_accounts("acct:pw,other:pw2")) as (app, _):
        async with gateway(app, "nope") as client:
            with pytest.raises(AuthenticationFailed):
                await client.send(message())
        async with gateway(app, "pw") as client:
            assert (await client.send(message())).batch_id == "1000"


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
async def test_the_client_reads_every_answer_layout_of_the_simulator(answer_format: str) -> None:
    clock = Clock()
    async with simulator(clock, answer_format=answer_format) as (app, _), gateway(app) as client:
        sent = await client.send(message(numbers=3))
        clock.now += 3600
        result = await client.check(sent.batch_id, scheduled=False)
    assert sent.batch_id == "1000"
    assert len(result.statuses) == 3 and result.wait == 0


async def test_forced_codes() -> None:
    async with simulator(force_codes={"SendSMS": "30"}) as (_, raw):
        r = await raw.post("/api/SendSMS.php", data=GOOD)
    assert r.text == "30"


async def test_fail_numbers_always_fail_and_leave_the_others_their_fates() -> None:
    numbers = [f"09123456{i:02d}" for i in range(10)]
    fates = {}
    for failing in (frozenset(), frozenset({"0912345603", "0912345607"})):
        async with simulator(fail_rate=0.3, fail_numbers=failing) as (app, raw):
            r = await raw.post("/api/SendSMS.php", data={**GOOD, "N": ",".join(numbers)})
            assert r.text.startswith("00,")
            [send] = app.state.simulator.sends.values()
            fates[failing] = {m.mobile: m.status for m in send.messages}
    plain, failing = fates.values()
    assert failing["0912345603"] != "DELIVRD" and failing["0912345607"] != "DELIVRD"
    assert {m: s for m, s in failing.items() if m not in ("0912345603", "0912345607")} == {
        m: s for m, s in plain.items() if m not in ("0912345603", "0912345607")
    }


def test_command_line_values() -> None:
    assert parse_accounts("") is None
    assert parse_accounts("a:b, c:d") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError):
        parse_accounts("nopassword")
    args = build_parser().parse_args(
        ["simulate-gateway", "--fail-numbers", "0912345678,+886 922-161-529"]
    )
    assert args.fail_numbers == [["0912345678", "0922161529"]]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate-gateway", "--fail-numbers", "0212345678"])
    assert parse_delay("2") == (2.0, 2.0)
    assert parse_delay("0.5-1.5") == (0.5, 1.5)
    with pytest.raises(ValueError):
        parse_delay("3-1")


class Receiver:
    """A stand-in callback endpoint that records what the simulator sends."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.fail_first = fail_first

    async def receive(self, request: Request) -> PlainTextResponse:
        if request.method == "GET":
            fields = dict(request.query_params)
        else:
            fields = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        self.calls.append((request.method, fields))
        if self.fail_first:
            self.fail_first -= 1
            return PlainTextResponse("busy", status_code=503)
        return PlainTextResponse("OK")

    def transport(self) -> httpx.ASGITransport:
        app = Starlette(routes=[Route("/cb", self.receive, methods=["GET", "POST"])])
        return httpx.ASGITransport(app=app)


async def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("get", [False, True])
async def test_callbacks_carry_the_seven_fields(get: bool) -> None:
    receiver = Receiver()
    async with (
        simulator(
            callback_transport=receiver.transport(),
            get_callbacks=get,
            delay=(0, 0),
        ) as (app, _),
        gateway(app) as client,
    ):
        # The real clock: the callbacks fall due within a second.
        app.state.simulator.clock = time.time
        sent = await client.send(message(numbers=3), "http://receiver/cb")
        await wait_for(lambda: len(receiver.calls) == 3)
    truth = {m.msgid: m for m in app.state.simulator.sends[("now", sent.batch_id)].messages}
    for method, fields in receiver.calls:
        assert method == ("GET" if get else "POST")
        assert set(fields) == set(FIELDS)
        m = truth[fields["msgid"]]
        assert fields["ID"] == sent.batch_id and fields["type"] == "Now"
        assert (fields["mobile"], fields["statusstr"]) == (m.mobile, m.status)
        assert fields["statuscode"] == str(m.statuscode)
        assert (
            dt.datetime.strptime(fields["donetime"], "%Y/%m/%d %H:%M:%S")
            .replace(tzinfo=TAIPEI)
            .timestamp()
            == m.final_at
        )


async def test_unacknowledged_callbacks_are_retried_and_drops_never_come() -> None:
    receiver = Receiver(fail_first=1)
    async with (
        simulator(callback_transport=receiver.transport(), delay=(0, 0), seed=3) as (app, _),
        gateway(app) as client,
    ):
        app.state.simulator.clock = time.time
        await client.send(message(numbers=1), "http://receiver/cb")
        await wait_for(lambda: len(receiver.calls) == 2)
    assert receiver.calls[0] == receiver.calls[1]

    receiver = Receiver()
    async with (
        simulator(callback_transport=receiver.transport(), delay=(0, 0), drop_rate=1.0) as (
            app,
            _,
        ),
        gateway(app) as client,
    ):
        app.state.simulator.clock = time.time
        sent = await client.send(message(numbers=2), "http://receiver/cb")
        sim = app.state.simulator
        assert all(m.dropped for m in sim.sends[("now", sent.batch_id)].messages)
    assert receiver.calls == []


async def test_duplicates_and_reordered_reports_follow_the_final_one() -> None:
    receiver = Receiver()
    async with (
        simulator(
            callback_transport=receiver.transport(),
            delay=(0, 0),
            duplicate_rate=1.0,
            reorder_rate=1.0,
        ) as (app, _),
        gateway(app) as client,
    ):
        app.state.simulator.clock = time.time
        sent = await client.send(message(numbers=4), "http://receiver/cb")
        await wait_for(lambda: len(receiver.calls) == 12)
    messages = app.state.simulator.sends[("now", sent.batch_id)].messages
    for m in messages:
        calls = [f for _, f in receiver.calls if f["msgid"] == m.msgid]
        assert len(calls) == 3
        finals = [f for f in calls if f["statusstr"] == m.status]
        stale = [f for f in calls if f["statusstr"] != m.status]
        assert len(finals) == 2 and finals[0] == finals[1]  # a duplicate
        assert len(stale) == 1
        assert stale[0]["donetime"] < finals[0]["donetime"]  # dated earlier, arrives later
        assert calls.index(stale[0]) > calls.index(finals[0])
