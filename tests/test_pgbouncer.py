"""Behind PgBouncer in transaction pooling: with DLR_DB_PREPARED_STATEMENTS=false the service
stores, reads, throttles and purges as it does on PostgreSQL itself. (With its prepared
statements on, PgBouncer before 1.21 breaks it: deploy/README.md says how.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from app.core.settings import Settings
from app.db import partitions
from app.db.models import Delivery
from app.db.retention import purge
from tests.conftest import (
    free_port,
    make_settings,
    report,
    require_tool,
    running_app,
)
from tests.helpers import consistency_problems
from tests.receivers import ReceiverProcess, receivers

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pgbouncer(migrated: str) -> Iterator[str]:
    """PgBouncer in transaction pooling in front of a database of the test's own; its URL."""
    binary = require_tool("pgbouncer", "the Debian package pgbouncer")
    server = make_url(migrated)
    port = free_port()
    # PgBouncer refuses to run as root; as postgres it must reach its files.
    tmp_path = Path(tempfile.mkdtemp(prefix="mboxii-pgbouncer-"))
    tmp_path.chmod(0o777)
    (tmp_path / "users.txt").write_text(f'"{server.username}" ""\n')
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = host={server.host} port={server.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path}/users.txt
pool_mode = transaction
default_pool_size = 5
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,synchronous_commit,enable_seqscan
logfile = {tmp_path}/pgbouncer.log
"""
    )
    command = [binary, str(config)]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        assert runuser is not None
        command = [runuser, "-u", "postgres", "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp_path / "pgbouncer.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.1)
        yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp_path, ignore_errors=True)


async def test_the_service_works_behind_pgbouncer_without_prepared_statements(
    pgbouncer: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        pgbouncer,
        db_prepared_statements=False,
        send_api_keys="pgbouncer-key",
        webhook_allow_private=True,
    )
    with receivers(1) as (receiver,), caplog.at_level(logging.WARNING):
        await _serve_through_pgbouncer(settings, pgbouncer, receiver)
    # the event dispatcher's own connection went through too
    assert not [r for r in caplog.records if "events:" in r.getMessage()]


async def _serve_through_pgbouncer(
    settings: Settings, pgbouncer: str, receiver: ReceiverProcess
) -> None:
    async with running_app(settings) as (app, client):
        key = {"x-api-key": "pgbouncer-key"}
        subscribed = await client.post("/v1/subscriptions", json={"url": receiver.url}, headers=key)
        assert subscribed.status_code == 201, subscribed.text
        # many at once: batches on connections PgBouncer shares out transaction by transaction
        bodies = [
            report(msgid=f"b{i}", statusstr=w) for i in range(60) for w in ("ENROUTE", "DELIVRD")
        ]
        answers = await asyncio.gather(*(client.post("/callbacks/mboxii", data=b) for b in bodies))
        assert {a.status_code for a in answers} == {200}
        for i in range(0, 60, 7):
            d = (await client.get(f"/v1/deliveries/b{i}", headers=key)).json()
            assert (d["status"], d["reports"]) == ("DELIVRD", 2)
        assert (await client.get("/v1/stats", headers=key)).status_code == 200
        for _ in range(3):
            r = await client.post("/dashboard/login", data={"key": "wrong"})
            assert r.status_code == 401
        # every delivery's event reaches the receiver (LISTEN does not hold through PgBouncer
        # in transaction mode: the dispatcher finds the events on its rounds)
        deadline = asyncio.get_running_loop().time() + 30
        while len(told := {e["json"]["data"]["msgid"] for e in receiver.events()}) < 60:
            assert asyncio.get_running_loop().time() < deadline, len(told)
            await asyncio.sleep(0.2)
        # partitions made, detached and dropped, under transaction-scoped locks
        engine = app.app_state.engine
        now = dt.datetime.now(dt.UTC)
        old = partitions.add_months(partitions.month_start(now), -3)
        assert await partitions.ensure_partitions(engine, now=old, months_ahead=0)
        async with engine.begin() as conn:
            await conn.execute(update(Delivery).values(last_received_at=old))
        # the 2003-dated deliveries go with their reports, and the month made above
        result = await purge(engine, partitions.month_start(now) + dt.timedelta(seconds=1))
        assert (result.deliveries, result.reports, result.partitions) == (60, 120, 1)
    assert await asyncio.to_thread(consistency_problems, pgbouncer) == []
