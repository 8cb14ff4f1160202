"""Outbound events benchmark: ingest with one subscription receiving every event, against
ingest without one and the FastAPI no-op; the latency from a callback's 200 to its event
at the receiver under that load; and the dispatcher alone draining a backlog.

Same servers and wrk load as bench/ingest.py (one uvicorn worker each, wrk -t1 -c64); the
receiver is bench/receiver.py (asyncio + httptools, a few microseconds a request) on
127.0.0.1, and the service runs with DLR_WEBHOOK_ALLOW_PRIVATE=true to reach it. Run it
with `python -m bench.events --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.ingest import ROOT, Server, _pg, free_port, migrate, pg_database, run_wrk

QUIET = {"DLR_LOG_LEVEL": "warning", "DLR_ENV": "development"}


@dataclass
class Run:
    name: str
    rps: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    non2xx: int = 0
    received: int | None = None
    events: int | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_max_ms: float | None = None
    probes: int = 0
    notes: list[str] = field(default_factory=list)


class Receiver:
    """bench/receiver.py in a process of its own."""

    def __init__(self, probe: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "bench.receiver", "--port", str(self.port), "--quiet"]
        if probe:
            command += ["--probe", probe]
        self.proc = subprocess.Popen(command, cwd=ROOT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/_count", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    def count(self) -> int:
        return int(httpx.get(self.url + "/_count", timeout=5).json()["count"])

    def probes(self) -> list[tuple[float, str]]:
        return [tuple(p) for p in httpx.get(self.url + "/_probes", timeout=5).json()]  # type: ignore[misc]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Prober:
    """Posts one report every `interval` s beside the load and notes when its 200 came."""

    def __init__(self, url: str, prefix: str, interval: float = 0.02) -> None:
        self.url, self.prefix, self.interval = url, prefix, interval
        self.acked: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        n = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.interval):
                n += 1
                msgid = f"{self.prefix}-{n}"
                body = {
                    "ID": self.prefix,
                    "msgid": msgid,
                    "type": "Now",
                    "mobile": f"09{n % 100000000:08d}",
                    "donetime": "2026/11/26 12:00:00",
                    "statuscode": "1",
                    "statusstr": "DELIVRD",
                }
                try:
                    r = client.post(self.url + "/callbacks/mboxii", data=body)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    self.acked[msgid] = time.time()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def subscribe(server_url: str, receiver_url: str) -> None:
    r = httpx.post(server_url + "/v1/subscriptions", json={"url": receiver_url + "/hook"})
    r.raise_for_status()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_drained(receiver: Receiver, expected: int, timeout: float) -> int:
    """The receiver's count once it reaches `expected` or stops growing."""
    deadline = time.monotonic() + timeout
    last, still = -1, 0
    while time.monotonic() < deadline:
        count = receiver.count()
        if count >= expected:
            return count
        still = still + 1 if count == last else 0
        if still > 20:
            return count
        last = count
        time.sleep(0.25)
    return receiver.count()


def count_events(database_url: str) -> int:
    sql = "SELECT count(*) FROM events"
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute(sql).fetchone()[0])
    return int(asyncio.run(_pg(sql, database=database_url.rsplit("/", 1)[1])))  # type: ignore[arg-type]


def ingest_run(
    name: str, database_url: str | None, args: argparse.Namespace, *, subscribed: bool
) -> Run:
    """wrk against one server; with `subscribed`, every change also goes to a receiver."""
    run = Run(name)
    receiver = Receiver(probe="probe-") if subscribed else None
    if database_url is None:
        server = Server("bench.noop_app:app", QUIET)
    else:
        env = {**QUIET, "DLR_DATABASE_URL": database_url, "DLR_WEBHOOK_ALLOW_PRIVATE": "true"}
        server = Server("app.main:app", env)
    try:
        if receiver is not None:
            subscribe(server.url, receiver.url)
        run_wrk(server.url, args.warmup, args.connections, f"warm{uuid.uuid4().hex[:6]}")
        prober = Prober(server.url, f"probe-{uuid.uuid4().hex[:6]}") if receiver else None
        if prober is not None:
            prober.start()
        w = run_wrk(server.url, args.duration, args.connections, f"b{uuid.uuid4().hex[:8]}")
        if prober is not None:
            prober.stop()
        run.rps, run.p99_ms = w["rps"], w["p99"]
        run.requests, run.non2xx = int(w["requests"]), int(w["non2xx"])
        if receiver is not None and database_url is not None:
            time.sleep(1)  # the requests wrk left in flight are stored by now
            run.events = count_events(database_url)
            run.received = wait_drained(receiver, run.events, timeout=120)
            arrivals: dict[str, float] = {}
            for at, body in receiver.probes():
                msgid = json.loads(body)["data"]["msgid"]
                arrivals.setdefault(msgid, at)
            assert prober is not None
            latencies = [
                (arrivals[m] - acked) * 1000 for m, acked in prober.acked.items() if m in arrivals
            ]
            run.probes = len(latencies)
            missing = len(prober.acked) - len(latencies)
            if latencies:
                run.latency_p50_ms = statistics.median(latencies)
                run.latency_p95_ms = percentile(latencies, 95)
                run.latency_max_ms = max(latencies)
            if missing:
                run.notes.append(f"{missing} probes never reached the receiver")
            if run.received < run.events:
                run.notes.append(f"RECEIVED {run.received} OF {run.events} EVENTS")
    finally:
        server.stop()
        if receiver is not None:
            receiver.stop()
    return run


