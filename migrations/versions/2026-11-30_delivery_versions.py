"""deliveries.version and prev_*: what a change of a delivery's current state replaced

Outbound events (`delivery.updated`, with a version and the previous state) and per-number
summaries are written in the same transaction as the batch that changes a delivery, so the
ingest upsert returns, for each delivery it changed, the new state, its version and the
state it replaced. `version` is 1 for a delivery's first state and one more for each batch
whose report won the ordering rule; prev_* hold the status, outcome, finality and done_at
that win replaced.

Existing deliveries start at version 1 with no previous state: their earlier changes were
not recorded, and the report count would overstate them (a late report that lost is
counted too), so the state they have now is the first one anyone will be told about.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain ADD COLUMN on both databases: no table rebuild, so the rollup triggers on deliveries
# stay as they are, and the server default fills the existing rows.
COLUMNS = [
    sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
    sa.Column("prev_status", sa.String(16), nullable=True),
    sa.Column("prev_outcome", sa.String(16), nullable=True),
    sa.Column("prev_final", sa.Boolean(), nullable=True),
    sa.Column("prev_done_at", UTCDateTime(), nullable=True),
]


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("deliveries", column)


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("deliveries", column.name)
