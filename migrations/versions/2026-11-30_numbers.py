"""numbers: a summary per number kept by the write path, and its suppression

One row per number with deliveries (or suppressed by hand): counts by outcome, first and last
done_at, the latest state, the latest delivered time and the failure streak, written in the
same transaction as the deliveries they count (app.ingest.numbers); the suppression (source,
reason, since) and the time of the last lift, which bounds the streak.

The upgrade builds the summaries of the deliveries already stored, with the recount the
consistency check uses (app.db.numbers.recount), written out here as it is today.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUPPRESSED = sa.text("suppressed_since IS NOT NULL")

BACKFILL = """
INSERT INTO numbers (mobile, deliveries, delivered, failed, pending, first_done_at,
                     last_done_at, last_status, last_outcome, last_delivered_at, failure_streak)
SELECT mobile,
       count(*),
       sum(CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END),
       sum(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END),
       sum(CASE WHEN outcome = 'pending' THEN 1 ELSE 0 END),
       min(done_at),
       max(done_at),
       max(CASE WHEN place = 1 THEN status END),
       max(CASE WHEN place = 1 THEN outcome END),
       max(delivered_at),
       sum(CASE WHEN outcome = 'failed' AND final
                 AND (delivered_at IS NULL OR done_at > delivered_at) THEN 1 ELSE 0 END)
FROM (
  SELECT mobile, done_at, status, outcome, final,
         row_number() OVER (PARTITION BY mobile ORDER BY done_at DESC, msgid) AS place,
         max(CASE WHEN outcome = 'delivered' THEN done_at END)
           OVER (PARTITION BY mobile) AS delivered_at
  FROM deliveries
) AS ranked
GROUP BY mobile
"""


def upgrade() -> None:
    op.create_table(
        "numbers",
        sa.Column("mobile", sa.String(16), nullable=False),
        sa.Column("deliveries", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("delivered", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("pending", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_done_at", UTCDateTime(), nullable=True),
        sa.Column("last_done_at", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.String(16), nullable=True),
        sa.Column("last_outcome", sa.String(16), nullable=True),
        sa.Column("last_delivered_at", UTCDateTime(), nullable=True),
        sa.Column("failure_streak", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("suppressed_source", sa.String(16), nullable=True),
        sa.Column("suppressed_reason", sa.Text(), nullable=True),
        sa.Column("suppressed_since", UTCDateTime(), nullable=True),
        sa.Column("lifted_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "suppressed_source IN ('automatic', 'manual')",
            name=op.f("ck_numbers_suppressed_source"),
        ),
        sa.PrimaryKeyConstraint("mobile", name=op.f("pk_numbers")),
    )
    op.execute(BACKFILL)
    # Built after the backfill: one sort each instead of a million inserts into them.
    op.create_index(
        "ix_numbers_failure_streak_mobile",
        "numbers",
        [sa.column("failure_streak").desc(), "mobile"],
    )
    op.create_index(
        "ix_numbers_suppressed_failure_streak_mobile",
        "numbers",
        [sa.column("failure_streak").desc(), "mobile"],
        postgresql_where=SUPPRESSED,
        sqlite_where=SUPPRESSED,
    )
    op.create_index(
        "ix_numbers_suppressed_since_mobile",
        "numbers",
        [sa.column("suppressed_since").desc(), "mobile"],
        postgresql_where=SUPPRESSED,
        sqlite_where=SUPPRESSED,
    )


def downgrade() -> None:
    op.drop_index("ix_numbers_suppressed_since_mobile", table_name="numbers")
    op.drop_index("ix_numbers_suppressed_failure_streak_mobile", table_name="numbers")
    op.drop_index("ix_numbers_failure_streak_mobile", table_name="numbers")
    op.drop_table("numbers")
