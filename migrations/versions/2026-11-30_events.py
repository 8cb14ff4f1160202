"""subscriptions, events and sends.status_callback: signed outbound events

Each change of a delivery's current state (and each first quarantine of a request) records
one row in `events` per destination that wants it, in the same transaction as the change;
the dispatchers of every replica send the due rows and record how it went. Destinations are
`subscriptions`, and the `status_callback` a send may name.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=True),
        sa.Column("filter", sa.JSON(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.String(32), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("locked_until", UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.SmallInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name=op.f("ck_events_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        # Room on each page for the claim's update, which then touches no index (HOT).
        postgresql_with={"fillfactor": 80},
    )
    pending, failed = sa.text("status = 'pending'"), sa.text("status = 'failed'")
    op.create_index(
        "ix_events_due",
        "events",
        ["next_attempt_at"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_index(
        "ix_events_failed", "events", ["id"], postgresql_where=failed, sqlite_where=failed
    )
    op.create_index("ix_events_subscription_id_id", "events", ["subscription_id", "id"])
    op.add_column("sends", sa.Column("status_callback", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sends", "status_callback")
    op.drop_index("ix_events_subscription_id_id", table_name="events")
    op.drop_index("ix_events_failed", table_name="events")
    op.drop_index("ix_events_due", table_name="events")
    op.drop_table("events")
    op.drop_table("subscriptions")
