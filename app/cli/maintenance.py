"""The operator's maintenance commands: purge, check-numbers, reconcile, replay-rejected."""

from __future__ import annotations

import argparse
import asyncio
import sys

from sqlalchemy.exc import SQLAlchemyError

from app.core.settings import Settings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


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


def add_purge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def add_check_numbers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    numbers = sub.add_parser("check-numbers", help=cmd_check_numbers.__doc__)
    numbers.add_argument(
        "--repair", action="store_true", help="rewrite the summaries that differ from a recount"
    )
    numbers.set_defaults(func=cmd_check_numbers)


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


def add_reconcile(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = sub.add_parser("reconcile", help=cmd_reconcile.__doc__)
    reconcile.add_argument(
        "--all",
        action="store_true",
        help="ask about every send still missing reports, not only those due",
    )
    reconcile.set_defaults(func=cmd_reconcile)


def cmd_replay_rejected(args: argparse.Namespace, settings: Settings) -> int:
    """Replay quarantined callback requests through the ingest path."""
    return asyncio.run(replay_all(settings, include_replayed=args.all))


def add_replay_rejected(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser("replay-rejected", help=cmd_replay_rejected.__doc__)
    replay.add_argument(
        "--all", action="store_true", help="also replay requests that were replayed before"
    )
    replay.set_defaults(func=cmd_replay_rejected)


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
