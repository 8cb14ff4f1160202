"""The command line: serve, migrate and the operator's maintenance commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence

from sqlalchemy.exc import SQLAlchemyError

from app.core import redact
from app.core.logging import configure_logging, logging_config
from app.core.settings import Settings, SettingsError, load_settings

log = logging.getLogger("mboxii_dlr")

Command = Callable[[argparse.Namespace, Settings], int]


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


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    """Delete deliveries (with their reports), quarantined requests and sends (with their
    numbers) older than DAYS."""

    from app.db.engine import create_engine
    from app.db.retention import PurgeResult, cutoff_for, purge

    days = args.older_than if args.older_than is not None else settings.retention_days
    if days is None:
        print("mboxii-dlr purge: give --older-than DAYS or set DLR_RETENTION_DAYS", file=sys.stderr)
        return 2
    cutoff = cutoff_for(days)
    print(f"deleting what was last received before {cutoff.isoformat(timespec='seconds')}")

    def progress(result: PurgeResult) -> None:
        print(f"deleted so far: {result.describe()}", flush=True)

    async def run() -> PurgeResult:
        engine = create_engine(
            settings.database_url, pool_size=1, prepared_statements=settings.db_prepared_statements
        )
        try:
            return await purge(engine, cutoff, batch_size=args.batch_size, progress=progress)
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    print(f"done: deleted {result.describe()}")
    return 0


def cmd_check_numbers(args: argparse.Namespace, settings: Settings) -> int:
    """Compare every number's summary with a recount from deliveries (--repair rewrites
    those that differ). Exit 0 when they all agree, 1 when some do not."""
    from app.core.mobiles import mask_mobile
    from app.db.engine import create_engine
    from app.db.numbers import CheckResult, check

    async def run() -> CheckResult:
        engine = create_engine(settings.database_url, pool_size=2)
        try:
            return await check(engine, repair=args.repair)
        finally:
            await engine.dispose()

    result = asyncio.run(run())

    def some(mobiles: list[str]) -> str:
        shown = ", ".join(mask_mobile(m) for m in mobiles[:10])
        return shown + (f" and {len(mobiles) - 10} more" if len(mobiles) > 10 else "")

    if not result.differing:
        print("check-numbers: every summary equals a recount of its deliveries")
        return 0
    print(f"check-numbers: {len(result.differing)} summaries differ: {some(result.differing)}")
    if not result.repaired:
        print("run `mboxii-dlr check-numbers --repair` to rewrite them from the deliveries")
        return 1
    if result.remaining:
        print(
            f"check-numbers: repaired, yet {len(result.remaining)} still differ (changed "
            f"meanwhile?): {some(result.remaining)}; run it again"
        )
        return 1
    print(f"check-numbers: repaired {len(result.differing)}; every summary now agrees")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the gateway (CheckSMS) once about sends still missing reports, and store them."""
    if not settings.mboxii_configured:
        print(
            "mboxii-dlr: reconcile needs the gateway account (DLR_MBOXII_CID, DLR_MBOXII_CPW)",
            file=sys.stderr,
        )
        return 2
    result = asyncio.run(_reconcile_once(settings, everything=args.all))
    print(f"reconciliation: {result}")
    return 0


async def _reconcile_once(settings: Settings, *, everything: bool) -> object:
    from app.core.metrics import Metrics
    from app.gateway import MboxiiClient
    from app.gateway.reconcile import Reconciler
    from app.state import open_storage

    async with open_storage(settings, Metrics()) as storage:
        client = MboxiiClient.from_settings(settings)
        try:
            reconciler = Reconciler(
                settings, storage.engine, storage.sessionmaker, storage.writer, client
            )
            return await reconciler.run_once(everything=everything)
        finally:
            await client.aclose()


