"""The parts of outbound events that need no database: bodies, signatures, the retry
schedule, Retry-After, URLs and the addresses refused."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json

import pytest
from standardwebhooks import Webhook

from app.core.settings import DEFAULT_RETRY_SCHEDULE, SettingsError, load_settings
from app.core.times import utc_z
from app.events.attempts import next_delay, retry_after_seconds
from app.events.payloads import Signer, delivery_body, new_event_id
from app.events.urls import BadUrl, forbidden, normalize_url, target_of
from app.ingest.fold import DeliveryChange, DeliveryState, Previous

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
T = dt.datetime(2026, 11, 30, 8, 0, 1, 250000, tzinfo=dt.UTC)


def change(msgid: str, previous: Previous | None) -> DeliveryChange:
    state = DeliveryState(
        msgid, "+886912345678", 'batch "7"\\', "now", "UNDELIV", 0, "failed", True, False,
        T, T - dt.timedelta(seconds=5), T, 3, 99,
    )  # fmt: skip
    return DeliveryChange(state, 4 if previous else 1, previous)


@pytest.mark.parametrize("msgid", ["208217564", 'q"uo\\te', "訊息-1", "tab\there"])
@pytest.mark.parametrize("previous", [None, Previous("ENROUTE", "pending", False, T)])
def test_the_delivery_body_is_the_json_of_the_contract(
    msgid: str, previous: Previous | None
) -> None:
    body = delivery_body(change(msgid, previous), utc_z(T))
    assert json.loads(body) == {
        "type": "delivery.updated",
        "timestamp": "2026-11-30T08:00:01.25Z",
        "data": {
            "msgid": msgid,
            "batch_id": 'batch "7"\\',
            "mobile": "+886912345678",
            "type": "now",
            "status": "UNDELIV",
            "statuscode": 0,
            "outcome": "failed",
            "final": True,
            "inconsistent": False,
            "done_at": "2026-11-30T08:00:01.25Z",
            "first_received_at": "2026-11-30T07:59:56.25Z",
            "last_received_at": "2026-11-30T08:00:01.25Z",
            "reports": 3,
            "version": 4 if previous else 1,
            "previous": previous and {"status": "ENROUTE", "outcome": "pending", "final": False},
        },
    }


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (T, "2026-11-30T08:00:01.25Z"),
        (T.replace(microsecond=0), "2026-11-30T08:00:01Z"),
        (T.replace(microsecond=123456), "2026-11-30T08:00:01.123456Z"),
        (T.replace(microsecond=100), "2026-11-30T08:00:01.0001Z"),
        (T.astimezone(dt.timezone(dt.timedelta(hours=8))), "2026-11-30T08:00:01.25Z"),
        (dt.datetime(2, 1, 3, tzinfo=dt.UTC), "0002-01-03T00:00:00Z"),
    ],
)
def test_times_are_written_in_utc_with_a_z(value: dt.datetime, written: str) -> None:
    assert utc_z(value) == written


def test_event_ids_are_unique_and_sort_by_creation() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(i.startswith("msg_") for i in ids)
    assert sorted(ids, key=lambda i: i[4:16]) == sorted(ids, key=lambda i: i[4:16])


def test_signatures_verify_with_the_standard_webhooks_package() -> None:
    body = '{"type":"delivery.updated","data":{"msgid":"1"}}'
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = Signer([SECRET]).headers("msg_1", now, body).decode().split("\r\n")
    parsed = dict(line.split(": ", 1) for line in headers if line)
    assert Webhook(SECRET).verify(body, parsed) == json.loads(body)
    parsed["webhook-id"] = "msg_2"
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body, parsed)


def test_two_secrets_sign_twice_and_either_verifies() -> None:
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    lines = Signer([SECRET, other]).headers("msg_1", now, "{}").decode().split("\r\n")
    parsed = dict(line.split(": ", 1) for line in lines if line)
    assert len(parsed["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify("{}", parsed)
    Webhook(other).verify("{}", parsed)


def test_the_retry_schedule_with_jitter_then_failed() -> None:
    schedule = list(DEFAULT_RETRY_SCHEDULE)
    assert [s.total_seconds() for s in schedule] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    for attempts, wait in enumerate(schedule, start=1):
        for _ in range(50):
            delay = next_delay(attempts, schedule)
            assert delay is not None
            assert 0.8 * wait.total_seconds() <= delay <= 1.2 * wait.total_seconds()
    assert next_delay(len(schedule) + 1, schedule) is None
    # Retry-After: at least what it asks, up to an hour
    assert next_delay(1, schedule, retry_after=120) == 120
    assert next_delay(1, schedule, retry_after=99999) == 3600
    assert 240 <= next_delay(2, schedule, retry_after=1) <= 360  # type: ignore[operator]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC).timestamp()
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds("Mon, 30 Nov 2026 08:02:00 GMT", now) == 120
    assert retry_after_seconds("Mon, 30 Nov 2026 07:00:00 GMT", now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_the_schedule_setting() -> None:
    settings = load_settings(_env_file=None, webhook_retry_schedule="1s, 2m,1h")
    assert [s.total_seconds() for s in settings.webhook_retry_schedule] == [1, 120, 3600]
    for bad in ("", "0", "-5", "soon"):
        with pytest.raises(SettingsError, match="DLR_WEBHOOK_RETRY_SCHEDULE"):
            load_settings(_env_file=None, webhook_retry_schedule=bad)


def test_the_status_callback_secret_must_be_a_whsec_secret() -> None:
    assert load_settings(_env_file=None, status_callback_secret=SECRET)
    for bad in ("plain-secret-of-enough-length", "whsec_not base64!", "whsec_" + "QQ=="):
        with pytest.raises(SettingsError, match="DLR_STATUS_CALLBACK_SECRET"):
            load_settings(_env_file=None, status_callback_secret=bad)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
        "224.0.0.1", "239.1.2.3", "100.64.0.1", "::1", "::", "fe80::1", "fc00::1",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    ],
)  # fmt: skip
def test_addresses_a_webhook_must_not_reach(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_are_fine(address: str) -> None:
    assert not forbidden(ipaddress.ip_address(address))


def test_urls_are_normalised_and_taken_apart() -> None:
    url = normalize_url("HTTPS://Hooks.Example.com:443/a%20b?x=1#frag")
    assert url == "https://hooks.example.com/a%20b?x=1"
    target = target_of(url)
    assert (target.host, target.port, target.target) == ("hooks.example.com", 443, "/a%20b?x=1")
    assert target.host_header == "hooks.example.com" and target.origin.endswith(":443")
    odd = target_of(normalize_url("http://[::1]:8080"))
    assert (odd.host, odd.target, odd.host_header) == ("::1", "/", "[::1]:8080")
    assert target_of(normalize_url("https://bücher.de/x")).host == "xn--bcher-kva.de"
    for bad in (
        "ftp://x/",
        "http://u:p@x/",
        "http:///x",
        "x",
        "http://x/a\nb",
        "http://" + "a" * 3000,
    ):
        with pytest.raises(BadUrl):
            normalize_url(bad)
