"""The callback parser as pure functions: every field rule, every time format."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.mobiles import mask_mobile, normalize_mobile, normalize_mobile_phonenumbers
from app.ingest.errors import CallbackRejected
from app.ingest.parse import parse_callback, parse_donetime
from tests.conftest import SEED_REPORT, report
from tests.helpers import grown_by

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)
FORM = "application/x-www-form-urlencoded"


def parse(fields: dict[str, str], content_type: str = FORM, query: str = "") -> object:
    return parse_callback(content_type, urlencode(fields).encode(), query.encode(), TAIPEI, NOW)


def errors_of(fields: dict[str, str]) -> dict[str, str]:
    with pytest.raises(CallbackRejected) as info:
        parse(fields)
    assert info.value.reason == "invalid_fields"
    return {e["field"]: e["message"] for e in info.value.errors}


def test_seed_example_parses_to_utc_and_e164() -> None:
    r = parse(SEED_REPORT)
    assert r.batch_id == "123456"
    assert r.msgid == "208217564"
    assert r.mobile == "+886922161529"
    assert r.type == "now"
    assert r.done_at == dt.datetime(2003, 5, 22, 5, 48, 50, tzinfo=dt.UTC)
    assert (r.statuscode, r.status, r.outcome, r.final, r.inconsistent) == (
        1,
        "DELIVRD",
        "delivered",
        True,
        False,
    )


@pytest.mark.parametrize(
    "value, expected_utc",
    [
        ("2003/05/22 13:48:50", "2003-05-22T05:48:50"),
        ("2003-05-22 13:48:50", "2003-05-22T05:48:50"),
        ("2003/05/22 13:48", "2003-05-22T05:48:00"),
        ("20030522134850", "2003-05-22T05:48:50"),
        ("200305221348", "2003-05-22T05:48:00"),
        ("0305221348", "2003-05-22T05:48:00"),
        ("2003-05-22T13:48:50+08:00", "2003-05-22T05:48:50"),
        ("2003-05-22T05:48:50Z", "2003-05-22T05:48:50"),
        ("2003-05-22T07:48:50+02:00", "2003-05-22T05:48:50"),
        ("2003-05-22T13:48:50", "2003-05-22T05:48:50"),
        ("2003-05-22T11:03:50+05:15", "2003-05-22T05:48:50"),
        ("2003-05-22T05:48:50.250Z", "2003-05-22T05:48:50.250000"),
        # Taipei midnight is the previous UTC day
        ("2026/01/01 00:00:00", "2025-12-31T16:00:00"),
        ("2000/01/01 00:00:00", "1999-12-31T16:00:00"),
        # up to 24 hours after receipt is allowed (clock skew)
        ("2026/11/27 12:00:00", "2026-11-27T04:00:00"),
    ],
)
def test_donetime_formats(value: str, expected_utc: str) -> None:
    got = parse_donetime(value, TAIPEI, NOW)
    assert got.tzinfo is not None
    assert got.astimezone(dt.UTC).replace(tzinfo=None).isoformat() == expected_utc


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2003/13/22 13:48:50",
        "2003/02/30 13:48:50",
        "2003/05/22 24:00:00",
        "2003/05/22 13:61:00",
        "2003/05/22",
        "2003-05-22",
        "20030522",
        "2003052213485",
        "200305221348501",
        "03/05/22 13:48:50",
        "2003/5/22 13:48:50",
        "2003.05.22 13:48:50",
        "1999/12/31 23:59:59",
        "9912311200",  # 2099: far in the future
        "2026/11/27 12:00:01",  # just over 24 hours after receipt
        "2003-05-22T13:48:50+25:00",
        "\uff11\uff12\uff13",  # full-width digits
    ],
)
def test_donetime_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_donetime(value, TAIPEI, NOW)


def test_donetime_in_another_gateway_zone() -> None:
    got = parse_donetime("2003/05/22 13:48:50", ZoneInfo("UTC"), NOW)
    assert got == dt.datetime(2003, 5, 22, 13, 48, 50, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "value",
    [
        "0912345678",
        "+886912345678",
        "886912345678",
        "912345678",
        "+886 0912345678",
        "0912-345-678",
        "0912.345.678",
        " 0912 345 678 ",
        "+886-912-345-678",
    ],
)
def test_mobile_accepted_forms(value: str) -> None:
    assert normalize_mobile(value.strip()) == "+886912345678"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0812345678",
        "02-2345-6789",
        "091234567",
        "09123456789",
        "+85291234567",
        "+1 912345678",
        "0912abc678",
        "09ABCDEFGH",
        "(0912)345678",
        "++886912345678",
        "0912345678 ext 1",
        "+886 00912345678",
        "0\uff10912345678",
        "886 886912345678",
    ],
)
def test_mobile_rejected(value: str) -> None:
    assert normalize_mobile(value) is None


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.from_regex(r"(\+?886 ?0?|0)?9[0-9 .\-]{8,11}", fullmatch=True),
        st.from_regex(r"\+?[0-9 .\-]{0,16}", fullmatch=True),
        st.text(max_size=20),
    )
)
def test_fast_mobile_path_agrees_with_phonenumbers(value: str) -> None:
    assert normalize_mobile(value) == normalize_mobile_phonenumbers(value)


def test_mask_mobile() -> None:
    assert mask_mobile("+886912345678") == "0912***678"
    assert mask_mobile("+886 0912-345-678") == "0912***678"
    assert mask_mobile("12345") == "***"


def test_an_over_long_mobile_is_a_field_error_not_a_cache_entry() -> None:
    long = "+886 " + "0" * 40 + "912345678"
    assert errors_of(report(mobile=long)) == {"mobile": "is longer than 32 characters"}


def test_the_number_cache_keeps_no_long_keys() -> None:
    def long_numbers() -> None:
        for i in range(1500):
            assert normalize_mobile(f"{i:05d}" + "1" * 20_000) is None

    assert grown_by(long_numbers) < 2_000_000


def test_the_donetime_cache_keeps_no_long_keys() -> None:
    # The slash format allows any run of spaces between date and time.
    def long_times() -> None:
        for i in range(1500):
            with pytest.raises(ValueError, match="longer than 40"):
                parse_donetime("2003/05/22" + " " * (20_000 + i) + "13:48:50", TAIPEI, NOW)

    assert grown_by(long_times) < 2_000_000


@pytest.mark.parametrize(
    "word, code, outcome, final, inconsistent",
    [
        ("DELIVRD", 1, "delivered", True, False),
        ("DELIVRD", 0, "delivered", True, True),
        ("EXPIRED", 0, "failed", True, False),
        ("DELETED", 0, "failed", True, False),
        ("UNDELIV", 0, "failed", True, False),
        ("REJECTD", 0, "failed", True, False),
        ("SYNTAXE", 0, "failed", True, False),
        ("UNKNOWN", 0, "failed", True, False),
        ("UNDELIV", 1, "failed", True, True),
        ("ACCEPTD", 1, "delivered", True, False),
        ("ACCEPTD", 0, "failed", True, False),
        ("ENROUTE", 0, "pending", False, False),
        ("ENROUTE", 1, "pending", False, False),
        ("SOMETHING", 1, "delivered", True, False),
        ("SOMETHING", 0, "failed", True, False),
    ],
)
def test_outcome_per_status_word(
    word: str, code: int, outcome: str, final: bool, inconsistent: bool
) -> None:
    r = parse(report(statusstr=word.lower(), statuscode=str(code)))
    assert r.status == word
    assert (r.outcome, r.final, r.inconsistent) == (outcome, final, inconsistent)


@pytest.mark.parametrize(
    "field, value",
    [
        ("ID", ""),
        ("ID", "a b"),
        ("ID", "x" * 65),
        ("ID", "tab\there"),
        ("ID", "nul\x00"),
        ("msgid", ""),
        ("msgid", "12 34"),
        ("msgid", "y" * 65),
        ("msgid", "\u200b"),
        ("type", "later"),
        ("type", ""),
        ("type", "nowx"),
        ("mobile", "02-2345-6789"),
        ("mobile", ""),
        ("donetime", "not a time"),
        ("statuscode", "2"),
        ("statuscode", "01"),
        ("statuscode", "yes"),
        ("statuscode", ""),
        ("statusstr", ""),
        ("statusstr", "DELIV-RD"),
        ("statusstr", "A" * 17),
        ("statusstr", "DÉLIVRD"),
    ],
)
def test_invalid_field_values(field: str, value: str) -> None:
    assert field in errors_of(report(**{field: value}))


@pytest.mark.parametrize("field", list(SEED_REPORT))
def test_each_field_is_required(field: str) -> None:
    assert errors_of(report(**{field: None}))[field] == "is required"  # type: ignore[arg-type]


def test_every_bad_field_is_listed_at_once() -> None:
    errors = errors_of({"ID": "1", "type": "x", "statuscode": "7"})
    assert set(errors) == {"msgid", "type", "mobile", "donetime", "statuscode", "statusstr"}


def test_identifiers_keep_their_spelling_and_accept_64_printable_characters() -> None:
    r = parse(report(ID="Ab-0123/x", msgid="m" * 64))
    assert r.batch_id == "Ab-0123/x"
    assert r.msgid == "m" * 64
    assert parse(report(msgid="訊息編號")).msgid == "訊息編號"


def test_type_any_case_and_values_trimmed() -> None:
    r = parse(report(type="  DLV ", statusstr=" delivrd ", msgid=" 208217564 "))
    assert (r.type, r.status, r.msgid) == ("scheduled", "DELIVRD", "208217564")


def test_names_case_insensitive_and_status_alias() -> None:
    fields = {
        "id": "123456",
        "MSGID": "208217564",
        "Type": "Now",
        "Mobile": "0922161529",
        "DoneTime": "2003/05/22 13:48:50",
        "STATUS": "1",
        "StatusStr": "DELIVRD",
    }
    assert parse(fields) == parse(SEED_REPORT)


def test_same_field_twice_with_same_value_is_fine_different_is_invalid() -> None:
    body = urlencode(SEED_REPORT) + "&id=123456"
    assert parse_callback(FORM, body.encode(), b"", TAIPEI, NOW).batch_id == "123456"
    body = urlencode(SEED_REPORT) + "&Id=999"
    with pytest.raises(CallbackRejected) as info:
        parse_callback(FORM, body.encode(), b"", TAIPEI, NOW)
    assert info.value.errors == [{"field": "ID", "message": "given twice with different values"}]
    body = urlencode(report(statuscode=None)) + "&status=1&statuscode=0"  # type: ignore[arg-type]
    with pytest.raises(CallbackRejected):
        parse_callback(FORM, body.encode(), b"", TAIPEI, NOW)


def test_query_fills_fields_the_body_lacks_but_may_not_contradict_it() -> None:
    body = urlencode(report(ID=None)).encode()  # type: ignore[arg-type]
    assert parse_callback(FORM, body, b"ID=123456", TAIPEI, NOW).batch_id == "123456"
    assert parse_callback(FORM, body, b"id=123456&msgid=208217564", TAIPEI, NOW)
    with pytest.raises(CallbackRejected):
        parse_callback(FORM, body, b"ID=123456&msgid=other", TAIPEI, NOW)


def test_empty_body_with_query_only_for_any_content_type() -> None:
    query = urlencode(SEED_REPORT).encode()
    for content_type in ("", FORM, "application/json", "text/plain"):
        assert parse_callback(content_type, b"", query, TAIPEI, NOW).msgid == "208217564"


def test_json_strings_and_numbers() -> None:
    body = json.dumps({**SEED_REPORT, "ID": 123456, "msgid": 208217564, "statuscode": 1})
    r = parse_callback("application/json; charset=utf-8", body.encode(), b"", TAIPEI, NOW)
    assert (r.batch_id, r.msgid, r.statuscode) == ("123456", "208217564", 1)


@pytest.mark.parametrize(
    "value",
    [True, None, [1], {"a": 1}, 1.5],
)
def test_json_values_of_other_types_are_invalid(value: object) -> None:
    body = json.dumps({**SEED_REPORT, "statuscode": value}).encode()
    with pytest.raises(CallbackRejected) as info:
        parse_callback("application/json", body, b"", TAIPEI, NOW)
    assert info.value.reason == "invalid_fields"
    assert info.value.errors[0]["field"] == "statuscode"


def test_json_duplicate_keys_with_different_values() -> None:
    body = (
        b'{"ID": "1", "id": "2", "msgid": "m", "type": "Now", "mobile": "0912345678", '
        b'"donetime": "2003/05/22 13:48:50", "statuscode": 1, "statusstr": "DELIVRD"}'
    )
    with pytest.raises(CallbackRejected) as info:
        parse_callback("application/json", body, b"", TAIPEI, NOW)
    assert info.value.errors[0]["field"] == "ID"


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"text"',
        b"42",
        b"\xff\xfe{}",
        b"[" * 100000 + b"]" * 100000,
        b'{"statuscode": NaN}',
        b"{'ID': 1}",
    ],
)
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(CallbackRejected) as info:
        parse_callback("application/json", body, b"", TAIPEI, NOW)
    assert info.value.reason == "malformed_body"


def test_multipart_form() -> None:
    boundary = "XyZ123"
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in SEED_REPORT.items()
    )
    body = (parts + f"--{boundary}--\r\n").encode()
    r = parse_callback(f"multipart/form-data; boundary={boundary}", body, b"", TAIPEI, NOW)
    assert r == parse(SEED_REPORT)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"not multipart at all"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="ID"\r\n\r\n1\r\n',
        ),
        (FORM, b"ID=%FF%FE"),
    ],
)
def test_malformed_bodies(content_type: str, body: bytes) -> None:
    with pytest.raises(CallbackRejected) as info:
        parse_callback(content_type, body, b"", TAIPEI, NOW)
    assert info.value.reason == "malformed_body"


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/xml", "image/png"])
def test_other_content_types_are_unsupported(content_type: str) -> None:
    with pytest.raises(CallbackRejected) as info:
        parse_callback(content_type, urlencode(SEED_REPORT).encode(), b"", TAIPEI, NOW)
    assert info.value.reason == "unsupported_media_type"


def test_same_report_spelled_differently_has_one_identity() -> None:
    a = parse(SEED_REPORT)
    b = parse(
        report(
            mobile="+886 922-161-529", donetime="20030522134850", statusstr="delivrd", type="NOW"
        )
    )
    c = parse(report(mobile="922161529", donetime="2003-05-22T05:48:50Z"))
    assert a.key == b.key == c.key
    assert parse(report(statuscode="0")).key != a.key
    assert parse(report(ID="123457")).key != a.key


def test_ids_differing_in_case_are_different_reports() -> None:
    assert parse(report(msgid="abc")).key != parse(report(msgid="ABC")).key


# Any input either parses or raises CallbackRejected: nothing else escapes.
_names = st.sampled_from(
    ["ID", "id", "msgid", "type", "mobile", "donetime", "statuscode", "status", "statusstr", "x"]
)
_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(list(SEED_REPORT.values())),
    st.from_regex(r"\+?[0-9 .\-]{0,20}", fullmatch=True),
    st.from_regex(r"\d{10,14}", fullmatch=True),
)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.lists(st.tuples(_names, _values), max_size=12),
    content_type=st.sampled_from(
        [FORM, "application/json", "multipart/form-data; boundary=b", "text/plain", ""]
    ),
    raw=st.binary(max_size=200),
    use_raw=st.booleans(),
)
def test_property_parses_or_rejects(
    fields: list[tuple[str, str]], content_type: str, raw: bytes, use_raw: bool
) -> None:
    if use_raw:
        body = raw
    elif content_type == "application/json":
        body = (
            "{" + ",".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fields) + "}"
        ).encode()
    else:
        body = urlencode(fields).encode()
    try:
        r = parse_callback(content_type, body, b"", TAIPEI, NOW)
    except CallbackRejected as exc:
        assert exc.reason in ("invalid_fields", "malformed_body", "unsupported_media_type")
        assert exc.errors and all(set(e) == {"field", "message"} for e in exc.errors)
    else:
        assert r.mobile.startswith("+8869") and len(r.mobile) == 13
        assert r.done_at.tzinfo is not None
        assert r.statuscode in (0, 1)
