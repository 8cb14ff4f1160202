"""Several processes of one deployment: /metrics of `serve` with DLR_WORKERS above 1 adds up
every worker, and background jobs run once per deployment however many processes offer."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from app.db.engine import create_engine
from app.db.jobs import JobRunner
from app.db.models import Job
from tests.conftest import LiveServer, report
from tests.helpers import metric, rss_kib, wait_for
from tests.test_deploy import dashboard_queries

CB = "/callbacks/mboxii"


def workers_of(server: LiveServer) -> set[int]:
    """The worker processes uvicorn started for the server (spawned children)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    found = set()
    for pid in map(int, children):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            found.add(pid)
    return found


def metrics_directory(pid: int) -> Path:
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environment:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("the worker has no PROMETHEUS_MULTIPROC_DIR")


def received(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mboxii_dlr_reports_received_total"
    )


@pytest.mark.slow
def test_metrics_of_several_workers_add_up_whichever_answers(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(DLR_WORKERS="2")
    workers = wait_for(lambda: len(workers_of(server)) == 2 and workers_of(server), what="2")
    directory = metrics_directory(next(iter(workers)))
    assert directory.is_dir()

    for i in range(30):  # a connection each, so both workers take some
        assert httpx.post(server.url + CB, data=report(msgid=f"w{i}")).status_code == 200
    scrapes = [httpx.get(server.url + "/metrics").text for _ in range(10)]
    assert {received(text) for text in scrapes} == {30.0}
    for text in scrapes:
        assert metric(text, "mboxii_dlr_ingest_queue_depth") == 0
        assert metric(text, "mboxii_dlr_ingest_in_flight") == 0
    # process_* of both workers together: their memory, summed
    memory = metric(httpx.get(server.url + "/metrics").text, "process_resident_memory_bytes")
    both = sum(rss_kib(pid) * 1024 for pid in workers)
    assert 0.8 * both < memory < 1.2 * both
    # every series the Grafana dashboard reads is there, as with one process
    samples = {s.name for f in text_string_to_metric_families(scrapes[0]) for s in f.samples}
    for query in dashboard_queries():
        for name in re.findall(r"\b((?:mboxii_dlr|process)_[a-z_]+)\b", query):
            assert name in samples, f"{name} (in {query!r}) is not in /metrics"

    # The workers die (uvicorn starts new ones): what they counted is still counted.
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(workers_of(server) - workers) == 2, what="two new workers")
    wait_for(lambda: httpx.get(server.url + "/healthz").status_code == 200, what="healthz")
    text = httpx.get(server.url + "/metrics").text
    assert received(text) == 30.0
    assert metric(text, "mboxii_dlr_ingest_in_flight") == 0
    assert httpx.post(server.url + CB, data=report(msgid="after")).status_code == 200
    assert received(httpx.get(server.url + "/metrics").text) == 31.0

    server.stop()
    # the service made the directory, and removes it when it stops
    assert not directory.exists()


@pytest.mark.slow
def test_one_worker_keeps_its_own_registry(live_server: Callable[..., LiveServer]) -> None:
    server = live_server()
    assert httpx.post(server.url + CB, data=report()).status_code == 200
    assert workers_of(server) == set()
    text = httpx.get(server.url + "/metrics").text
    assert received(text) == 1.0
    assert metric(text, "process_open_fds") > 0


async def test_a_job_runs_once_per_interval_across_processes(database_url: str) -> None:
    """Three processes offer the same job for about three intervals: it runs about three
    times, never twice at once."""
    engine = create_engine(database_url, pool_size=4)
    runs: list[tuple[str, float, float]] = []

    def work(holder: str) -> Callable[[], Any]:
        async def run() -> None:
            started = asyncio.get_running_loop().time()
            await asyncio.sleep(0.1)
            runs.append((holder, started, asyncio.get_running_loop().time()))

        return run

    runners = [
        JobRunner(engine, "test-job", dt.timedelta(seconds=1), work(f"p{i}"), holder=f"p{i}")
        for i in range(3)
    ]
    tasks = [asyncio.create_task(r.run_forever()) for r in runners]
    await asyncio.sleep(3.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await engine.dispose()
    assert 3 <= len(runs) <= 5, runs
    spans = sorted((start, end) for _, start, end in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # never two at once
        assert start - end > 0.8  # and an interval apart


async def test_a_job_whose_holder_died_is_taken_over_when_its_lease_runs_out(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=2)
    ran: list[str] = []
    started = asyncio.get_running_loop().time()

    async def run() -> None:
        ran.append("ran")

    lease = dt.timedelta(seconds=0.5)
    async with engine.begin() as connection:
        await connection.execute(
            insert(Job).values(name="orphan", next_run_at=dt.datetime.now(dt.UTC))
        )
    # A process claimed the job, and died before it ran it or gave it back.
    dead = JobRunner(engine, "orphan", dt.timedelta(hours=1), run, lease=lease, holder="dead")
    assert await dead.claim()
    alive = JobRunner(engine, "orphan", dt.timedelta(hours=1), run, lease=lease, holder="alive")
    assert not await alive.claim()
    task = asyncio.create_task(alive.run_forever())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not ran:
            assert asyncio.get_running_loop().time() < deadline, "never taken over"
            await asyncio.sleep(0.05)
        # it ran once the lease had run out, not before
        assert asyncio.get_running_loop().time() - started >= lease.total_seconds()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()
