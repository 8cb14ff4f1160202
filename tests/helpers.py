"""Test tools: raw HTTP over sockets, database peeks, polling, RSS, the gateway simulator in a
process of its own, and the effect_log table that the stores' test effects write to."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.db.engine import create_engine
from app.db.models import Delivery, Rejected, Report
from app.db.numbers import mismatches
from tests.conftest import ROOT, free_port


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    header_list: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def build_request(
    method: str,
    target: bytes | str,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    *,
    content_length: bool = True,
) -> bytes:
    """The bytes of one HTTP/1.1 request that closes its connection after the answer."""

    def b(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    lines = [b(method) + b" " + b(target) + b" HTTP/1.1", b"host: 127.0.0.1"]
    lines += [b(name) + b": " + b(value) for name, value in headers]
    if content_length:
        lines.append(b"content-length: " + str(len(body)).encode())
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body if content_length else b"")


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
    header_list = [(k.strip().lower(), v.strip()) for k, v in pairs]
    return RawResponse(int(status_line.split()[1]), dict(header_list), body, header_list)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (an answer may come in several pieces)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def raw_request(port: int, request: bytes, timeout: float = 30) -> RawResponse:
    """Send raw request bytes over a fresh socket and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return parse_response(read_until_closed(sock))


async def async_raw_request(
    port: int, request: bytes, timeout: float, host: str = "127.0.0.1"
) -> RawResponse:
    """The asyncio twin of raw_request; raises on a reset, an early close or the timeout."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    if not data:
        raise ConnectionError("closed without an answer")
    return parse_response(data)


def form_post(path: str, fields: dict[str, str], extra: Iterable[tuple[str, str]] = ()) -> bytes:
    return build_request(
        "POST",
        path,
        [("content-type", "application/x-www-form-urlencoded"), *extra],
        urlencode(fields).encode(),
    )


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll until `condition()` is truthy and return its value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def async_wait_for(
    condition: Callable[[], Any], timeout: float = 60, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def metric(text_format: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text_format.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


async def _query(database_url: str, statement: Any) -> list[Any]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(statement)).all())
    finally:
        await engine.dispose()


def stored_msgids(database_url: str) -> set[str]:
    """Every msgid with a stored report (read straight from the database)."""
    rows = asyncio.run(_query(database_url, select(Report.msgid).distinct()))
    return {row[0] for row in rows}


async def async_table_counts(database_url: str) -> dict[str, int]:
    counts = {}
    for model in (Report, Delivery, Rejected):
        rows = await _query(database_url, select(func.count()).select_from(model))
        counts[model.__tablename__] = rows[0][0]
    return counts


def table_counts(database_url: str) -> dict[str, int]:
    return asyncio.run(async_table_counts(database_url))


def consistency_problems(database_url: str) -> list[Any]:
    """Reports without their delivery, deliveries with a wrong report count, a stats rollup
    that disagrees with the deliveries, or numbers whose summary differs from a recount."""
    orphans = text(
        "SELECT r.msgid, r.mobile FROM reports r LEFT JOIN deliveries d "
        "ON d.msgid = r.msgid AND d.mobile = r.mobile WHERE d.msgid IS NULL"
    )
    miscounted = text(
        "SELECT d.msgid, d.mobile, d.reports, "
        "(SELECT count(*) FROM reports r WHERE r.msgid = d.msgid AND r.mobile = d.mobile) AS n "
        "FROM deliveries d WHERE d.reports <> "
        "(SELECT count(*) FROM reports r WHERE r.msgid = d.msgid AND r.mobile = d.mobile)"
    )
    # the stats rollup, kept by triggers, agrees with what is left
    rollup = text(
        "SELECT (SELECT count(*) FROM deliveries) AS deliveries, "
        "(SELECT coalesce(sum(count), 0) FROM delivery_counts) AS counted"
    )
    problems = asyncio.run(_query(database_url, orphans))
    problems += asyncio.run(_query(database_url, miscounted))
    problems += [row for row in asyncio.run(_query(database_url, rollup)) if row[0] != row[1]]
    problems += asyncio.run(_query(database_url, mismatches()))
    return problems


@contextlib.asynccontextmanager
async def database_gone(app: Any) -> AsyncIterator[None]:
    """Point the app's reads (its engine and sessions) at a PostgreSQL that does not answer,
    and back at the live database afterwards."""
    state = app.app_state
    live = state.storage
    dead = create_engine("postgresql://postgres@127.0.0.1:1/none")
    state.storage = dataclasses.replace(live, engine=dead, sessionmaker=async_sessionmaker(dead))
    try:
        yield
    finally:
        state.storage = live
        await dead.dispose()


def grown_by(work: Callable[[], None]) -> int:
    """Bytes still held after `work` has run: what caches kept of what it did."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


# A test effect's write, in each store's own driver (asyncpg, sqlite3).
EFFECT_LOG_POSTGRES = "INSERT INTO effect_log (msgid) VALUES ($1)"
EFFECT_LOG_SQLITE = "INSERT INTO effect_log (msgid) VALUES (?)"


@contextlib.asynccontextmanager
async def engine_with_effect_log(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's database with a fresh table effect_log (msgid TEXT NOT NULL),
    which test effects write to in a batch's transaction; dropped afterwards."""
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS effect_log"))
        await connection.execute(text("CREATE TABLE effect_log (msgid TEXT NOT NULL)"))
    yield engine
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE effect_log"))
    await engine.dispose()


class Simulator:
    """`mboxii-dlr simulate-gateway` in a subprocess on a free port."""

    def __init__(self, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
        self.log = log
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "app.cli", "simulate-gateway"),
                *("--port", str(self.port), "--log-level", "warning", *args),
            ],
            env=env,
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(self.url + "/simulator/sends", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the simulator did not start")

    def sends(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(self.url + "/simulator/sends").json()
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
