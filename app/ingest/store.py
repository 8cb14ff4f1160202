"""What the writer asks of a database (BatchStore), and what may ride along in a batch's
transaction (BatchEffect)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from app.ingest.fold import Arrival, DeliveryChange, StoreResult

log = logging.getLogger("mboxii_dlr.ingest")


@dataclass(frozen=True, slots=True)
class Companion:
    """What a CompanionEffect's query read for a batch: its rows (column-value lists, in the
    query's column order), for the batch IDs of the batch's reports."""

    batch_ids: frozenset[str]
    rows: list[list[Any]]


# Called once a batch's transaction has committed; it must not raise (it is logged if it does).
AfterCommit = Callable[[], None]


class BatchEffect(Protocol):
    """Work that commits with a batch or not at all (outbound events, per-number summaries).

    A store calls it inside the batch's transaction, after the delivery upsert and before the
    commit, once per batch that changed at least one delivery. Whatever it raises rolls the
    whole batch back: no report of it is acknowledged, and the writer treats the error like
    one of the batch's own (a connectivity error answers 503; anything the database refused
    sends the reports one by one).

    What should happen only once the batch is committed (a log line, a metric) goes in the
    callable an apply method may return: the store calls it after the commit, and never
    for a batch rolled back."""

    async def apply_postgres(
        self,
        connection: Any,
        changes: Sequence[DeliveryChange],
        companion: Companion | None = None,
    ) -> AfterCommit | None:
        """On PostgreSQL: `connection` is the batch's asyncpg connection; `companion` the
        rows of the effect's companion query (a CompanionEffect), else None."""

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> AfterCommit | None:
        """On SQLite, in the store's thread: `connection` is the batch's sqlite3 connection."""


@runtime_checkable
class CompanionEffect(Protocol):
    """A BatchEffect that reads rows for each batch on PostgreSQL: its `companion` query (a
    SELECT whose one parameter, written {batch_ids}, is the batch IDs of the batch's reports
    as a text[]) runs inside the statement that inserts the batch's reports, so in the
    batch's transaction and at no round trip of its own. apply_postgres then gets what it
    read as `companion`."""

    companion: str


class BatchStore(Protocol):
    """Stores batches of reports: each batch in one transaction, the reports deduplicated,
    each delivery folded by the ordering rule. Successive calls apply their statements in
    the order they were made, even when their commits overlap, so on a tie the report
    received later wins."""

    # How many queued reports make a batch worth starting beside the one in flight.
    overlap_minimum: int

    async def store(self, batch: Sequence[Arrival]) -> StoreResult: ...

    async def close(self) -> None: ...


def run_after_commit(result: StoreResult) -> None:
    """Run what the effects of a committed batch asked for; a failure there is logged, as
    the batch itself is stored and acknowledged whatever happens to them."""
    for hook in result.after_commit:
        try:
            hook()
        except Exception:
            log.exception("an effect's follow-up to a committed batch failed")
