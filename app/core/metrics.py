"""Prometheus metrics of one app instance (its own registry, so tests can build many apps),
or of every worker process of `mboxii-dlr serve` together (prometheus-client's multiprocess
mode, when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

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

GaugeMode = Literal["livesum", "livemax"]

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

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, mode: GaugeMode) -> Gauge:
            # With several workers: livesum adds up what each live worker holds (its own
            # queue); livemax takes the newest of a value all of them read from the database.
            return Gauge(name, doc, registry=r, multiprocess_mode=mode)

        def histogram(
            name: str, doc: str, buckets: Sequence[float], labels: Iterable[str] = ()
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.reports = counter(
            "mboxii_dlr_reports_received",
            "New reports stored, by outcome and status word (OTHER for undocumented words).",
            ["outcome", "status"],
        )
        self.duplicates = counter(
            "mboxii_dlr_reports_duplicate",
            "Reports received again (gateway retries); acknowledged, not stored twice.",
        )
        self.batch_mismatch = counter(
            "mboxii_dlr_reports_batch_mismatch",
            "Reports for a known delivery that carry another batch ID than its first.",
        )
        self.inconsistent = counter(
            "mboxii_dlr_reports_inconsistent",
            "Reports whose statuscode contradicts their status word.",
        )
        self.rejections = counter(
            "mboxii_dlr_callbacks_rejected", "Callback requests quarantined, by reason.", ["reason"]
        )
        self.unavailable = counter(
            "mboxii_dlr_callbacks_unavailable",
            "Callbacks answered 503 because storage was unreachable or ingest saturated.",
            ["cause"],
        )
        self.storage_refused = counter(
            "mboxii_dlr_reports_storage_refused",
            "Reports the database refused although they passed validation.",
        )
        self.queue_depth = gauge(
            "mboxii_dlr_ingest_queue_depth",
            "Reports waiting for the writer (summed over the workers).",
            "livesum",
        )
        self.in_flight = gauge(
            "mboxii_dlr_ingest_in_flight",
            "Callbacks waiting for their report's commit (queued or in a batch being written; "
            "summed over the workers).",
            "livesum",
        )
        self.queue_capacity = gauge(
            "mboxii_dlr_ingest_queue_capacity",
            "Reports the writers' queues hold at most (DLR_INGEST_QUEUE_SIZE, summed over the "
            "workers); beyond it callbacks are answered 503.",
            "livesum",
        )
        self.pending_oldest = gauge(
            "mboxii_dlr_deliveries_pending_oldest_seconds",
            "Age of the oldest delivery done in the last 7 days whose newest report is still "
            "not final (0 when none); read from the database every minute.",
            "livemax",
        )
        self.batch_size = histogram(
            "mboxii_dlr_ingest_batch_size",
            "Reports per group commit.",
            (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
        )
        self.commit_seconds = histogram(
            "mboxii_dlr_ingest_commit_duration_seconds",
            "Time to store and commit one batch.",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.http_requests = counter(
            "mboxii_dlr_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
        )
        self.http_seconds = histogram(
            "mboxii_dlr_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            ["method", "route"],
        )
        self.gateway_requests = counter(
            "mboxii_dlr_gateway_requests",
            "Calls to the gateway (SendSMS, SendTimeSMS, CheckSMS) by interface and result: "
            "ok, or the name of the error (NoCredit, RecordNotFound, GatewayTimeout, ...).",
            ["interface", "result"],
        )
        self.events_created = counter(
            "mboxii_dlr_events_created",
            "Outbound event rows recorded (one per event and destination), by event type.",
            ["type"],
        )
        self.event_attempts = counter(
            "mboxii_dlr_event_attempts",
            "Attempts to send an event, by result: delivered, http_error, redirect, gone "
            "(410), timeout, connection_error, refused (a private address).",
            ["result"],
        )
        self.event_latency = histogram(
            "mboxii_dlr_event_delivery_latency_seconds",
            "Time from the change an event describes to its successful delivery.",
            (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 36000),
        )
        self.events_waiting = gauge(
            "mboxii_dlr_events_waiting",
            "Event rows not yet delivered nor failed (all replicas; refreshed every 5 s).",
            "livemax",
        )
        self.events_oldest_age = gauge(
            "mboxii_dlr_events_oldest_waiting_seconds",
            "Age of the oldest event row still waiting (0 when none).",
            "livemax",
        )
        self.suppressions = counter(
            "mboxii_dlr_numbers_suppressed",
            "Numbers suppressed (no more sends to them), by source: automatic (the failure "
            "streak reached DLR_SUPPRESS_AFTER_FAILURES) or manual.",
            ["source"],
        )
        self.lifts = counter("mboxii_dlr_numbers_lifted", "Suppressions lifted by hand.")
        self.sends_skipped = counter(
            "mboxii_dlr_send_numbers_suppressed",
            "Numbers left out of a send because they are suppressed.",
        )
        if r is not None:
            # CPU, memory, open files and start time of this process (Linux /proc).
            ProcessCollector(registry=r)

        for outcome, status in report_series():
            self.reports.labels(outcome, status)
        for labelled, values in (
            (self.rejections, REJECTION_REASONS),
            (self.unavailable, UNAVAILABLE_CAUSES),
            (self.events_created, EVENT_TYPES),
            (self.event_attempts, EVENT_RESULTS),
            (self.suppressions, SUPPRESSION_SOURCES),
        ):
            for value in values:
                labelled.labels(value)
        for interface in GATEWAY_INTERFACES:
            self.gateway_requests.labels(interface, "ok")

    def close(self) -> None:
        """The worker is stopping: its live gauges no longer count."""
        if self.directory is not None:
            multiprocess.mark_process_dead(os.getpid(), self.directory)  # type: ignore[no-untyped-call]
