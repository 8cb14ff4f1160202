"""Connections that never deliver their request, against real `mboxii-dlr serve` processes
over real sockets: silent sockets, a head sent a byte at a time, a stalled body. They are
closed after DLR_HEADER_TIMEOUT_SECONDS and never starve the gateway's callbacks."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, report
from tests.helpers import build_request, form_post, parse_response, raw_request

pytestmark = pytest.mark.slow

CB = "/callbacks/mboxii"
TIMEOUT = 1.5  # DLR_HEADER_TIMEOUT_SECONDS of these servers
LIMIT = 10  # DLR_LIMIT_CONCURRENCY (its smallest allowed value)


@pytest.fixture
def live_server(sqlite_template: Path, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Real servers on a SQLite copy: how connections are handled does not depend on the
    database, so one is enough."""
    path = tmp_path / "dlr.db"
    shutil.copy(sqlite_template, path)
    servers: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = LiveServer(f"sqlite:///{path}", env)
        servers.append(server)
        if "DLR_HOST" in env and not env["DLR_HOST"]:
            del server.env["DLR_HOST"]  # the default, as a bare `mboxii-dlr serve` has it
        return server.start()

    yield start
    for server in servers:
        server.stop()
        server.log_path.unlink(missing_ok=True)


def callback_status(server: LiveServer, msgid: str) -> int:
    return httpx.post(server.url + CB, data=report(msgid=msgid), timeout=10).status_code


@contextmanager
def sockets(
    server: LiveServer, count: int, first_bytes: bytes = b""
) -> Iterator[list[socket.socket]]:
    opened = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if first_bytes:
                s.sendall(first_bytes)
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def closed_within(s: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sent until it closed the connection, and how long that took."""
    started = time.monotonic()
    s.settimeout(seconds)
    received = b""
    try:
        while chunk := s.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def test_silent_connections_cannot_starve_the_callbacks(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(DLR_LIMIT_CONCURRENCY=str(LIMIT), DLR_HEADER_TIMEOUT_SECONDS=str(TIMEOUT))
    with sockets(server, LIMIT) as silent:
        # The silent sockets hold every place: a callback is turned away meanwhile...
        assert callback_status(server, "during") == 503
        # ...until they are closed, without a word (they never began a request).
        for s in silent:
            received, waited = closed_within(s, TIMEOUT + 10)
            assert received == b""
            assert waited < TIMEOUT + 5
        deadline = time.monotonic() + 5
        while (status := callback_status(server, "after")) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200


def test_a_head_sent_a_byte_at_a_time_gets_408(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(DLR_HEADER_TIMEOUT_SECONDS=str(TIMEOUT))
    head = form_post(CB, report())
    with sockets(server, 1, head[:30]) as (s,):
        started = time.monotonic()
        s.settimeout(0.2)
        received = b""
        # One byte every 0.2 s: always busy, never done. The head's deadline is for all of it.
        for byte in head[30:]:
            try:
                s.sendall(bytes([byte]))
                received += s.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if received:
                break
        more, _ = closed_within(s, 10)
        answer = parse_response(received + more)
        assert answer.status == 408
        assert time.monotonic() - started < TIMEOUT + 5


def test_a_stalled_body_is_closed_and_a_slow_one_is_served(
    live_server: Callable[..., LiveServer],
) -> None:
    # Two worker processes: the deadline reaches every one of them.
    server = live_server(DLR_HEADER_TIMEOUT_SECONDS=str(TIMEOUT), DLR_WORKERS="2")
    whole = form_post(CB, report(msgid="slow-body"))
    head, _, body = whole.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    with sockets(server, 1, head + body[:10]) as (stalled,):
        received, waited = closed_within(stalled, TIMEOUT + 10)
        assert received == b""  # closed: the callback was not acknowledged
        assert TIMEOUT - 0.5 < waited < TIMEOUT + 5
    # A body that keeps coming, however slowly, is read to its end.
    with sockets(server, 1, head) as (slow,):
        for i in range(0, len(body), len(body) // 4 + 1):
            time.sleep(TIMEOUT * 0.6)
            slow.sendall(body[i : i + len(body) // 4 + 1])
        received, _ = closed_within(slow, 10)
        assert parse_response(received).status == 200
    assert raw_request(server.port, build_request("GET", "/healthz")).status == 200


def test_the_server_listens_on_loopback_unless_told_otherwise(
    live_server: Callable[..., LiveServer],
) -> None:
    # `make run` and a bare `mboxii-dlr serve` are for this machine only; the image sets
    # DLR_HOST=0.0.0.0 itself (tests/test_deploy.py).
    server = live_server(DLR_LOG_LEVEL="info", DLR_HOST="")
    assert f"http://127.0.0.1:{server.port}" in server.read_output()
