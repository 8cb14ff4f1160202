"""Replicas benchmark: callbacks per second into one PostgreSQL from one service process, and
from three (replicas, or DLR_WORKERS=3), the load spread evenly over them.

Each server is one uvicorn worker with the ingest benchmark's flags (bench/ingest.py); the
load is one wrk per server, the connections shared out (64 in all by default), every report
unique; the stored rows are counted against the acknowledged requests.

What a two-core machine can show: the servers, wrk and PostgreSQL share the same two cores,
so three processes cannot go three times as fast; the ratio says whether more processes
cost throughput (lock waits, more connections, CPU spent switching) rather than how far
they scale. On a machine with cores to spare, and PostgreSQL on its own host, run it again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import uuid

from bench.ingest import Server, count_stored, migrate, pg_database, run_wrk


def run(servers: int, args: argparse.Namespace) -> dict[str, float]:
    url = pg_database("mboxii_bench_replicas")
    migrate(url)
    env = {"DLR_DATABASE_URL": url, "DLR_LOG_LEVEL": "warning", "DLR_ENV": "development"}
    running = [Server("app.main:app", env) for _ in range(servers)]
    each = max(1, args.connections // servers)
    prefix = f"r{uuid.uuid4().hex[:8]}"
    try:
        with concurrent.futures.ThreadPoolExecutor(servers) as pool:
            warm = [
                pool.submit(run_wrk, s.url, args.warmup, each, f"warm{i}{uuid.uuid4().hex[:4]}")
                for i, s in enumerate(running)
            ]
            for f in warm:
                f.result()
            measured = [
                pool.submit(run_wrk, s.url, args.duration, each, f"{prefix}{i}")
                for i, s in enumerate(running)
            ]
            results = [f.result() for f in measured]
    finally:
        for s in running:
            s.stop()
    requests = sum(r["requests"] for r in results)
    failed = sum(r["non2xx"] + r["errors"] for r in results)
    stored = sum(count_stored(url, f"{prefix}{i}") for i in range(servers))
    return {
        "rps": sum(r["rps"] for r in results),
        "p99": max(r["p99"] for r in results),
        "acknowledged": requests - failed,
        "failed": failed,
        "stored": stored,
        # up to one request per connection is still in flight when wrk stops counting
        "ok": requests - failed <= stored <= requests + args.connections,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up")
    parser.add_argument("--connections", type=int, default=64, help="in all, shared out")
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args(argv)

    one = run(1, args)
    print(f"  1 process: {one['rps']:.0f} req/s", file=sys.stderr, flush=True)
    many = run(args.replicas, args)
    print(f"  {args.replicas} processes: {many['rps']:.0f} req/s", file=sys.stderr, flush=True)
    print(f"\nwrk, {args.connections} connections in all, {args.duration}s, one PostgreSQL\n")
    print("| processes | req/s | worst p99 ms | failed | check |")
    print("|---:|---:|---:|---:|---|")
    for n, r in ((1, one), (args.replicas, many)):
        check = f"stored {r['stored']:.0f} of {r['acknowledged']:.0f} acknowledged: "
        check += "OK" if r["ok"] else "LOST"
        print(f"| {n} | {r['rps']:.0f} | {r['p99']:.1f} | {r['failed']:.0f} | {check} |")
    print(f"\n{args.replicas} processes / 1 = {many['rps'] / one['rps']:.2f}x")
    return 0 if one["ok"] and many["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
