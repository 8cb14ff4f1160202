"""The command line `mboxii-dlr`: its parser and main. The commands live beside it: server
(serve, migrate, healthcheck), maintenance (purge, check-numbers, reconcile,
replay-rejected) and simulate (simulate-gateway)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from app.cli import maintenance, server, simulate
from app.core import redact
from app.core.logging import configure_logging
from app.core.settings import Settings, SettingsError, load_settings

Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mboxii-dlr",
        description="Receive and query MboxII SMS delivery reports. "
        "Settings come from DLR_* environment variables or a .env file.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.add_serve(sub)
    server.add_migrate(sub)
    maintenance.add_purge(sub)
    maintenance.add_reconcile(sub)
    simulate.add_simulate_gateway(sub)
    server.add_healthcheck(sub)
    maintenance.add_check_numbers(sub)
    maintenance.add_replay_rejected(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "needs_settings", True):
        configure_logging(args.log_level, "console")
        simulate_: Callable[[argparse.Namespace, None], int] = args.func
        return simulate_(args, None)
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
