"""The commands that run the service: serve, migrate, and the container's healthcheck."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator

from sqlalchemy.exc import SQLAlchemyError

from app.core.logging import logging_config
from app.core.settings import Settings

log = logging.getLogger("mboxii_dlr")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP server (uvicorn)."""
    if args.migrate or settings.migrate_on_start:
        failed = cmd_migrate(args, settings)
        if failed:
            return failed
    workers = args.workers or settings.workers
    with shared_metrics(workers):
        run_uvicorn(args, settings, workers)
    return 0


def add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--host", help="listen address (DLR_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (DLR_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (DLR_WORKERS, default 1)")
    serve.add_argument("--migrate", action="store_true", help="migrate before serving")
    serve.set_defaults(func=cmd_serve)


@contextlib.contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, a fresh directory where each writes its metrics, so that any of
    them answers /metrics for all (app.core.metrics); removed when the server stops. It must
    be in the environment before the workers start: prometheus-client reads it on import."""
    if workers < 2:
        yield
        return
    from app.core.metrics import MULTIPROCESS_DIR

    directory = tempfile.mkdtemp(prefix="mboxii-dlr-metrics-")
    previous = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROCESS_DIR, None)
        else:
            os.environ[MULTIPROCESS_DIR] = previous


def run_uvicorn(args: argparse.Namespace, settings: Settings, workers: int) -> None:
    import uvicorn

    from app.web.protocol import deadline_protocol

    uvicorn.run(
        "app.main:app",
        # Closes connections that do not deliver their request in time (uvicorn alone waits
        # for ever, and each one holds a place among DLR_LIMIT_CONCURRENCY).
        http=deadline_protocol(settings.header_timeout_seconds),
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=workers,
        # DLR_TRUSTED_PROXIES alone decides whom to believe about client addresses.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        date_header=True,
        # Our access log (app.web.middleware) replaces uvicorn's, which prints raw paths with
        # the callback token; our logging config is applied in every worker process.
        access_log=False,
        log_config=logging_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema to the newest migration."""
    from app.db.engine import shown_url
    from app.db.migrate import describe_error, upgrade

    try:
        upgrade(
            settings.database_url,
            getattr(args, "revision", None) or "head",
            prepared_statements=settings.db_prepared_statements,
        )
    except (OSError, SQLAlchemyError) as exc:
        print(
            f"mboxii-dlr: cannot migrate the database {shown_url(settings.database_url)}: "
            f"{describe_error(exc)}. Check that the server runs and the database exists "
            "(createdb NAME), or set DLR_DATABASE_URL to another one.",
            file=sys.stderr,
        )
        return 1
    log.info("database schema is at the newest migration")
    return 0


def add_migrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser("migrate", help=cmd_migrate.__doc__)
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(func=cmd_migrate)


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


def add_healthcheck(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser("healthcheck", help=cmd_healthcheck.__doc__)
    health.add_argument("--port", type=int, help="port of the server (DLR_PORT, default 8000)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(func=cmd_healthcheck)
