"""The dashboard's pure parts: session tokens, number masking, time windows, chart layout."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
from itsdangerous.encoding import base64_decode, base64_encode
from pydantic import SecretStr

from app.dashboard import charts, sessions
from app.dashboard.data import window
from app.dashboard.views import mask_text
from tests.conftest import make_settings

NOW = 1_800_000_000.0


def settings(keys: str = "") -> object:
    return make_settings("sqlite:///unused.db", api_keys=keys)


def test_a_session_is_signed_for_its_key_and_expires() -> None:
    keyed = settings("alpha-key,beta-key")
    session = sessions.issue(keyed, "alpha-key", now=NOW)  # type: ignore[arg-type]
    assert session.new and "alpha-key" not in session.token
    again = sessions.verify(keyed, session.token, now=NOW + 60)  # type: ignore[arg-type]
    assert again is not None
    assert (again.key_id, again.csrf, again.new) == (session.key_id, session.csrf, False)
    late = NOW + sessions.LIFETIME_SECONDS + 1
    assert sessions.verify(keyed, session.token, now=late) is None  # type: ignore[arg-type]
    payload, sig = session.token.split(".")
    fields = json.loads(base64_decode(payload))
    longer = base64_encode(json.dumps({**fields, "e": fields["e"] + 3600}, separators=(",", ":")))
    other = sessions.issue(settings("gamma-key"), "gamma-key", now=NOW)  # type: ignore[arg-type]
    for forged in (
        f"{longer.decode()}.{sig}",  # a longer life under the old signature
        f"{payload}x.{sig}",
        f"{payload}.{sig[:-2]}AA",
        other.token,  # signed for a key that is not configured
        "",
        "a.b.c",
        "x" * 600,
    ):
        assert sessions.verify(keyed, forged, now=NOW) is None, forged  # type: ignore[arg-type]
    # the key is gone from the settings: its sessions are too
    assert sessions.verify(settings("beta-key"), session.token, now=NOW) is None  # type: ignore[arg-type]
    # an open dashboard's session opens nothing once keys are set
    open_session = sessions.issue(settings(), None, now=NOW)  # type: ignore[arg-type]
    assert sessions.verify(keyed, open_session.token, now=NOW) is None  # type: ignore[arg-type]


def test_csrf_tokens_differ_between_sessions() -> None:
    keyed = settings("alpha-key")
    one = sessions.issue(keyed, "alpha-key", now=NOW)  # type: ignore[arg-type]
    two = sessions.issue(keyed, "alpha-key", now=NOW)  # type: ignore[arg-type]
    assert one.csrf != two.csrf
    assert sessions.csrf_ok(one, one.csrf)
    assert not sessions.csrf_ok(one, two.csrf)
    assert not sessions.csrf_ok(one, None)
    assert not sessions.csrf_ok(one, "")


def test_matching_key() -> None:
    keys = [SecretStr("a"), SecretStr("b")]
    assert sessions.matching_key("b", keys) == "b"
    assert sessions.matching_key("c", keys) is None
    assert sessions.matching_key("", keys[:1]) is None


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("ID=1&mobile=0912345678&x=1", "ID=1&mobile=0912***678&x=1"),
        ("mobile=%2B886912345678", "mobile=0912***678"),
        ("MOBILE=12345", "MOBILE=***"),
        ('{"ID": "1", "mobile": 912345678}', '{"ID": "1", "mobile": 0912***678}'),
        ('{"Mobile":"+886 0912345678"}', '{"Mobile":"0912***678"}'),
        ('name="mobile"\r\n\r\n+886-912-345-678\r\n', 'name="mobile"\r\n\r\n0912***678\r\n'),
        ("to 0912.345.678 and 886912345678", "to 0912***678 and 0912***678"),
        # not numbers: a long done time and a short msgid stay as they are
        ("donetime=20031122134850&msgid=208217564", "donetime=20031122134850&msgid=208217564"),
    ],
)
def test_mask_text(raw: str, masked: str) -> None:
    assert mask_text(raw) == masked


@pytest.mark.parametrize("zone", ["Asia/Taipei", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    "now",
    [
        dt.datetime(2026, 11, 26, 5, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 8, 7, 30, tzinfo=dt.UTC),  # New York's spring switch
        dt.datetime(2026, 4, 5, 12, 0, tzinfo=dt.UTC),  # Lord Howe's half-hour switch
    ],
)
def test_windows_hold_now_and_whole_local_buckets(zone: str, now: dt.datetime) -> None:
    tz = ZoneInfo(zone)
    start, end = window(tz, "hour", 24, now)
    assert start <= now < end
    assert start.astimezone(tz).minute in (0, 30)  # Lord Howe's hours may start at :30
    assert dt.timedelta(hours=22) < end - start <= dt.timedelta(hours=25)
    start, end = window(tz, "day", 30, now)
    assert start <= now < end
    assert start.astimezone(tz).time() == dt.time(0)
    assert end.astimezone(tz).time() == dt.time(0)
    assert (end.astimezone(tz).date() - start.astimezone(tz).date()).days == 30


def bucket(hour: int, delivered: int = 0, failed: int = 0, pending: int = 0) -> dict[str, object]:
    n = delivered + failed + pending
    return {
        "start": dt.datetime(2026, 11, 26, hour, tzinfo=ZoneInfo("Asia/Taipei")),
        "deliveries": n,
        "delivered": delivered,
        "failed": failed,
        "pending": pending,
        "by_status": {},
        "delivery_rate": delivered / n if n else None,
    }


def test_chart_stacks_bars_to_scale_and_breaks_the_rate_line_at_empty_hours() -> None:
    buckets = [bucket(0, 6, 2, 1), bucket(1), bucket(2, 3), bucket(3, 1, 1), bucket(4, 0, 0, 0)]
    totals = {
        "deliveries": 14,
        "delivered": 10,
        "failed": 3,
        "pending": 1,
        "delivery_rate": 10 / 14,
    }
    chart = charts.build_chart("h", "Per hour", {"buckets": buckets, "totals": totals}, "hour")
    base = charts.TOP + charts.PLOT_H
    top_tick = max(int(label) for _, label in chart.ticks)
    assert top_tick >= 9 and chart.ticks[0] == (base, "0")
    first = chart.columns[0]
    assert [s.kind for s in first.segments] == ["delivered", "failed", "pending"]
    # the stack reaches exactly 9/top of the plot, without gaps between segments
    assert sum(s.height for s in first.segments) == pytest.approx(
        9 / top_tick * charts.PLOT_H, abs=0.2
    )
    assert first.segments[0].y + first.segments[0].height == pytest.approx(base)
    assert chart.columns[1].segments == []
    # hours 0 and 2-3 have a rate; hour 1 and 4 have none: two lines, hour 0 a lone dot
    assert len(chart.rate_dots) == 3
    assert len(chart.rate_lines) == 1 and chart.rate_lines[0].count(",") == 2
    assert first.summary.startswith("2026-11-26 00:00: 9 deliveries, 6 delivered")
    assert chart.desc.startswith("14 deliveries in 5 hours")
    assert "Busiest hour: 2026-11-26 00:00 with 9." in chart.desc
    assert [label for _, label in chart.x_labels] == ["00", "03"]


def test_an_empty_chart_says_so() -> None:
    totals = {"deliveries": 0, "delivered": 0, "failed": 0, "pending": 0, "delivery_rate": None}
    chart = charts.build_chart("d", "Per day", {"buckets": [bucket(0)], "totals": totals}, "day")
    assert chart.desc == "No deliveries in these 1 days."
    assert chart.rate_lines == [] and chart.ticks[-1][1] == "1"


@pytest.mark.parametrize(
    ("top", "step"), [(0, 1), (3, 1), (9, 5), (40, 10), (101, 50), (12345, 5000)]
)
def test_nice_step(top: int, step: int) -> None:
    assert charts.nice_step(top) == step
