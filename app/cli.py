"""The command line: serve, migrate and the operator's maintenance commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from app.logging import configure_logging, logging_config
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("mboxii_dlr")

Command = Callable[[argparse.Namespace, Settings], int]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP server (uvicorn)."""
    import uvicorn

    if args.migrate or settings.migrate_on_start:
        cmd_migrate(args, settings)
    uvicorn.run(
        "app.main:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        # DLR_TRUSTED_PROXIES alone decides whom to believe about client addresses.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        date_header=True,
        # Our access log (app.middleware) replaces uvicorn's, which prints raw paths with
        # the callback token; our logging config is applied in every worker process.
        access_log=False,
        log_config=logging_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema to the newest migration."""
    from app.schema import upgrade

    upgrade(settings.database_url, getattr(args, "revision", None) or "head")
    log.info("database schema is at the newest migration")
    return 0


def cmd_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the local server answers /healthz (the container's HEALTHCHECK)."""
    host = settings.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - the wildcard is what we translate here
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{args.port or settings.port}/healthz"
    # No proxy: an HTTP_PROXY meant for outbound traffic must not route a local probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"mboxii-dlr: {url} did not answer: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def cmd_replay_rejected(args: argparse.Namespace, settings: Settings) -> int:
    """Replay quarantined callback requests through the ingest path."""
    return asyncio.run(replay_all(settings, include_replayed=args.all))


async def replay_all(settings: Settings, include_replayed: bool) -> int:
    """Replay every quarantined row, oldest first, with its own engine and writer."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.db import create_engine
    from app.ingest import IngestUnavailable, Writer
    from app.metrics import Metrics
    from app.quarantine import list_rejected, replay

    engine = create_engine(settings.database_url, pool_size=2)
    writer = Writer(
        engine,
        Metrics(),
        batch_size=settings.ingest_batch_size,
        batch_delay=0,
        queue_size=settings.ingest_queue_size,
        timeout=settings.ingest_timeout_seconds,
    )
    writer.start()
    stored = duplicates = invalid = 0
    last_id = 0
    try:
        while True:
            # Pages by id, oldest first, so rows quarantined meanwhile are replayed too and
            # no more than one page of bodies is held.
            async with AsyncSession(engine) as session:
                rows = await list_rejected(
                    session, 200, after_id=last_id, include_replayed=include_replayed
                )
            if not rows:
                break
            for row in rows:
                last_id = row.id
                result = await replay(engine, writer, settings.zone, row)
                if result.report is None:
                    invalid += 1
                    problems = "; ".join(f"{e['field']} {e['message']}" for e in result.errors)
                    print(f"#{row.id}: still invalid: {problems}")
                elif result.new:
                    stored += 1
                    print(f"#{row.id}: stored msgid {result.report.msgid}")
                else:
                    duplicates += 1
                    print(f"#{row.id}: already stored (msgid {result.report.msgid})")
    except (IngestUnavailable, OSError, SQLAlchemyError) as exc:
        cause = getattr(exc, "orig", None) or exc
        print(
            f"mboxii-dlr: the database is unreachable or not migrated ({cause}); stopped",
            file=sys.stderr,
        )
        return 1
    finally:
        await writer.stop()
        await engine.dispose()
    print(
        f"replayed {stored + duplicates} ({stored} new, {duplicates} already stored), "
        f"still invalid {invalid}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mboxii-dlr",
        description="Receive and query MboxII SMS delivery reports. "
        "Settings come from DLR_* environment variables or a .env file.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--host", help="listen address (DLR_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (DLR_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (DLR_WORKERS, default 1)")
    serve.add_argument("--migrate", action="store_true", help="migrate before serving")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help=cmd_migrate.__doc__)
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(func=cmd_migrate)

    health = sub.add_parser("healthcheck", help=cmd_healthcheck.__doc__)
    health.add_argument("--port", type=int, help="port of the server (DLR_PORT, default 8000)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(func=cmd_healthcheck)

    replay = sub.add_parser("replay-rejected", help=cmd_replay_rejected.__doc__)
    replay.add_argument(
        "--all", action="store_true", help="also replay requests that were replayed before"
    )
    replay.set_defaults(func=cmd_replay_rejected)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"mboxii-dlr: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    func: Command = args.func
    return func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
