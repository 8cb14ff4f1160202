"""initial schema: reports, deliveries, rejected

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("report_key", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("msgid", sa.String(64), nullable=False),
        sa.Column("mobile", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("statuscode", sa.SmallInteger(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("inconsistent", sa.Boolean(), nullable=False),
        sa.Column("done_at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.CheckConstraint("statuscode IN (0, 1)", name=op.f("ck_reports_statuscode")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
        sa.UniqueConstraint("report_key", name=op.f("uq_reports_report_key")),
    )
    op.create_index("ix_reports_msgid_mobile_id", "reports", ["msgid", "mobile", "id"])
    op.create_table(
        "deliveries",
        sa.Column("msgid", sa.String(64), nullable=False),
        sa.Column("mobile", sa.String(16), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("statuscode", sa.SmallInteger(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("inconsistent", sa.Boolean(), nullable=False),
        sa.Column("done_at", UTCDateTime(), nullable=False),
        sa.Column("first_received_at", UTCDateTime(), nullable=False),
        sa.Column("last_received_at", UTCDateTime(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("msgid", "mobile", name=op.f("pk_deliveries")),
    )
    op.create_table(
        "rejected",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("replayed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_rejected_fingerprint")),
    )


def downgrade() -> None:
    op.drop_table("rejected")
    op.drop_table("deliveries")
    op.drop_index("ix_reports_msgid_mobile_id", table_name="reports")
    op.drop_table("reports")
