"""leaner indexes: two fewer on deliveries, the report identity led by msgid

Stats read the delivery_counts rollup (0004), so the covering index for stats over a done_at
range is unused; the lookups of a send's numbers by (batch_id, type, mobile) are served by
the batch_id index of 0002 (a batch holds at most 80 numbers).

On reports, UNIQUE (msgid, report_key) replaces both UNIQUE (report_key) and the history index
(msgid, mobile, id): the key hashes msgid too, so the pair is as unique as the key; inserts of
ascending msgids land on neighbouring pages instead of random ones; and a delivery's history is
still one short range.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_done_at_type_outcome_status", table_name="deliveries")
    op.drop_index("ix_deliveries_batch_id_type_mobile", table_name="deliveries")
    op.drop_index("ix_reports_msgid_mobile_id", table_name="reports")
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint("uq_reports_report_key", type_="unique")
        batch.create_unique_constraint("uq_reports_msgid_report_key", ["msgid", "report_key"])


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint("uq_reports_msgid_report_key", type_="unique")
        batch.create_unique_constraint("uq_reports_report_key", ["report_key"])
    op.create_index("ix_reports_msgid_mobile_id", "reports", ["msgid", "mobile", "id"])
    op.create_index(
        "ix_deliveries_batch_id_type_mobile", "deliveries", ["batch_id", "type", "mobile"]
    )
    op.create_index(
        "ix_deliveries_done_at_type_outcome_status",
        "deliveries",
        ["done_at", "type", "outcome", "status"],
    )
