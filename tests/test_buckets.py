"""Local calendar buckets of every IANA zone, checked against their definition."""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.read.buckets import MAX_BUCKETS, LocalCalendar, TooManyBuckets, from_epoch, to_epoch

ZONES = sorted(available_timezones())
UTC = dt.UTC


def key(zone: ZoneInfo, interval: str, seconds: int) -> Hashable:
    """The contract's bucket of an instant: its local day, or local hour and offset."""
    local = from_epoch(seconds).astimezone(zone)
    if interval == "day":
        return local.date()
    return local.date(), local.hour, local.utcoffset()


@settings(max_examples=300, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    interval=st.sampled_from(["hour", "day"]),
    when=st.datetimes(
        min_value=dt.datetime(2000, 1, 1),
        max_value=dt.datetime(2037, 12, 31),
        timezones=st.just(UTC),
    ),
)
def test_bucket_is_the_run_of_instants_with_one_local_hour_or_day(
    zone_name: str, interval: str, when: dt.datetime
) -> None:
    zone = ZoneInfo(zone_name)
    calendar = LocalCalendar(zone, interval)  # type: ignore[arg-type]
    t = to_epoch(when)
    start = calendar.bucket_start(t)
    end = calendar.next_start(start)
    assert start <= t < end
    bucket = key(zone, interval, t)
    assert key(zone, interval, start - 1) != bucket
    assert key(zone, interval, end) != bucket
    # Offsets in use since 2000 are whole quarter hours, and so are the transitions.
    assert all(key(zone, interval, x) == bucket for x in range(start, end, 900))
    assert key(zone, interval, end - 1) == bucket


def starts(zone: str, interval: str, start: str, end: str) -> list[str]:
    calendar = LocalCalendar(ZoneInfo(zone), interval)  # type: ignore[arg-type]
    bounds = calendar.boundaries(dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))
    return [calendar.local(b).isoformat() for b in bounds]


def test_days_that_do_not_start_at_midnight_or_do_not_exist() -> None:
    # Santiago springs forward at midnight: 2026-09-06 begins at 01:00.
    assert starts("America/Santiago", "day", "2026-09-05T12:00:00Z", "2026-09-07T12:00:00Z") == [
        "2026-09-05T00:00:00-04:00",
        "2026-09-06T01:00:00-03:00",
        "2026-09-07T00:00:00-03:00",
    ]
    # Samoa skipped 2011-12-30 when it moved across the date line.
    assert starts(
        "Pacific/Apia", "day", "2011-12-29T12:00:00-10:00", "2011-12-31T12:00:00+14:00"
    ) == [
        "2011-12-29T00:00:00-10:00",
        "2011-12-31T00:00:00+14:00",
    ]


def test_half_hour_switch_makes_a_half_hour_bucket() -> None:
    # Lord Howe turns 02:00 +11:00 back to 01:30 +10:30.
    assert starts(
        "Australia/Lord_Howe", "hour", "2026-04-04T14:00:00Z", "2026-04-04T16:00:00Z"
    ) == [
        "2026-04-05T01:00:00+11:00",
        "2026-04-05T01:30:00+10:30",
        "2026-04-05T02:00:00+10:30",
    ]


def test_end_is_exclusive_to_the_microsecond() -> None:
    assert starts("UTC", "hour", "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z") == [
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T01:00:00+00:00",
    ]
    assert len(starts("UTC", "hour", "2026-01-01T00:00:00Z", "2026-01-01T02:00:00.000001Z")) == 3


def test_more_than_the_maximum_is_refused() -> None:
    calendar = LocalCalendar(ZoneInfo("UTC"), "hour")
    start = dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert len(calendar.boundaries(start, start + dt.timedelta(hours=MAX_BUCKETS))) == MAX_BUCKETS
    with pytest.raises(TooManyBuckets, match=str(MAX_BUCKETS)):
        calendar.boundaries(start, start + dt.timedelta(hours=MAX_BUCKETS, seconds=1))
