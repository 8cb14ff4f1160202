"""The gateway client: rules checked before sending, every answer layout, every return code."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import SecretStr

from app.gateway import CODES, MboxiiClient, ScheduledState, prepare_message
from app.gateway.answers import parse_check_answer
from app.gateway.errors import (
    AddressNotAccepted,
    ApiNotEnabled,
    AuthenticationFailed,
    GatewayError,
    GatewayRefused,
    GatewaySystemError,
    GatewayTimeout,
    GatewayUnavailable,
    InsufficientCredit,
    InvalidLanguage,
    InvalidNumberFormat,
    InvalidNumbers,
    InvalidQueryType,
    InvalidText,
    InvalidTime,
    InvalidTimeLength,
    NoCredit,
    NoScheduleTime,
    NotSentYet,
    QueryNotAccepted,
    RecordNotFound,
    SendFailed,
    SiteSuspended,
    TooManyNumbers,
    UnknownCode,
    UnreadableAnswer,
)
from app.gateway.rules import InvalidMessage, OutboundMessage

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 11, 26, 4, 2, 30, tzinfo=dt.UTC)  # 12:02:30 in Taipei
PASSWORD = "s3cret-pw"
LATER = dt.datetime(2030, 1, 1, 2, 5, tzinfo=dt.UTC)  # 2030-01-01 10:05 in Taipei


def errors_of(exc: pytest.ExceptionInfo[InvalidMessage]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in exc.value.errors}


def prepare(numbers: list[str] | None = None, text: str = "hello", **kw: object) -> OutboundMessage:
    kw.setdefault("zone", TAIPEI)
    kw.setdefault("now", NOW)
    return prepare_message(numbers or ["0912345678"], text, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- rules before sending


def test_numbers_are_normalised_and_written_as_the_gateway_wants() -> None:
    m = prepare(["0912345678", "+886 922-161-529", "886933000111", "944555666"])
    assert m.numbers == ("+886912345678", "+886922161529", "+886933000111", "+886944555666")
    assert m.gateway_numbers() == "0912345678,0922161529,0933000111,0944555666"


def test_eighty_numbers_pass_and_eighty_one_do_not() -> None:
    numbers = [f"09123456{i:02d}" for i in range(80)]
    assert len(prepare(numbers).numbers) == 80
    with pytest.raises(InvalidMessage) as exc:
        prepare([*numbers, "0922161529"])
    assert "at most 80" in errors_of(exc)["numbers"]


def test_bad_missing_and_repeated_numbers_name_their_position() -> None:
    with pytest.raises(InvalidMessage) as exc:
        prepare(["0912345678", "0212345678", "12", "+886912345678"])
    errors = errors_of(exc)
    assert set(errors) == {"numbers.1", "numbers.2", "numbers.3"}
    assert "numbers.0" in errors["numbers.3"]
    with pytest.raises(InvalidMessage) as exc:
        prepare_message([], "hi", zone=TAIPEI, now=NOW)
    assert "numbers" in errors_of(exc)


@pytest.mark.parametrize(
    ("text", "language", "send_at", "ok"),
    [
        ("a" * 140, None, None, True),
        ("a" * 141, None, None, False),
        ("a" * 160, None, LATER, True),
        ("a" * 161, None, LATER, False),
        ("中" * 70, None, None, True),
        ("中" * 71, None, None, False),
        ("中" * 70, None, LATER, True),
        ("中" * 71, None, LATER, False),
        ("a" * 70, "chinese", None, True),
        ("a" * 71, "chinese", LATER, False),
    ],
)
def test_text_length_by_language_and_send_type(
    text: str, language: str | None, send_at: dt.datetime | None, ok: bool
) -> None:
    if ok:
        prepare(text=text, language=language, send_at=send_at)
        return
    with pytest.raises(InvalidMessage) as exc:
        prepare(text=text, language=language, send_at=send_at)
    assert "at most" in errors_of(exc)["text"]


def test_language_is_chosen_from_the_text_unless_told() -> None:
    assert prepare(text="hello").language == "english"
    assert prepare(text="hello").gateway_language() == "E"
    assert prepare(text="你好 hello").language == "chinese"
    assert prepare(text="你好").gateway_language() == ""
    assert prepare(text="hello", language="chinese").gateway_language() == ""
    with pytest.raises(InvalidMessage) as exc:
        prepare(text="café", language="english")
    assert "ASCII" in errors_of(exc)["text"]


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidMessage) as exc:
        prepare(text=text)
    assert errors_of(exc)["text"] == "must not be empty"


@pytest.mark.parametrize(
    ("send_at", "expected_t"),
    [
        ("2030-01-01T10:05:00+08:00", "203001011005"),
        ("2030-01-01T10:05", "203001011005"),  # no offset: the gateway zone
        ("2030-01-01T02:05:00Z", "203001011005"),
        ("2030-01-01 23:55:00+08:00", "203001012355"),
        (LATER, "203001011005"),
    ],
)
def test_schedule_time_is_written_in_the_gateway_zone(
    send_at: str | dt.datetime, expected_t: str
) -> None:
    m = prepare(send_at=send_at)
    assert m.type == "scheduled"
    assert m.gateway_time(TAIPEI) == expected_t


@pytest.mark.parametrize(
    ("send_at", "problem"),
    [
        ("2030-01-01T10:03:00+08:00", "5-minute step"),
        ("2030-01-01T10:05:30+08:00", "5-minute step"),
        ("2026-11-26T12:00:00+08:00", "in the future"),
        ("2020-01-01T10:00:00+08:00", "in the future"),
        ("tomorrow", "ISO 8601"),
    ],
)
def test_bad_schedule_times(send_at: str, problem: str) -> None:
    with pytest.raises(InvalidMessage) as exc:
        prepare(send_at=send_at)
    assert problem in errors_of(exc)["send_at"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidMessage) as exc:
        prepare(["x"], text="", send_at="2030-01-01T10:01")
    assert set(errors_of(exc)) == {"numbers.0", "text", "send_at"}


# ---------------------------------------------------------------- recorded answers


Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler) -> MboxiiClient:
    return MboxiiClient(
        "http://gateway.test/api",
        "acct",
        SecretStr(PASSWORD),
        zone=TAIPEI,
        transport=httpx.MockTransport(handler),
    )


def answering(text: str, status: int = 200, seen: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, text=text)

    return handler


def form(request: httpx.Request) -> dict[str, str]:
    fields = parse_qs(request.content.decode("ascii"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


async def test_a_send_is_a_utf8_form_post_with_value_and_m_urlencoded() -> None:
    seen: list[httpx.Request] = []
    text = "驗證碼 123 & 50% + more"
    callback = "https://dlr.example.com/callbacks/mboxii/tok-1?x=1&y=2"
    async with client_with(answering("00,4321", seen=seen)) as client:
        result = await client.send(prepare(["0912345678", "+886922161529"], text), callback)
    assert (result.batch_id, result.type, result.interface) == ("4321", "now", "SendSMS")
    assert result.raw == "00,4321"
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "http://gateway.test/api/SendSMS.php"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    body = request.content.decode("ascii")  # every non-ASCII byte is percent-encoded
    assert "Value=https%3A%2F%2Fdlr.example.com%2Fcallbacks%2Fmboxii%2Ftok-1%3Fx%3D1%26y%3D2" in (
        body
    )
    assert form(request) == {
        "CID": "acct",
        "CPW": PASSWORD,
        "L": "",
        "N": "0912345678,0922161529",
        "M": text,
        "Value": callback,
    }
    assert PASSWORD not in str(request.url)


async def test_a_scheduled_send_goes_to_sendtimesms_with_t() -> None:
    seen: list[httpx.Request] = []
    async with client_with(answering("00,77", seen=seen)) as client:
        result = await client.send(prepare(text="hi", send_at=LATER), "")
    assert (result.batch_id, result.type, result.interface) == ("77", "scheduled", "SendTimeSMS")
    assert seen[0].url.path == "/api/SendTimeSMS.php"
    fields = form(seen[0])
    assert (fields["T"], fields["D"], fields["L"], fields["M"]) == ("203001011005", "", "E", "hi")


async def test_cancel_check_scheduled_and_check_send_their_fields() -> None:
    seen: list[httpx.Request] = []
    async with client_with(answering("00", seen=seen)) as client:
        await client.cancel("55")
        assert (await client.scheduled_sent("55")).sent is True
    assert [(r.url.path, form(r)["D"], form(r)["ID"]) for r in seen] == [
        ("/api/SendTimeSMS.php", "Y", "55"),
        ("/api/SendTimeSMS.php", "C", "55"),
    ]
    async with client_with(answering("35")) as client:
        assert await client.scheduled_sent("55") == ScheduledState(False, "35")
    seen.clear()
    async with client_with(answering("MSGID=55\nWAIT=1", seen=seen)) as client:
        await client.check("55", scheduled=True)
        await client.check("56", scheduled=False)
    assert [(r.url.path, form(r)["T"], form(r)["ID"]) for r in seen] == [
        ("/api/CheckSMS.php", "Time", "55"),
        ("/api/CheckSMS.php", "", "56"),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        "00,12345",
        "00 12345",
        "00\n12345",
        "00\r\n12345\r\n",
        "00=12345",
        "00:12345",
        "  00 , 12345  ",
        "<html><body>00,12345</body></html>",
        "<html><head><title>SendSMS</title></head><body>00<br>12345</body></html>",
        "\ufeff00,12345",
        "0012345",
        "code=00&ID=12345",
        "00,ID=12345",
        "00,12345,發送完成",
        '"00","12345"',
    ],
)
async def test_every_plausible_layout_of_a_send_answer(answer: str) -> None:
    async with client_with(answering(answer)) as client:
        result = await client.send(prepare(), "")
    assert result.batch_id == "12345"
    assert result.raw == answer


@pytest.mark.parametrize(
    "answer", ["20", "20\n", "<html><body>20</body></html>", "20,帳號或密碼錯誤", "20: bad login"]
)
async def test_every_plausible_layout_of_an_error_code(answer: str) -> None:
    async with client_with(answering(answer)) as client:
        with pytest.raises(AuthenticationFailed) as exc:
            await client.send(prepare(), "")
    assert exc.value.code == "20"
    assert exc.value.raw == answer


@pytest.mark.parametrize("answer", ["", "  ", "<html><body></body></html>", "error", "00", "OK"])
async def test_an_unreadable_send_answer_is_a_bad_answer(answer: str) -> None:
    async with client_with(answering(answer)) as client:
        with pytest.raises(UnreadableAnswer) as exc:
            await client.send(prepare(), "")
    assert exc.value.raw == answer
    assert exc.value.interface == "SendSMS"


SEED_STATUS = "STATUS=0922161529,208217564,2003/05/22 13:48:50,0,DELIVRD"


@pytest.mark.parametrize(
    "answer",
    [
        f"MSGID=55\n{SEED_STATUS}\nSTATUS=0922161530,208217565,2003/05/22 13:49:01,-1,UNDELIV\n"
        "OK=1\nFAIL=1\nWAIT=1",
        f"MSGID=55\r\n{SEED_STATUS}\r\nSTATUS=0922161530,208217565,2003/05/22 13:49:01,-1,"
        "UNDELIV\r\nOK=1\r\nFAIL=1\r\nWAIT=1\r\n",
        f"<html><body>MSGID=55<br>{SEED_STATUS}<br/>STATUS=0922161530,208217565,"
        "2003/05/22 13:49:01,-1,UNDELIV<br>OK=1<br>FAIL=1<br>WAIT=1</body></html>",
        "MSGID: 55\nSTATUS: 0922161529, 208217564, 2003/05/22 13:48:50, 0, DELIVRD\n"
        "STATUS: 0922161530, 208217565, 2003/05/22 13:49:01, -1, UNDELIV\nOK: 1\nFAIL: 1\nWAIT: 1",
        f"MSGID=55&{SEED_STATUS}&STATUS=0922161530,208217565,2003/05/22 13:49:01,-1,UNDELIV"
        "&OK=1&FAIL=1&WAIT=1",
        f"msgid=55 {SEED_STATUS.lower()} status=0922161530,208217565,2003/05/22 13:49:01,-1,"
        "undeliv ok=1 fail=1 wait=1",
        f"MSGID 55\n{SEED_STATUS}\nSTATUS=0922161530,208217565,2003/05/22 13:49:01,-1,UNDELIV\n"
        "STATUS=0922161531,208217566,,,\nOK 1\nFAIL 1\nWAIT 1",
    ],
)
async def test_every_plausible_layout_of_a_check_answer(answer: str) -> None:
    async with client_with(answering(answer)) as client:
        result = await client.check("55", scheduled=False)
    assert result.batch_id == "55"
    assert (result.ok, result.fail, result.wait) == (1, 1, 1)
    assert result.raw == answer
    final = [s for s in result.statuses if s.state is not None]
    assert [(s.mobile, s.msgid, s.time, s.state, s.text) for s in final] == [
        ("0922161529", "208217564", "2003/05/22 13:48:50", 0, "DELIVRD"),
        ("0922161530", "208217565", "2003/05/22 13:49:01", -1, "UNDELIV"),
    ]
    # CheckSMS writes 0 for success and -1 for failure: the callback's 1 and 0
    assert [s.statuscode for s in final] == [1, 0]
    waiting = [s for s in result.statuses if s.state is None]
    assert all(s.statuscode is None for s in waiting)


def test_a_check_answer_with_nobody_done_yet() -> None:
    result = parse_check_answer("MSGID=55\nOK=0\nFAIL=0\nWAIT=3")
    assert (result.batch_id, result.statuses, result.wait) == ("55", (), 3)


@pytest.mark.parametrize("answer", ["24", "<html><body>24</body></html>", "24,尚未送出"])
async def test_check_error_codes_in_any_layout(answer: str) -> None:
    async with client_with(answering(answer)) as client:
        with pytest.raises(NotSentYet) as exc:
            await client.check("55", scheduled=True)
    assert (exc.value.code, exc.value.interface, exc.value.raw) == ("24", "CheckSMS", answer)


# ---------------------------------------------------------------- every return code

EXPECTED: list[tuple[str, str, type[GatewayRefused]]] = [
    ("SendSMS", "01", SendFailed),
    ("SendSMS", "20", AuthenticationFailed),
    ("SendSMS", "22", InvalidLanguage),
    ("SendSMS", "23", InvalidNumbers),
    ("SendSMS", "24", InvalidText),
    ("SendSMS", "30", NoCredit),
    ("SendSMS", "31", TooManyNumbers),
    ("SendSMS", "32", InvalidNumberFormat),
    ("SendSMS", "33", InsufficientCredit),
    ("SendSMS", "40", SiteSuspended),
    ("SendSMS", "41", ApiNotEnabled),
    ("SendSMS", "42", AddressNotAccepted),
    ("SendSMS", "43", QueryNotAccepted),
    ("SendSMS", "99", GatewaySystemError),
    ("SendTimeSMS", "01", SendFailed),
    ("SendTimeSMS", "20", AuthenticationFailed),
    ("SendTimeSMS", "21", NoScheduleTime),
    ("SendTimeSMS", "22", InvalidLanguage),
    ("SendTimeSMS", "23", InvalidNumbers),
    ("SendTimeSMS", "24", InvalidText),
    ("SendTimeSMS", "25", RecordNotFound),
    ("SendTimeSMS", "26", InvalidTimeLength),
    ("SendTimeSMS", "27", InvalidTime),
    ("SendTimeSMS", "30", NoCredit),
    ("SendTimeSMS", "31", TooManyNumbers),
    ("SendTimeSMS", "32", InvalidNumberFormat),
    ("SendTimeSMS", "33", InsufficientCredit),
    ("SendTimeSMS", "35", NotSentYet),
    ("SendTimeSMS", "40", SiteSuspended),
    ("SendTimeSMS", "41", ApiNotEnabled),
    ("SendTimeSMS", "42", AddressNotAccepted),
    ("SendTimeSMS", "99", GatewaySystemError),
    ("CheckSMS", "20", AuthenticationFailed),
    ("CheckSMS", "21", RecordNotFound),
    ("CheckSMS", "22", InvalidQueryType),
    ("CheckSMS", "23", RecordNotFound),
    ("CheckSMS", "24", NotSentYet),
    ("CheckSMS", "40", SiteSuspended),
    ("CheckSMS", "41", ApiNotEnabled),
    ("CheckSMS", "42", AddressNotAccepted),
    ("CheckSMS", "43", QueryNotAccepted),
    ("CheckSMS", "99", GatewaySystemError),
]


def test_the_table_covers_exactly_the_seeds_codes() -> None:
    assert {(i, c) for i, c, _ in EXPECTED} == {(i, c) for i in CODES for c in CODES[i]}


async def call(client: MboxiiClient, interface: str) -> object:
    if interface == "SendSMS":
        return await client.send(prepare(), "")
    if interface == "SendTimeSMS":
        return await client.send(prepare(send_at=LATER), "")
    return await client.check("55", scheduled=False)


@pytest.mark.parametrize(("interface", "code", "cls"), EXPECTED)
async def test_every_seed_return_code_is_a_named_error(
    interface: str, code: str, cls: type[GatewayRefused]
) -> None:
    async with client_with(answering(code)) as client:
        with pytest.raises(GatewayRefused) as exc:
            await call(client, interface)
    assert type(exc.value) is cls
    assert (exc.value.code, exc.value.interface, exc.value.raw) == (code, interface, code)
    assert exc.value.meaning == CODES[interface][code][1]  # type: ignore[index]
    assert code in str(exc.value) and interface in str(exc.value)


def test_the_same_code_means_different_things_per_interface() -> None:
    assert CODES["SendSMS"]["24"][0] is InvalidText
    assert CODES["CheckSMS"]["24"][0] is NotSentYet
    assert CODES["SendTimeSMS"]["21"][0] is NoScheduleTime
    assert CODES["CheckSMS"]["21"][0] is RecordNotFound
    assert CODES["CheckSMS"]["22"][0] is InvalidQueryType


@pytest.mark.parametrize(("interface", "code"), [("SendTimeSMS", "43"), ("SendSMS", "35")])
async def test_a_code_the_seed_lacks_for_an_interface_is_unknown(interface: str, code: str) -> None:
    async with client_with(answering(code)) as client:
        with pytest.raises(UnknownCode) as exc:
            await call(client, interface)
    assert exc.value.code == code


# ---------------------------------------------------------------- transport and the secret


@pytest.mark.parametrize(
    ("raised", "cls"),
    [
        (httpx.ReadTimeout("slow"), GatewayTimeout),
        (httpx.ConnectTimeout("slow"), GatewayTimeout),
        (httpx.ConnectError("refused"), GatewayUnavailable),
        (httpx.RemoteProtocolError("garbage"), GatewayUnavailable),
    ],
)
async def test_transport_failures(raised: Exception, cls: type[GatewayError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    async with client_with(handler) as client:
        with pytest.raises(cls) as exc:
            await client.send(prepare(), "")
    assert exc.value.interface == "SendSMS"


async def test_an_http_error_status_is_unavailable_with_the_body_kept() -> None:
    async with client_with(answering("<h1>502 Bad Gateway</h1>", status=502)) as client:
        with pytest.raises(GatewayUnavailable) as exc:
            await client.check("1", scheduled=False)
    assert "HTTP 502" in str(exc.value)
    assert exc.value.raw == "<h1>502 Bad Gateway</h1>"


async def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"20 wrong password {PASSWORD} for acct"
    async with client_with(answering(echo)) as client:
        assert PASSWORD not in repr(client)
        with pytest.raises(AuthenticationFailed) as exc:
            await client.send(prepare(), "")
    assert PASSWORD not in exc.value.raw
    assert PASSWORD not in str(exc.value)
    assert PASSWORD not in caplog.text
    assert "wrong password" in exc.value.raw
