"""How the simulated gateway behaves: its configuration, and the command line's spelling of
it (`mboxii-dlr simulate-gateway`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnswerFormat = Literal["comma", "space", "newline", "equals", "colon", "html"]
ANSWER_FORMATS: tuple[AnswerFormat, ...] = ("comma", "space", "newline", "equals", "colon", "html")


@dataclass
class SimulatorConfig:
    """How the simulated gateway behaves; every rate is a probability per message."""

    #: accepted CID -> CPW; None accepts any non-empty account
    accounts: dict[str, str] | None = None
    #: seconds from the send (or its schedule time) to each message's final state
    delay: tuple[float, float] = (1.0, 3.0)
    fail_rate: float = 0.1
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    get_callbacks: bool = False
    answer_format: AnswerFormat = "comma"
    timezone: str = "Asia/Taipei"
    #: first ID of both sequences (immediate and scheduled); None: from the clock, so a
    #: restarted simulator does not hand out IDs it gave before
    first_id: int | None = None
    seed: int | None = None
    callback_retries: int = 3
    callback_timeout: float = 5.0
    #: interface -> return code to answer every request with (to try error handling)
    force_codes: dict[str, str] = field(default_factory=dict)
    #: numbers (as the gateway writes them, 0912345678) whose every message fails
    fail_numbers: frozenset[str] = frozenset()


def parse_accounts(value: str) -> dict[str, str] | None:
    """`cid:pw,cid2:pw2` -> {cid: pw}; empty accepts any account."""
    if not value.strip():
        return None
    accounts = {}
    for part in value.split(","):
        cid, sep, cpw = part.strip().partition(":")
        if not sep or not cid or not cpw:
            raise ValueError(f"{part!r} is not cid:password")
        accounts[cid] = cpw
    return accounts


def parse_delay(value: str) -> tuple[float, float]:
    """`2` or `1-3` (seconds) -> (low, high)."""
    low, _, high = value.partition("-")
    pair = (float(low), float(high or low))
    if pair[0] < 0 or pair[1] < pair[0]:
        raise ValueError("the delay must be N or LOW-HIGH seconds, LOW <= HIGH")
    return pair


def describe(config: SimulatorConfig) -> dict[str, Any]:
    return {
        "accounts": "any" if config.accounts is None else sorted(config.accounts),
        "delay": config.delay,
        "fail_rate": config.fail_rate,
        "fail_numbers": len(config.fail_numbers),
        "drop_rate": config.drop_rate,
        "duplicate_rate": config.duplicate_rate,
        "reorder_rate": config.reorder_rate,
        "get_callbacks": config.get_callbacks,
        "answer_format": config.answer_format,
    }