def cmd_simulate_gateway(args: argparse.Namespace, _: Settings | None) -> int:
    """Run a simulator of the MboxII gateway (send, schedule, check, and callbacks)."""
    import json

    import uvicorn

    from simulator.app import SimulatorConfig, create_simulator, describe

    config = SimulatorConfig(
        accounts=args.accounts,
        delay=args.delay,
        fail_rate=args.fail_rate,
        drop_rate=args.drop_rate,
        duplicate_rate=args.duplicate_rate,
        reorder_rate=args.reorder_rate,
        get_callbacks=args.get_callbacks,
        answer_format=args.answer_format,
        first_id=args.first_id,
        seed=args.seed,
        force_codes=dict(args.force_code or []),
        fail_numbers=frozenset(n for group in args.fail_numbers or [] for n in group),
    )
    print(
        f"MboxII simulator on http://{args.host}:{args.port}/api/ "
        f"(set DLR_MBOXII_BASE_URL to it): {json.dumps(describe(config))}",
        file=sys.stderr,
    )
    uvicorn.run(
        create_simulator(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
    )
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
    from app.core.metrics import Metrics
    from app.ingest.errors import IngestUnavailable
    from app.ingest.quarantine import list_rejected, replay
    from app.state import open_storage

    stored = duplicates = invalid = 0
    last_id = 0
    try:
        # One report at a time: waiting for company to fill a batch would only slow it.
        async with open_storage(settings, Metrics(), pool_size=2, batch_delay=0) as storage:
            while True:
                # Pages by id, oldest first, so rows quarantined meanwhile are replayed too
                # and no more than one page of bodies is held.
                async with storage.sessionmaker() as session:
                    rows = await list_rejected(
                        session, 200, after_id=last_id, include_replayed=include_replayed
                    )
                if not rows:
                    break
                for row in rows:
                    last_id = row.id
                    # One transaction per row marks it replayed (the writer stores the report).
                    async with storage.sessionmaker.begin() as session:
                        result = await replay(session, storage.writer, settings.zone, row)
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
        print(f"mboxii-dlr: {database_problem(settings, exc)}; stopped", file=sys.stderr)
        return 1
    print(
        f"replayed {stored + duplicates} ({stored} new, {duplicates} already stored), "
        f"still invalid {invalid}"
    )
    return 0


def database_problem(settings: Settings, exc: BaseException) -> str:
    """One line on why the database did not serve, naming it (without its password)."""
    from app.db.engine import shown_url
    from app.db.migrate import describe_error

    return (
        f"the database {shown_url(settings.database_url)} is unreachable or not migrated "
        f"({describe_error(exc)})"
    )


def _rate(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("a rate is a probability between 0 and 1")
    return rate


def _accounts(value: str) -> dict[str, str] | None:
    from simulator.app import parse_accounts

    try:
        return parse_accounts(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _delay(value: str) -> tuple[float, float]:
    from simulator.app import parse_delay

    try:
        return parse_delay(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _numbers(value: str) -> list[str]:
    """`0912345678,+886922161529` -> the numbers as the gateway writes them."""
    from app.core.mobiles import national, normalize_mobile

    numbers = []
    for part in value.split(","):
        mobile = normalize_mobile(part.strip())
        if mobile is None:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a Taiwan mobile number")
        numbers.append(national(mobile))
    return numbers


def _forced(value: str) -> tuple[str, str]:
    interface, sep, code = value.partition(":")
    interface = interface.removesuffix(".php")
    if not sep or interface not in ("SendSMS", "SendTimeSMS", "CheckSMS") or len(code) != 2:
        raise argparse.ArgumentTypeError("use INTERFACE:CODE, e.g. SendSMS:30")
    return interface, code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mboxii-dlr",
        description="Receive and query MboxII SMS delivery reports. "
        "Settings come from DLR_* environment variables or a .env file.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--host", help="listen address (DLR_HOST, default 127.0.0.1)")
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

    reconcile = sub.add_parser("reconcile", help=cmd_reconcile.__doc__)
    reconcile.add_argument(
        "--all",
        action="store_true",
        help="ask about every send still missing reports, not only those due",
    )
    reconcile.set_defaults(func=cmd_reconcile)

    from simulator.app import ANSWER_FORMATS

    sim = sub.add_parser("simulate-gateway", help=cmd_simulate_gateway.__doc__)
    sim.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=9090, help="listen port (default 9090)")
    sim.add_argument(
        "--accounts",
        type=_accounts,
        default=None,
        help="accepted accounts, cid:password,... (default: any non-empty account)",
    )
    sim.add_argument(
        "--delay",
        type=_delay,
        default=(1.0, 3.0),
        help="seconds from send to final state, N or LOW-HIGH (default 1-3)",
    )
    sim.add_argument("--fail-rate", type=_rate, default=0.1, help="share that fails (0.1)")
    sim.add_argument("--drop-rate", type=_rate, default=0.0, help="callbacks never sent (0)")
    sim.add_argument("--duplicate-rate", type=_rate, default=0.0, help="callbacks sent twice (0)")
    sim.add_argument(
        "--reorder-rate",
        type=_rate,
        default=0.0,
        help="messages that also get an earlier-dated report after the final one (0)",
    )
    sim.add_argument(
        "--get-callbacks", action="store_true", help="call back with GET and a query string"
    )
    sim.add_argument(
        "--answer-format",
        choices=ANSWER_FORMATS,
        default="comma",
        help="layout of the answers: 00,ID (comma), 00 ID, 00<newline>ID, 00=ID, 00:ID, "
        "or wrapped in HTML (default comma)",
    )
    sim.add_argument("--first-id", type=int, help="first ID of both ID sequences")
    sim.add_argument("--seed", type=int, help="random seed, for repeatable runs")
    sim.add_argument(
        "--force-code",
        type=_forced,
        action="append",
        metavar="INTERFACE:CODE",
        help="answer every request of INTERFACE with CODE (e.g. SendSMS:30); repeatable",
    )
    sim.add_argument(
        "--fail-numbers",
        type=_numbers,
        action="append",
        metavar="N,N,...",
        help="numbers whose every message fails (UNDELIV, EXPIRED or REJECTD); repeatable",
    )
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    sim.set_defaults(func=cmd_simulate_gateway, needs_settings=False)
    health = sub.add_parser("healthcheck", help=cmd_healthcheck.__doc__)
    health.add_argument("--port", type=int, help="port of the server (DLR_PORT, default 8000)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(func=cmd_healthcheck)

    numbers = sub.add_parser("check-numbers", help=cmd_check_numbers.__doc__)
    numbers.add_argument(
        "--repair", action="store_true", help="rewrite the summaries that differ from a recount"
    )
    numbers.set_defaults(func=cmd_check_numbers)

    replay = sub.add_parser("replay-rejected", help=cmd_replay_rejected.__doc__)
    replay.add_argument(
        "--all", action="store_true", help="also replay requests that were replayed before"
    )
    replay.set_defaults(func=cmd_replay_rejected)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "needs_settings", True):
        # The simulator stands in for the gateway: it needs none of the service's settings.
        configure_logging(args.log_level, "console")
        simulate: Callable[[argparse.Namespace, None], int] = args.func
        return simulate(args, None)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"mboxii-dlr: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    undo_redaction = redact.install(settings.secret_values)
    func: Command = args.func
    try:
        return func(args, settings)
    finally:
        undo_redaction()


if __name__ == "__main__":
    sys.exit(main())
