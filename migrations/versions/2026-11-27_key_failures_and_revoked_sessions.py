"""key_failures and revoked_sessions: the key throttle and logouts, shared by every process

Refused API keys (dashboard login and /v1) per client address, kept for the throttle's window;
dashboard sessions ended by logging out, kept until they would have expired. Both live in the
database so that every worker process and replica sees them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "key_failures",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("failed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_failures")),
    )
    op.create_index("ix_key_failures_client_failed_at", "key_failures", ["client", "failed_at"])
    op.create_index("ix_key_failures_failed_at", "key_failures", ["failed_at"])
    op.create_table(
        "revoked_sessions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_revoked_sessions")),
    )
    op.create_index("ix_revoked_sessions_expires_at", "revoked_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revoked_sessions_expires_at", table_name="revoked_sessions")
    op.drop_table("revoked_sessions")
    op.drop_index("ix_key_failures_failed_at", table_name="key_failures")
    op.drop_index("ix_key_failures_client_failed_at", table_name="key_failures")
    op.drop_table("key_failures")
