"""The gateway's status words: which are final, and the outcome each one means."""

from __future__ import annotations

DELIVERED_WORDS = frozenset({"DELIVRD"})
FAILED_WORDS = frozenset({"EXPIRED", "DELETED", "UNDELIV", "REJECTD", "SYNTAXE", "UNKNOWN"})
NON_FINAL_WORDS = frozenset({"ENROUTE"})
# Words the metrics name; anything else is counted as OTHER.
KNOWN_WORDS = DELIVERED_WORDS | FAILED_WORDS | NON_FINAL_WORDS | {"ACCEPTD"}


def classify(status: str, statuscode: int) -> tuple[str, bool, bool]:
    """(outcome, final, inconsistent) of a status word and code."""
    if status in DELIVERED_WORDS:
        return "delivered", True, statuscode == 0
    if status in FAILED_WORDS:
        return "failed", True, statuscode == 1
    if status in NON_FINAL_WORDS:
        return "pending", False, False
    return ("delivered" if statuscode == 1 else "failed"), True, False
