"""Behind PgBouncer in transaction pooling: with DLR_DB_PREPARED_STATEMENTS=false the service
stores, reads, throttles and purges as it does on PostgreSQL itself. (With its prepared
statements on, PgBouncer before 1.21 breaks it: deploy/README.md says how.)"""

from __future__ import annotations

import asyncio
import datetime as dt
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
ignore_startup_parameters = extra_float_digits,synchronous_commit
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
    pgbouncer: str,
) -> None:
    settings = make_settings(pgbouncer, db_prepared_statements=False, api_keys="pgbouncer-key")
    async with running_app(settings) as (app, client):
        # many at once: batches on connections PgBouncer shares out transaction by transaction
        bodies = [
            report(msgid=f"b{i}", statusstr=w) for i in range(60) for w in ("ENROUTE", "DELIVRD")
        ]
        answers = await asyncio.gather(*(client.post("/callbacks/mboxii", data=b) for b in bodies))
        assert {a.status_code for a in answers} == {200}
        key = {"x-api-key": "pgbouncer-key"}
        for i in range(0, 60, 7):
            d = (await client.get(f"/v1/deliveries/b{i}", headers=key)).json()
            assert (d["status"], d["reports"]) == ("DELIVRD", 2)
        assert (await client.get("/v1/stats", headers=key)).status_code == 200
        for _ in range(3):
            r = await client.post("/dashboard/login", data={"key": "wrong"})
            assert r.status_code == 401
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
