"""The ordering rule, and the plan of one batch: which reports are new, how each delivery's
new reports fold into one row, and what the stored rows say changed. Pure: no I/O."""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from app.ingest.parse import ParsedReport

# The ordering rule's terms, most significant first: a final word beats a non-final one
# (ENROUTE), then the later donetime wins. The database applies the same rule, built from
# these names (statements.delivery_upsert).
RANK = ("final", "done_at")
_rank = operator.attrgetter(*RANK)


class Ranked(Protocol):
    @property
    def final(self) -> bool: ...

    @property
    def done_at(self) -> dt.datetime: ...


def wins(candidate: Ranked, current: Ranked) -> bool:
    """The contract's ordering rule: whether `candidate`, received after `current`, becomes
    the delivery's state. A tie goes to the candidate: on equal terms the later-received
    report wins."""
    return bool(_rank(candidate) >= _rank(current))


@dataclass(frozen=True, slots=True)
class Arrival:
    """A report as it arrived: what a batch stores."""

    report: ParsedReport
    received_at: dt.datetime
    source: str = "callback"


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """A delivery's row: its current state, from the report that won the ordering rule."""

    msgid: str
    mobile: str
    batch_id: str
    type: str
    status: str
    statuscode: int
    outcome: str
    final: bool
    inconsistent: bool
    done_at: dt.datetime
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    reports: int
    report_id: int


@dataclass(frozen=True, slots=True)
class Previous:
    """What a change replaced."""

    status: str
    outcome: str
    final: bool
    done_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeliveryChange:
    """A delivery whose current state a batch changed: its first report arrived, or one of
    the batch's new reports won the ordering rule. `version` is 1 for a delivery's first
    state and counts one more for each batch that changed it; `previous` is None for a new
    delivery."""

    state: DeliveryState
    version: int
    previous: Previous | None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What one committed batch did."""

    new: list[bool]  # per arrival, in order: stored now (False: a duplicate)
    batch_mismatch: int  # new reports whose batch ID differs from their delivery's first
    changes: list[DeliveryChange]


REPORT_COLUMNS = (
    "report_key",
    "batch_id",
    "msgid",
    "mobile",
    "type",
    "status",
    "statuscode",
    "outcome",
    "final",
    "inconsistent",
    "done_at",
    "received_at",
    "source",
)
# A delivery row as the upsert proposes it, and as stored (with what changes need).
DELIVERY_COLUMNS = tuple(f.name for f in fields(DeliveryState))
PREVIOUS = tuple(f.name for f in fields(Previous))
CHANGE_COLUMNS = ("version", *(f"prev_{name}" for name in PREVIOUS))
STORED_COLUMNS = DELIVERY_COLUMNS + CHANGE_COLUMNS
_BATCH_ID = DELIVERY_COLUMNS.index("batch_id")
_REPORT_ID = DELIVERY_COLUMNS.index("report_id")


def change_from_row(row: Sequence[Any]) -> DeliveryChange:
    """A DeliveryChange from a stored row (STORED_COLUMNS, values of their Python types)."""
    values = tuple(row)
    n = len(DELIVERY_COLUMNS)
    version, status, outcome, final, done_at = values[n:]
    previous = None if status is None else Previous(status, outcome, bool(final), done_at)
    return DeliveryChange(DeliveryState(*values[:n]), version, previous)


@dataclass(slots=True)
class _Folded:
    """The new reports of one delivery in one batch, folded in the order received."""

    first: ParsedReport
    winner: ParsedReport
    report_id: int
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    batch_ids: list[str]

    def add(self, report: ParsedReport, report_id: int, received_at: dt.datetime) -> None:
        self.batch_ids.append(report.batch_id)
        self.first_received_at = min(self.first_received_at, received_at)
        self.last_received_at = max(self.last_received_at, received_at)
        if wins(report, self.winner):
            self.winner = report
            self.report_id = report_id

    def row(self) -> tuple[Any, ...]:
        """The proposed delivery row, in DELIVERY_COLUMNS order. Batch ID and type are the
        first report's: a delivery keeps its first."""
        w = self.winner
        return (
            w.msgid,
            w.mobile,
            self.first.batch_id,
            self.first.type,
            w.status,
            w.statuscode,
            w.outcome,
            w.final,
            w.inconsistent,
            w.done_at,
            self.first_received_at,
            self.last_received_at,
            len(self.batch_ids),
            self.report_id,
        )


class BatchPlan:
    """One batch on its way into the tables; the same steps whatever the database:
    report_rows() to insert, delivery_rows() from the ids of those inserted, result() from
    the delivery rows as stored."""

    def __init__(self, arrivals: Sequence[Arrival]) -> None:
        self.arrivals = arrivals
        # A copy of a report within the batch is a duplicate of its first occurrence.
        self._first: dict[int, Arrival] = {}
        for arrival in arrivals:
            self._first.setdefault(arrival.report.key, arrival)
        self._inserted: Mapping[int, int] = {}
        self._folds: dict[tuple[str, str], _Folded] = {}

    def report_rows(self) -> list[tuple[Any, ...]]:
        """One row per distinct report (REPORT_COLUMNS). They go in key order, so concurrent
        writers (other batches, other replicas) take their row locks in one order and
        cannot deadlock."""
        return sorted(
            (
                r.key,
                r.batch_id,
                r.msgid,
                r.mobile,
                r.type,
                r.status,
                r.statuscode,
                r.outcome,
                r.final,
                r.inconsistent,
                r.done_at,
                a.received_at,
                a.source,
            )
            for a in self._first.values()
            for r in (a.report,)
        )

    def delivery_rows(self, inserted: Mapping[int, int]) -> list[tuple[Any, ...]]:
        """Fold the new reports (`inserted`: report key -> id, for those the insert stored)
        of each delivery, in the order received, into one proposed row per delivery
        (DELIVERY_COLUMNS), in key order."""
        self._inserted = inserted
        folds = self._folds
        for arrival in self._first.values():
            r = arrival.report
            report_id = inserted.get(r.key)
            if report_id is None:
                continue
            folded = folds.get((r.msgid, r.mobile))
            if folded is None:
                at = arrival.received_at
                folds[(r.msgid, r.mobile)] = _Folded(r, r, report_id, at, at, [r.batch_id])
            else:
                folded.add(r, report_id, arrival.received_at)
        return sorted(f.row() for f in folds.values())

    def result(
        self,
        stored: Iterable[Sequence[Any]],
        decode: Callable[[Sequence[Any]], DeliveryChange] = change_from_row,
    ) -> StoreResult:
        """What the batch did, from its deliveries' rows after the upsert (STORED_COLUMNS).
        A delivery changed when its stored report_id is the one this batch proposed: its
        winner beat the stored state (or there was none). `decode` turns a changed row into
        Python values (SQLite hands back text and integers)."""
        mismatch = 0
        changes: list[DeliveryChange] = []
        folds = self._folds
        for row in stored:
            folded = folds[(row[0], row[1])]
            batch_id = row[_BATCH_ID]
            mismatch += sum(1 for b in folded.batch_ids if b != batch_id)
            if row[_REPORT_ID] == folded.report_id:
                changes.append(decode(row))
        inserted, first = self._inserted, self._first
        new = [a.report.key in inserted and first[a.report.key] is a for a in self.arrivals]
        return StoreResult(new, mismatch, changes)
