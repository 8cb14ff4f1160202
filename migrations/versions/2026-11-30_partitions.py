"""reports partitioned by month of done_at on PostgreSQL; the identity gains done_at

PostgreSQL: `reports` becomes a table partitioned by range of done_at, one partition per UTC
month (`reports_YYYY_MM`) from the month of the first report ever received to three months
ahead, and `reports_default` for every other date (odd donetimes: years past, far future).
Retention then drops whole months instead of deleting rows. A partitioned table's unique
keys must hold the partition key, so the primary key becomes (id, done_at) and the identity
UNIQUE (msgid, report_key, done_at): the same identity, as report_key hashes donetime (a
retry has the same done_at, so it meets its first copy in the same partition).

The existing rows are copied while ingest goes on: first every row up to the highest id
committed when the migration starts (after waiting for the transactions then running),
without blocking anyone; the indexes are built on the copy; then, under an exclusive lock
on the old table, the rows that arrived meanwhile, and the tables are swapped. Only that
last step blocks ingest (callbacks wait for it, up to DLR_INGEST_TIMEOUT_SECONDS, then get a
503 the gateway retries). bench/README.md records how long it takes per million rows.

SQLite keeps one table; only its unique key changes (a table rebuild, like migration 0005).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

import datetime as dt
import logging
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

MONTHS_AHEAD = 3
#: No month partitions further back than this (a clock once set wrong must not make
#: hundreds of them); older rows go to the default partition.
MOST_YEARS_BACK = 10
#: How long the copy waits for the transactions running when it starts (an idle session
#: left in a transaction would hold it forever).
WAIT_SECONDS = 300
#: ids below the highest committed one copied again under the lock (an index range).
MARGIN = 10_000
SEQUENCE = sa.text("SELECT pg_get_serial_sequence('reports', 'id')")
COLUMNS = (
    "id, report_key, batch_id, msgid, mobile, type, status, statuscode, outcome, final, "
    "inconsistent, done_at, received_at, source"
)


def _months(first: dt.datetime, last: dt.datetime) -> list[dt.datetime]:
    months = []
    month = dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC)
    while month <= last:
        months.append(month)
        index = month.year * 12 + month.month
        month = dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)
    return months


def _next_month(month: dt.datetime) -> dt.datetime:
    index = month.year * 12 + month.month
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def _literal(when: dt.datetime) -> str:
    return f"'{when.isoformat()}'"


def _wait_for_running_transactions(connection: Connection) -> None:
    """Wait until every transaction that writes in this database now has ended, so that
    every id below the highest committed one is committed (or rolled back) too."""
    writing = sa.text(
        "SELECT pid::text || ':' || backend_xid::text FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_xid IS NOT NULL "
        "AND pid <> pg_backend_pid()"
    )
    pending = set(connection.execute(writing).scalars())
    deadline = time.monotonic() + WAIT_SECONDS
    while pending:
        # pg_stat_activity is read once per transaction unless told to read it again.
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        pending &= set(connection.execute(writing).scalars())
        if not pending:
            return
        if time.monotonic() > deadline:
            pids = ", ".join(sorted(p.split(":")[0] for p in pending))
            raise RuntimeError(
                f"transactions of the sessions {pids} have run for over {WAIT_SECONDS}s; end "
                "them (pg_stat_activity shows what they are) and migrate again"
            )
        time.sleep(0.1)


def _partition_postgres(connection: Connection) -> None:
    sequence = connection.execute(SEQUENCE).scalar()
    first = connection.execute(sa.text("SELECT min(received_at) FROM reports")).scalar()
    now = dt.datetime.now(dt.UTC)
    first = max((first or now).astimezone(dt.UTC), now - dt.timedelta(days=365 * MOST_YEARS_BACK))
    last = now
    for _ in range(MONTHS_AHEAD):
        last = _next_month(dt.datetime(last.year, last.month, 1, tzinfo=dt.UTC))

    op.execute(
        "CREATE TABLE reports_new (LIKE reports INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (done_at)"
    )
    for month in _months(first, last):
        name = f"reports_{month.year:04d}_{month.month:02d}"
        op.execute(
            f"CREATE TABLE {name} PARTITION OF reports_new "
            f"FOR VALUES FROM ({_literal(month)}) TO ({_literal(_next_month(month))})"
        )
    op.execute("CREATE TABLE reports_default PARTITION OF reports_new DEFAULT")

    # The bulk of the rows, beside ingest: every id up to the highest committed now.
    highest = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM reports")).scalar()
    _wait_for_running_transactions(connection)
    started = time.monotonic()
    op.execute(
        f"INSERT INTO reports_new ({COLUMNS}) SELECT {COLUMNS} FROM reports WHERE id <= {highest}"
    )
    copied = time.monotonic()
    # Indexes built once over the copy cost far less than kept up row by row.
    op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.execute("ALTER TABLE reports_new ADD CONSTRAINT pk_reports_new PRIMARY KEY (id, done_at)")
    op.execute(
        "ALTER TABLE reports_new ADD CONSTRAINT uq_reports_new_identity "
        "UNIQUE (msgid, report_key, done_at)"
    )
    op.execute("CREATE INDEX ix_reports_new_batch ON reports_new (batch_id, type, msgid, mobile)")
    indexed = time.monotonic()

    # What arrived meanwhile, with ingest held back (reads too, for the swap): seconds.
    op.execute("LOCK TABLE reports IN ACCESS EXCLUSIVE MODE")
    # (and a margin below it, should a row have taken its id from the sequence before the
    # highest one committed, yet written it only after the wait looked: microseconds apart)
    op.execute(
        f"INSERT INTO reports_new ({COLUMNS}) SELECT {COLUMNS} FROM reports "
        f"WHERE id > {highest - MARGIN} ON CONFLICT DO NOTHING"
    )
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY reports_new.id")
    op.execute("DROP TABLE reports")
    op.execute("ALTER TABLE reports_new RENAME TO reports")
    op.execute("ALTER TABLE reports RENAME CONSTRAINT pk_reports_new TO pk_reports")
    op.execute(
        "ALTER TABLE reports RENAME CONSTRAINT uq_reports_new_identity "
        "TO uq_reports_msgid_report_key_done_at"
    )
    op.execute("ALTER INDEX ix_reports_new_batch RENAME TO ix_reports_batch_id_type_msgid_mobile")
    swapped = time.monotonic()
    # Autovacuum never analyzes a partitioned table itself; the planner wants its statistics.
    op.execute("ANALYZE reports")
    log.info(
        "reports partitioned: copied %d rows in %.1fs, indexed in %.1fs, swapped in %.1fs",
        highest,
        copied - started,
        indexed - copied,
        swapped - indexed,
    )


def _unpartition_postgres(connection: Connection) -> None:
    sequence = connection.execute(SEQUENCE).scalar()
    op.execute("LOCK TABLE reports IN ACCESS EXCLUSIVE MODE")
    op.execute("CREATE TABLE reports_old (LIKE reports INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"INSERT INTO reports_old ({COLUMNS}) SELECT {COLUMNS} FROM reports")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY reports_old.id")
    op.execute("DROP TABLE reports")
    op.execute("ALTER TABLE reports_old RENAME TO reports")
    op.execute("ALTER TABLE reports ADD CONSTRAINT pk_reports PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE reports ADD CONSTRAINT uq_reports_msgid_report_key UNIQUE (msgid, report_key)"
    )
    op.create_index(
        "ix_reports_batch_id_type_msgid_mobile", "reports", ["batch_id", "type", "msgid", "mobile"]
    )


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        _partition_postgres(connection)
        return
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint("uq_reports_msgid_report_key", type_="unique")
        batch.create_unique_constraint(
            "uq_reports_msgid_report_key_done_at", ["msgid", "report_key", "done_at"]
        )


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        _unpartition_postgres(connection)
        return
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint("uq_reports_msgid_report_key_done_at", type_="unique")
        batch.create_unique_constraint("uq_reports_msgid_report_key", ["msgid", "report_key"])
