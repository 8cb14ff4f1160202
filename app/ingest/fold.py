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
    """Anything the rule can rank: a report, or a delivery's current state."""

    @property
    def final(self) -> bool: ...

    @property
    def done_at(self) -> dt.datetime: ...


def wins(candidate: Ranked, current: Ranked) -> bool:
    """The contract's ordering rule: whether `candidate`, received after `current`, becomes
    the delivery's state. A tie goes to the candidate: on equal terms the later-received
    report wins."""
    return bool(_rank(candidate) >= _rank(current))


@dataclass(slots=True)
class Arrival:
    """A report as it arrived: what a batch stores. (Read-only by convention; one is made
    per callback, and a frozen dataclass costs more to make.)"""

    report: ParsedReport
    received_at: dt.datetime
    source: str = "callback"


# The three below are read-only by convention, not frozen: a frozen dataclass's __init__
# costs three times as much, and a batch builds one of each per changed delivery.


@dataclass(slots=True)
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


@dataclass(slots=True)
class Previous:
    """What a change replaced."""

    status: str
    outcome: str
    final: bool
    done_at: dt.datetime


@dataclass(slots=True)
class DeliveryChange:
    """A delivery whose current state a batch changed: its first report arrived, or one of
    the batch's new reports won the ordering rule. `version` is 1 for a delivery's first
    state and counts one more for each batch that changed it; `previous` is None for a new
    delivery."""

    state: DeliveryState
    version: int
    previous: Previous | None


class StoreResult:
    """What one committed batch did: per arrival, in order, whether its report was stored
    now (False: a duplicate); how many new reports carry another batch ID than their
    delivery's first; and the deliveries it changed. `after_commit` holds what its effects
    asked to run once it is committed (the store runs them)."""

    __slots__ = ("_changes", "_decode_changes", "after_commit", "batch_mismatch", "new")

    def __init__(
        self,
        new: list[bool],
        batch_mismatch: int,
        changes: Callable[[], list[DeliveryChange]] = list,
    ) -> None:
        self.new = new
        self.batch_mismatch = batch_mismatch
        self._decode_changes = changes
        self._changes: list[DeliveryChange] | None = None
        self.after_commit: list[Callable[[], None]] = []

    @property
    def changes(self) -> list[DeliveryChange]:
        """Built on first use: without an effect nobody asks, and building one per new
        delivery of every batch cost ~2 us a report."""
        if self._changes is None:
            self._changes = self._decode_changes()
        return self._changes


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
# A delivery row as the upsert proposes it.
DELIVERY_COLUMNS = tuple(f.name for f in fields(DeliveryState))
PREVIOUS = tuple(f.name for f in fields(Previous))
# What the stores read back for each delivery of the batch after the upsert (PostgreSQL in
# its RETURNING, SQLite in one SELECT): RETURNED_COLUMNS, then the MERGED_COLUMNS, which are
# NULL while version is 1. A delivery's first state is the proposed row itself, and
# decoding those columns (timestamps) for every new delivery cost more than the rest of a
# report's bookkeeping. A change's other columns are its winner's, which the plan holds.
RETURNED_COLUMNS = ("msgid", "mobile", "batch_id", "report_id", "version")
MERGED_COLUMNS = (
    "type",
    "first_received_at",
    "last_received_at",
    "reports",
    *(f"prev_{name}" for name in PREVIOUS),
)


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

    def change(self, returned: Sequence[Any]) -> DeliveryChange:
        """The change this batch made, from the delivery's returned row (RETURNED_COLUMNS
        and MERGED_COLUMNS, in Python types) when this batch's winner is its state now."""
        version = returned[4]
        if version == 1:  # the delivery's first state: the proposed row
            return DeliveryChange(DeliveryState(*self.row()), 1, None)
        _, _, batch_id, report_id, _, type_, first, last, reports, *previous = returned
        state = DeliveryState(*self._columns(batch_id, type_, first, last, reports, report_id))
        return DeliveryChange(state, version, Previous(*previous))

    def row(self) -> tuple[Any, ...]:
        """The proposed delivery row, in DELIVERY_COLUMNS order. Batch ID and type are the
        first report's: a delivery keeps its first."""
        return self._columns(
            self.first.batch_id,
            self.first.type,
            self.first_received_at,
            self.last_received_at,
            len(self.batch_ids),
            self.report_id,
        )

    def _columns(
        self,
        batch_id: str,
        type_: str,
        first: dt.datetime,
        last: dt.datetime,
        reports: int,
        report_id: int,
    ) -> tuple[Any, ...]:
        """The winner's state with the delivery's own columns, in DELIVERY_COLUMNS order."""
        w = self.winner
        return (
            w.msgid,
            w.mobile,
            batch_id,
            type_,
            w.status,
            w.statuscode,
            w.outcome,
            w.final,
            w.inconsistent,
            w.done_at,
            first,
            last,
            reports,
            report_id,
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
        returned: Iterable[Sequence[Any]],
        decode: Callable[[Sequence[Any]], Sequence[Any]] | None = None,
    ) -> StoreResult:
        """What the batch did, from its deliveries' rows after the upsert (RETURNED_COLUMNS
        and MERGED_COLUMNS). A delivery changed when its report_id is the one this batch
        proposed: its winner beat the stored state (or there was none). `decode` gives a
        changed row's values their Python types (SQLite hands back text and integers)."""
        mismatch = 0
        changed: list[tuple[_Folded, Sequence[Any]]] = []
        folds = self._folds
        for row in returned:
            msgid, mobile, batch_id, report_id = row[0], row[1], row[2], row[3]
            folded = folds[(msgid, mobile)]
            mismatch += sum(1 for b in folded.batch_ids if b != batch_id)
            if report_id == folded.report_id:
                changed.append((folded, row))
        inserted, first = self._inserted, self._first
        new = [a.report.key in inserted and first[a.report.key] is a for a in self.arrivals]

        def changes() -> list[DeliveryChange]:
            if decode is None:
                return [folded.change(row) for folded, row in changed]
            return [folded.change(decode(row)) for folded, row in changed]

        return StoreResult(new, mismatch, changes)
