"""The command line: serve, migrate and the operator's maintenance commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from app import redact
from app.settings import Settings, SettingsError, load_settings

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
        access_log=False,
        log_level=settings.log_level,
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema to the newest migration."""
    from app.schema import upgrade

    upgrade(settings.database_url, getattr(args, "revision", None) or "head")
    print("database schema is at the newest migration", file=sys.stderr)
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    """Delete deliveries (with their reports) and quarantined requests older than DAYS."""
    import asyncio

    from app.db import create_engine
    from app.retention import PurgeResult, cutoff_for, purge

    days = args.older_than if args.older_than is not None else settings.retention_days
    if days is None:
        print("mboxii-dlr purge: give --older-than DAYS or set DLR_RETENTION_DAYS", file=sys.stderr)
        return 2
    cutoff = cutoff_for(days)
    print(f"deleting what was last received before {cutoff.isoformat(timespec='seconds')}")

    def progress(result: PurgeResult) -> None:
        print(f"deleted so far: {result.describe()}", flush=True)

    async def run() -> PurgeResult:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await purge(engine, cutoff, batch_size=args.batch_size, progress=progress)
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    print(f"done: deleted {result.describe()}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


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

    purge = sub.add_parser("purge", help=cmd_purge.__doc__)
    purge.add_argument(
        "--older-than",
        type=_positive_int,
        metavar="DAYS",
        help="age in days of the newest report of what goes (default DLR_RETENTION_DAYS)",
    )
    purge.add_argument(
        "--batch-size",
        type=_positive_int,
        default=5000,
        help="deliveries per transaction (default 5000)",
    )
    purge.set_defaults(func=cmd_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"mboxii-dlr: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    redact.install([*settings.callback_tokens, *settings.api_keys])
    func: Command = args.func
    return func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
