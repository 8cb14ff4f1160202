"""The SQL both stores share, built once from the models: the tables, the conflict target
of a report, and the delivery upsert that applies the ordering rule in the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, literal_column, tuple_

from app.db.models import DELIVERIES, REPORTS
from app.ingest.fold import MERGED_COLUMNS, PREVIOUS, RANK, RETURNED_COLUMNS

# A report's identity: its retries meet on this unique key. done_at is the partition key of
# reports on PostgreSQL, so it must be in every unique key; report_key hashes donetime, so a
# retry carries the same done_at and lands in the same partition as its first copy.
REPORT_IDENTITY = [REPORTS.c.msgid, REPORTS.c.report_key, REPORTS.c.done_at]


def delivery_upsert(insert: Any) -> Any:
    """`insert` (a dialect's INSERT of proposed delivery rows) made to fold each row into
    the stored delivery by fold.wins: the proposed state replaces the stored one when it
    ranks at least as high (a tie goes to the later-received, this one). A replacement adds
    one to `version` and keeps what it replaced in the prev_* columns; a proposal that loses
    changes neither."""
    new, old = insert.excluded, DELIVERIES.c
    newer = tuple_(*(new[name] for name in RANK)) >= tuple_(*(old[name] for name in RANK))

    def pick(replacement: ColumnElement[Any], kept: ColumnElement[Any]) -> Any:
        return case((newer, replacement), else_=kept)

    state = ("status", "statuscode", "outcome", "final", "inconsistent", "done_at", "report_id")
    return insert.on_conflict_do_update(
        index_elements=[old.msgid, old.mobile],
        set_={
            **{name: pick(new[name], old[name]) for name in state},
            "version": pick(old.version + literal_column("1"), old.version),
            **{f"prev_{name}": pick(old[name], old[f"prev_{name}"]) for name in PREVIOUS},
            "first_received_at": case(
                (new.first_received_at < old.first_received_at, new.first_received_at),
                else_=old.first_received_at,
            ),
            "last_received_at": case(
                (new.last_received_at > old.last_received_at, new.last_received_at),
                else_=old.last_received_at,
            ),
            "reports": old.reports + new.reports,
        },
    )


def returned_columns() -> list[Any]:
    """The delivery columns the stores read back after the upsert: fold.RETURNED_COLUMNS,
    then fold.MERGED_COLUMNS as NULL while the delivery is in its first state."""
    c = DELIVERIES.c
    later = c.version > literal_column("1")
    return [*(c[name] for name in RETURNED_COLUMNS), *(case((later, c[n])) for n in MERGED_COLUMNS)]
