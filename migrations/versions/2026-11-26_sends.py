"""sends: what this service sent through the gateway, per number, and its reconciliation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sends",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("send_at", UTCDateTime(), nullable=True),
        sa.Column("gateway_answer", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("cancelled_at", UTCDateTime(), nullable=True),
        sa.Column("next_check_at", UTCDateTime(), nullable=True),
        sa.Column("last_checked_at", UTCDateTime(), nullable=True),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("check_errors", sa.Integer(), nullable=False),
        sa.Column("last_check_result", sa.Text(), nullable=True),
        sa.CheckConstraint("type IN ('now', 'scheduled')", name=op.f("ck_sends_type")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sends")),
        sa.UniqueConstraint("batch_id", "type", name=op.f("uq_sends_batch_id_type")),
    )
    op.create_index("ix_sends_next_check_at", "sends", ["next_check_at"])
    op.create_table(
        "send_numbers",
        sa.Column("send_id", BigId, nullable=False),
        sa.Column("mobile", sa.String(16), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["send_id"],
            ["sends.id"],
            name=op.f("fk_send_numbers_send_id_sends"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("send_id", "mobile", name=op.f("pk_send_numbers")),
    )
    op.create_index(
        "ix_deliveries_batch_id_type_mobile", "deliveries", ["batch_id", "type", "mobile"]
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_batch_id_type_mobile", table_name="deliveries")
    op.drop_table("send_numbers")
    op.drop_index("ix_sends_next_check_at", table_name="sends")
    op.drop_table("sends")
