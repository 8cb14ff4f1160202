"""One thread per SQLite database file for the service's own writers (ingest batches, the
event dispatcher's rounds), so that they take turns instead of fighting for the write lock."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import make_url

# SQLite lets one connection write at a time. A connection that finds the lock taken sleeps
# in growing steps (busy_timeout: 1, 2, 5, ... 100 ms) and tries again, while the writer
# that holds it takes it back at once after each commit: under full ingest load the event
# dispatcher, writing from a thread of its own, waited seconds for each round (event p95
# 2-5 s in bench/events.py). Handed to one thread, their transactions run in turn, each
# waiting at most for the one before it.
_threads: dict[str, tuple[ThreadPoolExecutor, int]] = {}
_lock = threading.Lock()


def _key(database_url: str) -> str:
    database = make_url(database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return database_url
    return os.path.realpath(database)


def acquire(database_url: str) -> ThreadPoolExecutor:
    """The writer thread of this database file, started on first use; release() when done."""
    key = _key(database_url)
    with _lock:
        executor, users = _threads.get(key, (None, 0))
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mboxii-dlr-sqlite")
        _threads[key] = (executor, users + 1)
        return executor


def release(database_url: str) -> None:
    """One user is done; the last one stops the thread (after the work it was given)."""
    key = _key(database_url)
    with _lock:
        executor, users = _threads[key]
        if users > 1:
            _threads[key] = (executor, users - 1)
            return
        del _threads[key]
    executor.shutdown(wait=True)
