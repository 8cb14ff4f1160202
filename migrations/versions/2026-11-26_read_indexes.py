"""read indexes: the deliveries list filters and order, batch summaries, stats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DONE_DESC = sa.column("done_at").desc()

# name, table, columns; mirrored in the models' __table_args__
INDEXES: list[tuple[str, str, list[str | sa.TextClause]]] = [
    ("ix_reports_batch_id_type_msgid_mobile", "reports", ["batch_id", "type", "msgid", "mobile"]),
    ("ix_deliveries_done_at_msgid_mobile", "deliveries", [DONE_DESC, "msgid", "mobile"]),
    ("ix_deliveries_mobile_done_at_msgid", "deliveries", ["mobile", DONE_DESC, "msgid"]),
    (
        "ix_deliveries_batch_id_done_at_msgid_mobile",
        "deliveries",
        ["batch_id", DONE_DESC, "msgid", "mobile"],
    ),
    (
        "ix_deliveries_status_done_at_msgid_mobile",
        "deliveries",
        ["status", DONE_DESC, "msgid", "mobile"],
    ),
    (
        "ix_deliveries_outcome_done_at_msgid_mobile",
        "deliveries",
        ["outcome", DONE_DESC, "msgid", "mobile"],
    ),
    (
        "ix_deliveries_done_at_type_outcome_status",
        "deliveries",
        ["done_at", "type", "outcome", "status"],
    ),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
