"""SQLite's writers take turns in one thread per database file: the event dispatcher's rounds
are not starved by ingest batches that follow each other without a gap."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app.db import sqlite_writer
from app.db.engine import create_engine
from app.events.queue import Round, open_queue
from app.ingest.fold import Arrival, DeliveryChange
from app.ingest.parse import validate_fields
from app.ingest.writer import open_store
from tests.conftest import report

TAIPEI = ZoneInfo("Asia/Taipei")
RECEIVED = dt.datetime(2026, 11, 30, 12, tzinfo=TAIPEI)


def test_writers_of_one_file_share_a_thread_until_the_last_lets_go(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    one = sqlite_writer.acquire(f"sqlite:///{tmp_path}/dlr.db")
    # the same file spelled another way
    same = sqlite_writer.acquire(f"sqlite:///{tmp_path}/sub/../dlr.db")
    other = sqlite_writer.acquire(f"sqlite:///{tmp_path}/other.db")
    assert same is one
    assert other is not one
    assert one.submit(lambda: 1).result() == 1

    sqlite_writer.release(f"sqlite:///{tmp_path}/dlr.db")
    assert same.submit(lambda: 2).result() == 2  # one user left: still running
    sqlite_writer.release(f"sqlite:///{tmp_path}/sub/../dlr.db")
    with pytest.raises(RuntimeError):
        one.submit(lambda: 3)
    # a new user of the file gets a new thread
    again = sqlite_writer.acquire(f"sqlite:///{tmp_path}/dlr.db")
    assert again is not one
    sqlite_writer.release(f"sqlite:///{tmp_path}/dlr.db")
    sqlite_writer.release(f"sqlite:///{tmp_path}/other.db")


class Slow:
    """An effect that keeps the batch's transaction (and the write lock) for a while."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> None:
        time.sleep(self.seconds)


def arrival(msgid: str) -> Arrival:
    return Arrival(validate_fields(report(msgid=msgid), TAIPEI, RECEIVED), RECEIVED)


async def test_a_dispatcher_round_waits_for_one_batch_not_for_the_load(
    sqlite_template: Path, tmp_path: Path
) -> None:
    # Before the dispatcher shared the ingest thread, its round waited on the write lock in
    # busy_timeout's growing sleeps and nearly always missed the instant between two
    # batches: under full ingest load events waited seconds (bench/events.py).
    path = tmp_path / "dlr.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(f"sqlite:///{path}")
    store = open_store(engine, [Slow(0.05)])
    queue = open_queue(engine)
    batches = 20
    done = 0

    async def load() -> None:
        nonlocal done
        for i in range(batches):
            await store.store([arrival(f"m{i}")])
            done += 1

    try:
        loading = asyncio.create_task(load())
        await asyncio.sleep(0.02)  # the first batch holds the lock
        assert await queue.round(Round([], [], [], 10, [], 30.0)) == []
        # it ran after the batch in progress (and perhaps the one handed over meanwhile)
        assert done <= 3
        await loading
    finally:
        await queue.close()
        await store.close()
        await engine.dispose()
