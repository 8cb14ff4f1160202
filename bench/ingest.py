"""Ingest benchmark: the service on PostgreSQL and SQLite against a no-op and a naive receiver.

Every server runs as one uvicorn worker with the same options; wrk (one thread, 64
connections) posts unique valid reports from a separate process. Afterwards the stored rows are
counted against the acknowledged requests. Run it through `make bench` or
`python -m bench.ingest --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("MBOXII_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
UVICORN_FLAGS = [
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--no-proxy-headers",
    "--no-server-header",
    "--log-level",
    "warning",
    "--limit-concurrency",
    "2000",
    "--backlog",
    "4096",
]


@dataclass
class Result:
    name: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_rss_mb: float = 0.0
    requests: int = 0
    non2xx: int = 0
    errors: int = 0
    stored: int | None = None
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pg(sql: str, database: str | None = None) -> object:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=database or url.database,
    )
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def pg_database(name: str) -> str:
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    from sqlalchemy.engine import make_url

    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


def count_stored(database_url: str, prefix: str) -> int:
    sql = f"SELECT count(*) FROM reports WHERE msgid LIKE '{prefix}-%'"
    if database_url.startswith("sqlite"):
        import sqlite3

        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return int(conn.execute(sql).fetchone()[0])
    name = database_url.rsplit("/", 1)[1]
    return int(asyncio.run(_pg(sql, database=name)))  # type: ignore[arg-type]


class Server:
    """One uvicorn process with the shared flags; samples its RSS while it runs."""

    def __init__(self, app: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *UVICORN_FLAGS,
            ],
            cwd=ROOT,
            env={**os.environ, **env},
        )
        self.max_rss_kb = 0
        self._sampling = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{app} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{app} did not start")

    def rss_kb(self) -> int:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(m.group(1)) if m else 0

    def sample(self) -> None:
        self._sampling = True

        def loop() -> None:
            while self._sampling:
                self.max_rss_kb = max(self.max_rss_kb, self.rss_kb())
                time.sleep(0.1)

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> None:
        self._sampling = False
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_wrk(url: str, seconds: int, connections: int, prefix: str) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "report.lua"),
            url + "/callbacks/mboxii",
            "--",
            prefix,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    s = re.search(r"SUMMARY requests=(\d+) non2xx=(\d+) errors=(\d+)", out)
    lat = re.search(r"LATENCY p50=([\d.]+) p99=([\d.]+)", out)
    assert s and lat, out
    return {
        "rps": rps,
        "requests": int(s.group(1)),
        "non2xx": int(s.group(2)),
        "errors": int(s.group(3)),
        "p50": float(lat.group(1)),
        "p99": float(lat.group(2)),
    }


def bench_one(
    name: str, app: str, env: dict[str, str], args: argparse.Namespace, database_url: str | None
) -> Result:
    server = Server(app, env)
    result = Result(name)
    try:
        run_wrk(server.url, args.warmup, args.connections, f"warm{uuid.uuid4().hex[:6]}")
        prefix = f"b{uuid.uuid4().hex[:8]}"
        server.sample()
        w = run_wrk(server.url, args.duration, args.connections, prefix)
        result.rps, result.p50_ms, result.p99_ms = w["rps"], w["p50"], w["p99"]
        result.requests, result.non2xx, result.errors = (
            int(w["requests"]),
            int(w["non2xx"]),
            int(w["errors"]),
        )
        result.max_rss_mb = server.max_rss_kb / 1024
    finally:
        server.stop()
    if database_url is not None:
        result.stored = count_stored(database_url, prefix)
        acknowledged = result.requests - result.non2xx - result.errors
        # Every report is unique, so all acknowledged ones are stored iff the count is at
        # least the acks; up to one request per connection was still in flight when wrk
        # stopped counting, and those may be stored too.
        ok = acknowledged <= result.stored <= result.requests + args.connections
        result.notes.append(
            f"stored {result.stored} of {acknowledged} acknowledged: {'OK' if ok else 'LOST'}"
        )
        if not ok:
            result.notes.append("ACKNOWLEDGED REPORTS MISSING")
    return result


# reports unpartitioned again, with the same columns, keys and indexes as the partitioned one
ONE_TABLE = """
DO $$ BEGIN
CREATE TABLE reports_one (LIKE reports INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER SEQUENCE reports_id_seq OWNED BY reports_one.id;
DROP TABLE reports;
ALTER TABLE reports_one RENAME TO reports;
ALTER TABLE reports ADD CONSTRAINT pk_reports PRIMARY KEY (id, done_at);
ALTER TABLE reports ADD CONSTRAINT uq_reports_msgid_report_key_done_at
    UNIQUE (msgid, report_key, done_at);
CREATE INDEX ix_reports_batch_id_type_msgid_mobile ON reports (batch_id, type, msgid, mobile);
END $$;
"""


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "DLR_DATABASE_URL": database_url, "DLR_LOG_LEVEL": "warning"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["noop", "naive", "service-pg", "service-pg-one-table", "service-sqlite"],
    )
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="mboxii-bench-"))
    results: dict[str, Result] = {}
    quiet = {"DLR_LOG_LEVEL": "warning", "DLR_ENV": "development"}
    for name in args.only:
        if name == "noop":
            results[name] = bench_one(name, "bench.noop_app:app", quiet, args, None)
        elif name == "naive":
            url = pg_database("mboxii_bench_naive")
            migrate(url)
            results[name] = bench_one(
                name, "bench.naive_app:app", {**quiet, "DLR_DATABASE_URL": url}, args, url
            )
        elif name == "service-pg":
            url = pg_database("mboxii_bench_service")
            migrate(url)
            results[name] = bench_one(
                name, "app.main:app", {**quiet, "DLR_DATABASE_URL": url}, args, url
            )
        elif name == "service-pg-one-table":
            # The same schema with reports as one table: what the partitions cost ingest.
            url = pg_database("mboxii_bench_one_table")
            migrate(url)
            asyncio.run(_pg(ONE_TABLE, database="mboxii_bench_one_table"))
            results[name] = bench_one(
                name, "app.main:app", {**quiet, "DLR_DATABASE_URL": url}, args, url
            )
        elif name == "service-sqlite":
            url = f"sqlite:///{tmp}/bench.db"
            migrate(url)
            results[name] = bench_one(
                name, "app.main:app", {**quiet, "DLR_DATABASE_URL": url}, args, url
            )
        print(f"  {name}: {results[name].rps:.0f} req/s", file=sys.stderr, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print_table(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: asdict(v) for k, v in results.items()}, indent=2))
    lost = any("ACKNOWLEDGED REPORTS MISSING" in r.notes for r in results.values())
    return 1 if lost else 0


def print_table(results: dict[str, Result], args: argparse.Namespace) -> None:
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, one uvicorn worker each\n")
    print("| server | req/s | p50 ms | p99 ms | max RSS MB | non-2xx | errors | check |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results.values():
        print(
            f"| {r.name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_rss_mb:.0f} "
            f"| {r.non2xx} | {r.errors} | {'; '.join(r.notes) or '-'} |"
        )
    noop = results.get("noop")
    naive = results.get("naive")
    print()
    for name, target in (("service-pg", 1.0), ("service-sqlite", 0.8)):
        r = results.get(name)
        if r and noop and noop.rps:
            ratio = r.rps / noop.rps
            print(
                f"{name} / noop = {ratio:.2f}x (target >= {target}x): "
                f"{'met' if ratio >= target else 'NOT met'}"
            )
    r, one = results.get("service-pg"), results.get("service-pg-one-table")
    if r and one and one.rps:
        ratio = r.rps / one.rps
        print(
            f"service-pg (partitioned) / service-pg-one-table = {ratio:.2f}x (target >= 0.95x): "
            f"{'met' if ratio >= 0.95 else 'NOT met'}"
        )
    r = results.get("service-pg")
    if r and naive and naive.rps:
        ratio = r.rps / naive.rps
        print(
            f"service-pg / naive = {ratio:.2f}x (target >= 6x): "
            f"{'met' if ratio >= 6 else 'NOT met'}"
        )
    for name in ("service-pg", "service-sqlite"):
        r = results.get(name)
        if r:
            print(
                f"{name}: p99 {r.p99_ms:.1f} ms (target <= 25): "
                f"{'met' if r.p99_ms <= 25 else 'NOT met'}; RSS {r.max_rss_mb:.0f} MB "
                f"(target < 200): {'met' if r.max_rss_mb < 200 else 'NOT met'}"
            )


if __name__ == "__main__":
    sys.exit(main())
