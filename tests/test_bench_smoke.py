"""A few seconds of each benchmark, so the harness keeps working (no timings asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, require_tool

pytestmark = pytest.mark.slow


def test_ingest_benchmark_runs_and_finds_every_acknowledged_report(postgres_url: str) -> None:
    require_tool("wrk", "the ingest benchmark's load generator")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ingest",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--connections",
            "16",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("noop", "naive", "service-pg", "service-pg-one-table", "service-sqlite"):
        assert f"| {name} |" in out.stdout
    assert out.stdout.count("acknowledged: OK") == 4
    assert "service-pg / noop" in out.stdout
    assert "service-pg (partitioned) / service-pg-one-table" in out.stdout


def test_read_benchmark_runs_on_a_small_seed(postgres_url: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.read",
            "--reports",
            "5000",
            "--requests",
            "3",
            "--database",
            "mboxii_bench_smoke",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # exit status 1 only says a latency target was missed, which a smoke run may do
    assert out.returncode in (0, 1), out.stdout + out.stderr
    assert "| stats 30 days by hour |" in out.stdout


def test_events_benchmark_runs_and_every_event_arrives(postgres_url: str) -> None:
    require_tool("wrk", "the events benchmark's load generator")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.events",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--connections",
            "16",
            "--events",
            "2000",
            "--only",
            "pg",
            "pg-events",
            "dispatcher",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("pg", "pg-events", "dispatcher-alone-pg"):
        assert f"| {name} |" in out.stdout
    assert "RECEIVED" not in out.stdout
    assert "pg-events / pg" in out.stdout and "dispatcher alone" in out.stdout
