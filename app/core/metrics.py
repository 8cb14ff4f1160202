"""Prometheus metrics of one app instance (its own registry, so tests can build many apps),
or of every worker process of `mboxii-dlr serve` together (prometheus-client's multiprocess
mode, when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
GATEWAY_INTERFACES = ("SendSMS", "SendTimeSMS", "CheckSMS")
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


#: Set by `mboxii-dlr serve` for its workers (app.cli); read by prometheus-client when it is
#: first imported, which is why serve sets it before the workers start.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# The multiprocess files end in the pid of the worker that wrote them.
_PID_FILE = re.compile(r".*_(\d+)\.db")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class WorkerProcesses(Collector):
    """process_* over every live worker: CPU seconds, memory and open files summed (what the
    container uses), the start time of the oldest, the lowest file limit.

    It also forgets the live gauges of workers that are gone (a worker uvicorn restarted after
    a crash): their last queue depth would otherwise be added forever."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _pids(self) -> set[int]:
        pids = set()
        for path in self.directory.glob("*.db"):
            match = _PID_FILE.fullmatch(path.name)
            if match:
                pids.add(int(match[1]))
        return pids

    def live_pids(self) -> list[int]:
        """The workers running now; what the others left in live gauges is dropped."""
        live = []
        for pid in sorted(self._pids()):
            if _alive(pid):
                live.append(pid)
            else:
                multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
        return live

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        totals: dict[str, float] = {}
        for pid in self.live_pids():
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                families.setdefault(family.name, family)
                for sample in family.samples:
                    if sample.name not in totals:
                        totals[sample.name] = sample.value
                    elif sample.name.endswith(("start_time_seconds", "max_fds")):
                        totals[sample.name] = min(totals[sample.name], sample.value)
                    else:
                        totals[sample.name] += sample.value
        for family in families.values():
            family.samples = [s._replace(value=totals[s.name]) for s in family.samples]
        return list(families.values())


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


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
        #: what /metrics exports
        self.registry = CollectorRegistry(auto_describe=True)
        self.directory = multiprocess_dir()
        r: CollectorRegistry | None = self.registry
        if self.directory is not None:
            # Each worker writes its values into files of the directory; a scrape, whichever
            # worker answers it, reads and adds up all of them. The metrics themselves then
            # belong to no registry.
            workers = WorkerProcesses(self.directory)
            workers.live_pids()  # forget the live gauges of workers that died
            self.registry.register(workers)
            multiprocess.MultiProcessCollector(self.registry, path=self.directory)  # type: ignore[no-untyped-call]
            r = None
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
        # Gauges of several workers: each one's own (livesum: of the workers running now).
        self.queue_depth = Gauge(
            "mboxii_dlr_ingest_queue_depth",
            "Reports waiting for the writer (summed over the workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "mboxii_dlr_ingest_in_flight",
            "Callbacks waiting for their report's commit (queued or in a batch being written; "
            "summed over the workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "mboxii_dlr_ingest_queue_capacity",
            "Reports the writers' queues hold at most (DLR_INGEST_QUEUE_SIZE, summed over the "
            "workers); beyond it callbacks are answered 503.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Every process reads the same value from the database: the largest is the newest.
        self.pending_oldest = Gauge(
            "mboxii_dlr_deliveries_pending_oldest_seconds",
            "Age of the oldest delivery done in the last 7 days whose newest report is still "
            "not final (0 when none); read from the database every minute.",
            registry=r,
            multiprocess_mode="livemax",
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
        # Every process reads these two from the database: the largest is the newest.
        self.events_waiting = Gauge(
            "mboxii_dlr_events_waiting",
            "Event rows not yet delivered nor failed (all replicas; refreshed every 5 s).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.events_oldest_age = Gauge(
            "mboxii_dlr_events_oldest_waiting_seconds",
            "Age of the oldest event row still waiting (0 when none).",
            registry=r,
            multiprocess_mode="livemax",
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
        if r is not None:
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
        for interface in GATEWAY_INTERFACES:
            self.gateway_requests.labels(interface, "ok")

    def close(self) -> None:
        """The worker is stopping: its live gauges no longer count."""
        if self.directory is not None:
            multiprocess.mark_process_dead(os.getpid(), self.directory)  # type: ignore[no-untyped-call]
