"""Read benchmark: latency of the dashboard's and the numbers' queries over a large PostgreSQL
database.

Seeds N reports server-side (bench/seed.py) unless --reuse is given, starts the service (one
uvicorn worker), then times each query from a separate client over keep-alive HTTP and prints
p50/p95 per query. With --explain it also captures the plan PostgreSQL chose for each query
through auto_explain (the server log must be readable: it is on a stock Debian install).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from bench.ingest import Server, migrate, pg_database
from bench.seed import seed

QUERIES = [
    ("deliveries by mobile", 20.0),
    ("deliveries by batch", 20.0),
    ("deliveries by status and 1-day range", 20.0),
    ("deliveries 50 pages deep by cursor", 20.0),
    ("batch summary", 20.0),
    ("stats 30 days by hour", 150.0),
    ("number by mobile", 20.0),
    ("numbers first page", 20.0),
    ("numbers 50 pages deep by cursor", 20.0),
    ("numbers pages deep among streak 0", 20.0),
]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


async def samples(dsn: str, n: int) -> dict[str, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM deliveries")
        # A 1% block sample is instant on millions of rows; small tables are read whole.
        sample = "TABLESAMPLE SYSTEM (1)" if total > 200_000 else ""
        mobiles = await conn.fetch(f"SELECT mobile FROM deliveries {sample} LIMIT $1", n)
        batches = await conn.fetch(f"SELECT batch_id FROM deliveries {sample} LIMIT $1", n)
    finally:
        await conn.close()
    rng = random.Random(7)
    m = [r[0] for r in mobiles]
    b = [r[0] for r in batches]
    rng.shuffle(m)
    rng.shuffle(b)
    return {"mobile": m, "batch": b}


def timed(
    client: httpx.Client, url: str, params: dict[str, str] | None = None
) -> tuple[float, dict]:  # type: ignore[type-arg]
    started = time.perf_counter()
    r = client.get(url, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    r.raise_for_status()
    return elapsed, r.json()


def run_queries(base: str, pool: dict[str, list[str]], n: int) -> dict[str, list[float]]:
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(11)
    out: dict[str, list[float]] = {name: [] for name, _ in QUERIES}
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(20):  # warm up caches and connections
            timed(c, "/v1/deliveries", {"mobile": pool["mobile"][0]})
        for i in range(n):
            mobile = pool["mobile"][i % len(pool["mobile"])]
            batch = pool["batch"][i % len(pool["batch"])]
            out["deliveries by mobile"].append(timed(c, "/v1/deliveries", {"mobile": mobile})[0])
            out["deliveries by batch"].append(timed(c, "/v1/deliveries", {"batch_id": batch})[0])
            day = now - dt.timedelta(days=rng.uniform(1, 30))
            out["deliveries by status and 1-day range"].append(
                timed(
                    c,
                    "/v1/deliveries",
                    {
                        "status": rng.choice(["UNDELIV", "EXPIRED", "DELIVRD"]),
                        "done_from": day.isoformat(),
                        "done_to": (day + dt.timedelta(days=1)).isoformat(),
                    },
                )[0]
            )
            out["batch summary"].append(timed(c, f"/v1/batches/{batch}")[0])
        walks = max(2, n // 50)
        for w in range(walks):
            params: dict[str, str] = {
                "done_to": (now - dt.timedelta(days=w)).isoformat(),
                "limit": "100",
            }
            for _ in range(50):
                ms, body = timed(c, "/v1/deliveries", params)
                out["deliveries 50 pages deep by cursor"].append(ms)
                if not body["next_cursor"]:
                    break
                params["cursor"] = body["next_cursor"]
        start = (now - dt.timedelta(days=30)).isoformat()
        for _ in range(max(10, n // 10)):
            out["stats 30 days by hour"].append(
                timed(c, "/v1/stats", {"from": start, "to": now.isoformat(), "interval": "hour"})[0]
            )
        run_number_queries(c, pool, n, out)
    return out


def run_number_queries(
    c: httpx.Client, pool: dict[str, list[str]], n: int, out: dict[str, list[float]]
) -> None:
    """GET /v1/numbers/{mobile}; the list's first page; cursor walks from the start (among
    the numbers with a streak) and from deep among the numbers without one (most of them,
    listed in primary-key order), reached by pages of 1000."""
    for i in range(n):
        mobile = pool["mobile"][i % len(pool["mobile"])]
        out["number by mobile"].append(timed(c, f"/v1/numbers/{mobile}")[0])
        out["numbers first page"].append(timed(c, "/v1/numbers", {"limit": "100"})[0])
    walks = max(2, n // 50)
    params: dict[str, str] = {"limit": "100"}
    for _ in range(50 * walks):
        ms, body = timed(c, "/v1/numbers", params)
        out["numbers 50 pages deep by cursor"].append(ms)
        if not body["next_cursor"]:
            break
        params["cursor"] = body["next_cursor"]
    # Skip ahead by big pages to the numbers without a streak, then some more.
    params = {"limit": "1000"}
    skipped = 0
    while True:
        body = timed(c, "/v1/numbers", params)[1]
        params["cursor"] = body["next_cursor"]
        if not body["next_cursor"]:
            return
        if body["items"][-1]["failure_streak"] == 0:
            skipped += 1
            if skipped == 100:  # 100,000 numbers into them
                break
    params["limit"] = "100"
    for _ in range(50 * walks):
        ms, body = timed(c, "/v1/numbers", params)
        out["numbers pages deep among streak 0"].append(ms)
        if not body["next_cursor"]:
            break
        params["cursor"] = body["next_cursor"]


def explain(dsn_name: str, base: str, pool: dict[str, list[str]]) -> str:
    """Run each query once with auto_explain on and return the plans from the server log."""
    log = Path(
        subprocess.run(
            ["sh", "-c", "ls -t /var/log/postgresql/*.log | head -1"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    if not log.is_file():
        return "(no PostgreSQL log found; plans not captured)"
    offset = log.stat().st_size
    settings = (
        "session_preload_libraries = 'auto_explain'",
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        "auto_explain.log_buffers = on",
    )

    async def alter(on: bool) -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1/{dsn_name}")
        try:
            for s in settings:
                key = s.split(" = ")[0]
                sql = (
                    f'ALTER DATABASE "{dsn_name}" SET {s}'
                    if on
                    else f'ALTER DATABASE "{dsn_name}" RESET {key}'
                )
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(alter(True))
    server = Server(
        "app.main:app",
        {
            "DLR_DATABASE_URL": f"postgresql://postgres@127.0.0.1/{dsn_name}",
            "DLR_LOG_LEVEL": "warning",
        },
    )
    try:
        now = dt.datetime.now(dt.UTC)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.get("/v1/deliveries", params={"mobile": pool["mobile"][0]})
            c.get("/v1/deliveries", params={"batch_id": pool["batch"][0]})
            day = now - dt.timedelta(days=10)
            c.get(
                "/v1/deliveries",
                params={
                    "status": "UNDELIV",
                    "done_from": day.isoformat(),
                    "done_to": (day + dt.timedelta(days=1)).isoformat(),
                },
            )
            first = c.get("/v1/deliveries").json()
            c.get("/v1/deliveries", params={"cursor": first["next_cursor"]})
            c.get(f"/v1/batches/{pool['batch'][0]}")
            c.get(
                "/v1/stats",
                params={
                    "from": (now - dt.timedelta(days=30)).isoformat(),
                    "to": now.isoformat(),
                    "interval": "hour",
                },
            )
            c.get(f"/v1/numbers/{pool['mobile'][0]}")
            numbers = c.get("/v1/numbers").json()
            c.get("/v1/numbers", params={"cursor": numbers["next_cursor"]})
    finally:
        server.stop()
        asyncio.run(alter(False))
    return log.read_bytes()[offset:].decode(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200, help="samples per query")
    parser.add_argument("--reuse", action="store_true", help="keep the seeded database")
    parser.add_argument("--explain", type=Path, help="write captured plans to this file")
    parser.add_argument("--database", default="mboxii_bench_read", help="database to (re)create")
    args = parser.parse_args()

    name = args.database
    dsn = f"postgresql://postgres@127.0.0.1/{name}"
    if not args.reuse:
        pg_database(name)
        migrate(dsn)
        started = time.monotonic()
        asyncio.run(seed(dsn, args.reports, 500_000))
        print(
            f"seeded {args.reports:,} reports in {time.monotonic() - started:.0f}s", file=sys.stderr
        )
    asyncio.run(_vacuum(dsn))
    pool = asyncio.run(samples(dsn, max(args.requests, 50)))
    server = Server("app.main:app", {"DLR_DATABASE_URL": dsn, "DLR_LOG_LEVEL": "warning"})
    try:
        results = run_queries(server.url, pool, args.requests)
    finally:
        server.stop()
    print(f"\nread latency over {args.reports:,} reports, one uvicorn worker, sequential client\n")
    print("| query | samples | p50 ms | p95 ms | target p95 | met |")
    print("|---|---:|---:|---:|---:|---|")
    failed = False
    for q, target in QUERIES:
        v = results[q]
        if not v:  # a seed too small to reach that far
            print(f"| {q} | 0 | - | - | < {target:.0f} | - |")
            continue
        p95 = pct(v, 95)
        met = p95 < target
        failed |= not met
        print(
            f"| {q} | {len(v)} | {statistics.median(v):.1f} | {p95:.1f} | < {target:.0f} "
            f"| {'yes' if met else 'NO'} |"
        )
    if args.explain:
        args.explain.write_text(explain(name, "", pool))
        print(f"\nplans written to {args.explain}")
    return 0 if not failed else 1


async def _vacuum(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE reports")
        await conn.execute("VACUUM ANALYZE deliveries")
        await conn.execute("VACUUM ANALYZE delivery_counts")
        await conn.execute("VACUUM ANALYZE numbers")
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