SEED_EVENTS = """
INSERT INTO events (event_id, type, created_at, payload, subscription_id, url, origin, status,
                    attempts, next_attempt_at)
SELECT 'msg_seed' || g, 'delivery.updated', now(), $1, $2, $3, $4, 'pending', 0, now()
FROM generate_series(1, $5) AS g
"""


async def _seed(database: str, payload: str, sub_id: str, url: str, origin: str, n: int) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    from bench.ingest import PG_ADMIN

    admin = make_url(PG_ADMIN)
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=database
    )
    try:
        await conn.execute(SEED_EVENTS, payload, sub_id, url, origin, n)
    finally:
        await conn.close()


def dispatcher_run(args: argparse.Namespace) -> Run:
    """The dispatcher alone: N events already waiting (PostgreSQL), the time to send all."""
    run = Run("dispatcher-alone-pg")
    url = pg_database("mboxii_bench_events_dispatch")
    migrate(url)
    receiver = Receiver()
    # Subscribe through a first server, seed the backlog, then time a fresh one draining it.
    env = {**QUIET, "DLR_DATABASE_URL": url, "DLR_WEBHOOK_ALLOW_PRIVATE": "true"}
    server = Server("app.main:app", env)
    try:
        r = httpx.post(server.url + "/v1/subscriptions", json={"url": receiver.url + "/hook"})
        sub = r.json()
    finally:
        server.stop()
    payload = json.dumps(
        {
            "type": "delivery.updated",
            "timestamp": "2026-11-30T00:00:00Z",
            "data": {"msgid": "x" * 9, "batch_id": "1" * 6, "version": 1},
        }
    )
    origin = f"http://127.0.0.1:{receiver.port}"
    asyncio.run(_seed(url.rsplit("/", 1)[1], payload, sub["id"], sub["url"], origin, args.events))
    started = time.monotonic()
    server = Server("app.main:app", env)
    try:
        run.received = wait_drained(receiver, args.events, timeout=300)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
        receiver.stop()
    run.events = args.events
    run.rps = run.received / elapsed
    run.notes.append(f"{run.received} events in {elapsed:.1f}s (server start included)")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--events", type=int, default=50000, help="backlog of the dispatcher run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["noop", "pg", "pg-events", "sqlite", "sqlite-events", "dispatcher"],
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mboxii-bench-events-"))
    runs: dict[str, Run] = {}
    for name in args.only:
        if name == "noop":
            runs[name] = ingest_run(name, None, args, subscribed=False)
        elif name in ("pg", "pg-events"):
            url = pg_database(f"mboxii_bench_{name.replace('-', '_')}")
            migrate(url)
            runs[name] = ingest_run(name, url, args, subscribed=name.endswith("events"))
        elif name in ("sqlite", "sqlite-events"):
            url = f"sqlite:///{tmp}/{name}.db"
            migrate(url)
            runs[name] = ingest_run(name, url, args, subscribed=name.endswith("events"))
        elif name == "dispatcher":
            runs[name] = dispatcher_run(args)
        print(f"  {name}: {runs[name].rps:.0f}/s", file=sys.stderr, flush=True)
    report(runs, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: asdict(v) for k, v in runs.items()}, indent=2))
    lost = any(n.startswith("RECEIVED") for r in runs.values() for n in r.notes)
    return 1 if lost else 0


def report(runs: dict[str, Run], args: argparse.Namespace) -> None:
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, one uvicorn worker each\n")
    print("| run | req/s | p99 ms | events | received | event p50 ms | event p95 ms | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in runs.values():
        p50 = f"{r.latency_p50_ms:.0f}" if r.latency_p50_ms is not None else "-"
        p95 = f"{r.latency_p95_ms:.0f}" if r.latency_p95_ms is not None else "-"
        events = r.events if r.events is not None else "-"
        got = r.received if r.received is not None else "-"
        print(
            f"| {r.name} | {r.rps:.0f} | {r.p99_ms:.1f} | {events} | {got} | {p50} | {p95} "
            f"| {'; '.join(r.notes) or '-'} |"
        )
    print()

    def ratio(a: str, b: str, target: float) -> None:
        if a in runs and b in runs and runs[b].rps:
            value = runs[a].rps / runs[b].rps
            verdict = "met" if value >= target else "NOT met"
            print(f"{a} / {b} = {value:.2f}x (target >= {target}x): {verdict}")

    ratio("pg-events", "pg", 0.85)
    ratio("pg-events", "noop", 1.0)
    ratio("sqlite-events", "sqlite", 0.85)
    for name in ("pg-events", "sqlite-events"):
        r = runs.get(name)
        if r and r.latency_p95_ms is not None:
            verdict = "met" if r.latency_p95_ms < 1000 else "NOT met"
            p95 = r.latency_p95_ms
            print(f"{name}: event p95 {p95:.0f} ms after the 200 (target < 1000): {verdict}")
    d = runs.get("dispatcher")
    if d:
        print(
            f"dispatcher alone: {d.rps:.0f} events/s (target >= 2000): "
            f"{'met' if d.rps >= 2000 else 'NOT met'}"
        )


if __name__ == "__main__":
    sys.exit(main())
