"""`mboxii-dlr simulate-gateway`: the MboxII simulator (simulator/) on a port of its own."""

from __future__ import annotations

import argparse
import sys


def cmd_simulate_gateway(args: argparse.Namespace, _: None) -> int:
    """Run a simulator of the MboxII gateway (send, schedule, check, and callbacks)."""
    import json

    import uvicorn

    from simulator.app import create_simulator
    from simulator.config import SimulatorConfig, describe

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


def _rate(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("a rate is a probability between 0 and 1")
    return rate


def _accounts(value: str) -> dict[str, str] | None:
    from simulator.config import parse_accounts

    try:
        return parse_accounts(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _delay(value: str) -> tuple[float, float]:
    from simulator.config import parse_delay

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


def add_simulate_gateway(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from simulator.config import ANSWER_FORMATS

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
    # The simulator stands in for the gateway: it needs none of the service's settings.
    sim.set_defaults(func=cmd_simulate_gateway, needs_settings=False)
