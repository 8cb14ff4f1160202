"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from app.core.statuses import KNOWN_WORDS, classify

# Every label value the service can produce, so each series exists (at 0) from the start:
# dashboards and rate() then see a flat line instead of "no data".
REJECTION_REASONS = (
    "invalid_fields",
    "malformed_body",
    "unsupported_media_type",
    "storage_refused",
)
UNAVAILABLE_CAUSES = ("database", "saturated", "timeout", "stopping", "quarantine")
EVENT_TYPES = ("delivery.updated", "callback.rejected")
EVENT_RESULTS = (
    "delivered",
    "http_error",
    "redirect",
    "gone",
    "timeout",
    "connection_error",
    "refused",
)
SUPPRESSION_SOURCES = ("automatic", "manual")

# The *_created series double every counter's cardinality for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]


def status_label(status: str) -> str:
    """Status words outside the documented set share one label, so labels stay bounded."""
    return status if status in KNOWN_WORDS else "OTHER"


def report_series() -> set[tuple[str, str]]:
    """Every (outcome, status label) pair a stored report can count under."""
    return {(classify(word, code)[0], word) for word in (*KNOWN_WORDS, "OTHER") for code in (0, 1)}


class Metrics:
    """Every metric the service exports; label values are never numbers, ids or tokens.

    Names follow Prometheus practice: the `mboxii_dlr_` prefix, base units (`_seconds`),
    `_total` on counters (added by the client library). HTTP series are labelled by route
    template (`/callbacks/mboxii/{token}`, `unmatched`), never by the raw path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reports = Counter(
            "mboxii_dlr_reports_received",
            "New reports stored, by outcome and status word (OTHER for undocumented words).",
            ["outcome", "status"],
            registry=r,
        )
        self.duplicates = Counter(
            "mboxii_dlr_reports_duplicate",
            "Reports received again (gateway retries); acknowledged, not stored twice.",
            registry=r,
        )
        self.batch_mismatch = Counter(
            "mboxii_dlr_reports_batch_mismatch",
            "Reports for a known delivery that carry another batch ID than its first.",
            registry=r,
        )
        self.inconsistent = Counter(
            "mboxii_dlr_reports_inconsistent",
            "Reports whose statuscode contradicts their status word.",
            registry=r,
        )
        self.rejections = Counter(
            "mboxii_dlr_callbacks_rejected",
            "Callback requests quarantined, by reason.",
            ["reason"],
            registry=r,
        )
        self.unavailable = Counter(
            "mboxii_dlr_callbacks_unavailable",
            "Callbacks answered 503 because storage was unreachable or ingest saturated.",
            ["cause"],
            registry=r,
        )
        self.storage_refused = Counter(
            "mboxii_dlr_reports_storage_refused",
            "Reports the database refused although they passed validation.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "mboxii_dlr_ingest_queue_depth",
            "Reports waiting for the writer.",
            registry=r,
        )
        self.in_flight = Gauge(
            "mboxii_dlr_ingest_in_flight",
            "Callbacks waiting for their report's commit (queued or in a batch being written).",
            registry=r,
        )
        self.batch_size = Histogram(
            "mboxii_dlr_ingest_batch_size",
            "Reports per group commit.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "mboxii_dlr_ingest_commit_duration_seconds",
            "Time to store and commit one batch.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.http_requests = Counter(
            "mboxii_dlr_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "mboxii_dlr_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.gateway_requests = Counter(
            "mboxii_dlr_gateway_requests",
            "Calls to the gateway (SendSMS, SendTimeSMS, CheckSMS) by interface and result: "
            "ok, or the name of the error (NoCredit, RecordNotFound, GatewayTimeout, ...).",
            ["interface", "result"],
            registry=r,
        )
        self.events_created = Counter(
            "mboxii_dlr_events_created",
            "Outbound event rows recorded (one per event and destination), by event type.",
            ["type"],
            registry=r,
        )
        self.event_attempts = Counter(
            "mboxii_dlr_event_attempts",
            "Attempts to send an event, by result: delivered, http_error, redirect, gone "
            "(410), timeout, connection_error, refused (a private address).",
            ["result"],
            registry=r,
        )
        self.event_latency = Histogram(
            "mboxii_dlr_event_delivery_latency_seconds",
            "Time from the change an event describes to its successful delivery.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 36000),
            registry=r,
        )
        self.events_waiting = Gauge(
            "mboxii_dlr_events_waiting",
            "Event rows not yet delivered nor failed (all replicas; refreshed every 5 s).",
            registry=r,
        )
        self.events_oldest_age = Gauge(
            "mboxii_dlr_events_oldest_waiting_seconds",
            "Age of the oldest event row still waiting (0 when none).",
            registry=r,
        )
        self.suppressions = Counter(
            "mboxii_dlr_numbers_suppressed",
            "Numbers suppressed (no more sends to them), by source: automatic (the failure "
            "streak reached DLR_SUPPRESS_AFTER_FAILURES) or manual.",
            ["source"],
            registry=r,
        )
        self.lifts = Counter(
            "mboxii_dlr_numbers_lifted",
            "Suppressions lifted by hand.",
            registry=r,
        )
        self.sends_skipped = Counter(
            "mboxii_dlr_send_numbers_suppressed",
            "Numbers left out of a send because they are suppressed.",
            registry=r,
        )
        # CPU, memory, open files and start time of this process (Linux /proc).
        ProcessCollector(registry=r)

        for outcome, status in report_series():
            self.reports.labels(outcome, status)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for cause in UNAVAILABLE_CAUSES:
            self.unavailable.labels(cause)
        for event_type in EVENT_TYPES:
            self.events_created.labels(event_type)
        for result in EVENT_RESULTS:
            self.event_attempts.labels(result)
        for source in SUPPRESSION_SOURCES:
            self.suppressions.labels(source)
