"""Local calendar buckets (hours or days of an IANA zone) as UTC boundaries: pure, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable
from typing import Literal
from zoneinfo import ZoneInfo

Interval = Literal["hour", "day"]
MAX_BUCKETS = 10_000

_PERIOD = {"hour": 3600, "day": 86400}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class TooManyBuckets(ValueError):
    """The range would need more than MAX_BUCKETS buckets."""


def to_epoch(when: dt.datetime) -> int:
    """Whole UTC seconds since 1970, rounded down (every boundary is a whole second)."""
    delta = when - _EPOCH
    return delta.days * 86400 + delta.seconds


def from_epoch(seconds: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=seconds)


class LocalCalendar:
    """Cuts time at the local hour or day boundaries of one zone.

    An instant's bucket is its local date (day), or its local date, hour and UTC offset
    (hour): a day across a daylight-saving switch is 23 or 25 hours long, and the repeated
    local hour of an autumn switch is two buckets. Between offset changes the boundaries
    follow from the offset alone; the changes themselves are found by bisection, because
    zoneinfo does not expose its transition table.
    """

    def __init__(self, zone: ZoneInfo, interval: Interval) -> None:
        self.zone = zone
        self.period = _PERIOD[interval]
        self._key: Callable[[int], Hashable] = (
            self._day_key if interval == "day" else self._hour_key
        )

    def local(self, seconds: int) -> dt.datetime:
        return from_epoch(seconds).astimezone(self.zone)

    def _offset(self, seconds: int) -> int:
        offset = self.local(seconds).utcoffset()
        assert offset is not None
        return int(offset.total_seconds())

    def _day_key(self, seconds: int) -> Hashable:
        return self.local(seconds).date()

    def _hour_key(self, seconds: int) -> Hashable:
        local = self.local(seconds)
        return local.date(), local.hour, local.utcoffset()

    def _first_change(self, after: int, until: int) -> int:
        """The first instant in (after, until] whose offset differs from the one at `after`;
        the caller knows that the offset at `until` differs."""
        offset = self._offset(after)
        lo, hi = after, until
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._offset(mid) == offset:
                lo = mid
            else:
                hi = mid
        return hi

    def bucket_start(self, seconds: int) -> int:
        """The first instant of the bucket that holds `seconds`."""
        key = self._key(seconds)
        current = seconds
        while True:
            offset = self._offset(current)
            candidate = (current + offset) // self.period * self.period - offset
            if self._offset(candidate) == offset:
                return candidate
            change = self._first_change(candidate, current)
            if self._key(change - 1) != key:
                return change
            current = change - 1

    def next_start(self, seconds: int) -> int:
        """The first instant after `seconds` that lies in another bucket."""
        key = self._key(seconds)
        current = seconds
        while True:
            offset = self._offset(current)
            candidate = ((current + offset) // self.period + 1) * self.period - offset
            if self._offset(candidate - 1) != offset:
                candidate = self._first_change(current, candidate - 1)
            if self._key(candidate) != key:
                return candidate
            current = candidate

    def boundaries(self, start: dt.datetime, end: dt.datetime) -> list[int]:
        """Bucket starts (epoch seconds) from the one holding `start` to the one holding the
        instant before `end`; raise TooManyBuckets past MAX_BUCKETS."""
        # `end` is exclusive: the last bucket holds the whole second before it.
        stop = to_epoch(end) - (1 if end.microsecond == 0 else 0)
        starts = [self.bucket_start(to_epoch(start))]
        while True:
            following = self.next_start(starts[-1])
            if following > stop:
                return starts
            if len(starts) >= MAX_BUCKETS:
                raise TooManyBuckets(
                    f"the range needs more than {MAX_BUCKETS} buckets; "
                    "shorten it or use a longer interval"
                )
            starts.append(following)
