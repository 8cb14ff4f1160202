"""Chart geometry for server-side SVG: stacked volume bars and a delivery-rate line, pure."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.read.buckets import Interval

WIDTH = 480
HEIGHT = 210
LEFT = 34  # room for the volume axis
RIGHT = 42  # room for the rate axis
TOP = 10
BOTTOM = 24
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM
KINDS = ("delivered", "failed", "pending")  # stacked from the bottom up


def nice_step(top: float, ticks: int = 4) -> int:
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` steps up to `top`."""
    raw = max(top / ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return int(factor * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def percent(rate: float | None) -> str:
    return "\u2013" if rate is None else f"{rate * 100:.1f}%"


def bucket_label(start: dt.datetime, interval: Interval) -> str:
    """How a bucket is named in tooltips and tables (local time of its zone)."""
    if interval == "hour":
        return f"{start:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d}"


def axis_label(start: dt.datetime, interval: Interval) -> str:
    return f"{start:%H}" if interval == "hour" else f"{start:%m/%d}"


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str
    y: float
    height: float


@dataclass(frozen=True, slots=True)
class Column:
    x: float
    width: float
    label: str
    summary: str
    counts: dict[str, Any]
    segments: list[Segment]


@dataclass(slots=True)
class Chart:
    """Everything a template needs to draw one chart and describe it in words."""

    id: str
    title: str
    desc: str
    interval: Interval
    columns: list[Column] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    rate_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    rate_lines: list[str] = field(default_factory=list)
    rate_dots: list[tuple[float, float]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    plot: tuple[int, int, int, int] = (LEFT, TOP, PLOT_W, PLOT_H)


def _summary(label: str, counts: dict[str, Any]) -> str:
    return (
        f"{label}: {counts['deliveries']} deliveries, {counts['delivered']} delivered, "
        f"{counts['failed']} failed, {counts['pending']} pending, "
        f"delivery rate {percent(counts['delivery_rate'])}"
    )


def describe(totals: dict[str, Any], columns: Sequence[Column], unit: str) -> str:
    """The chart in one or two sentences, for its <desc> and for screen readers."""
    if not totals["deliveries"]:
        return f"No deliveries in these {len(columns)} {unit}s."
    busiest = max(columns, key=lambda c: c.counts["deliveries"])
    return (
        f"{totals['deliveries']} deliveries in {len(columns)} {unit}s: "
        f"{totals['delivered']} delivered, {totals['failed']} failed, "
        f"{totals['pending']} pending; delivery rate {percent(totals['delivery_rate'])}. "
        f"Busiest {unit}: {busiest.label} with {busiest.counts['deliveries']}."
    )


def build_chart(chart_id: str, title: str, stats: dict[str, Any], interval: Interval) -> Chart:
    """Lay out the buckets of a delivery_stats answer as stacked bars and a rate line."""
    buckets: list[dict[str, Any]] = stats["buckets"]
    n = max(len(buckets), 1)
    peak = max((b["deliveries"] for b in buckets), default=0)
    step = nice_step(peak)
    top = max(step * math.ceil(peak / step), step)
    slot = PLOT_W / n
    base = TOP + PLOT_H

    def y_of(value: float) -> float:
        return round(base - value / top * PLOT_H, 1)

    chart = Chart(chart_id, title, "", interval)
    chart.ticks = [(y_of(v), str(v)) for v in range(0, top + 1, step)]
    chart.rate_ticks = [(round(base - r * PLOT_H, 1), f"{int(r * 100)}%") for r in (0, 0.5, 1)]
    every = 3 if interval == "hour" else 5
    line: list[str] = []
    for i, bucket in enumerate(buckets):
        x = LEFT + i * slot
        label = bucket_label(bucket["start"], interval)
        segments = []
        stacked = 0
        for kind in KINDS:
            if bucket[kind]:
                segments.append(Segment(kind, y_of(stacked + bucket[kind]), 0.0))
                stacked += bucket[kind]
        # heights from consecutive tops, so rounding never leaves gaps between segments
        tops = [s.y for s in segments]
        bottoms = [y_of(0), *tops][: len(tops)]
        segments = [
            Segment(s.kind, s.y, round(b - s.y, 1)) for s, b in zip(segments, bottoms, strict=True)
        ]
        counts = {k: bucket[k] for k in ("deliveries", *KINDS, "delivery_rate", "by_status")}
        chart.columns.append(
            Column(
                round(x + slot * 0.15, 1),
                round(slot * 0.7, 1),
                label,
                _summary(label, counts),
                counts,
                segments,
            )
        )
        if i % every == 0:
            chart.x_labels.append((round(x + slot / 2, 1), axis_label(bucket["start"], interval)))
        rate = bucket["delivery_rate"]
        if rate is None:
            if len(line) > 1:
                chart.rate_lines.append(" ".join(line))
            line = []
            continue
        point = (round(x + slot / 2, 1), round(base - rate * PLOT_H, 1))
        chart.rate_dots.append(point)
        line.append(f"{point[0]},{point[1]}")
    if len(line) > 1:
        chart.rate_lines.append(" ".join(line))
    chart.desc = describe(stats["totals"], chart.columns, interval)
    return chart
