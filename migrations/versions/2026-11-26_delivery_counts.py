"""delivery_counts: a per-15-minute rollup of deliveries kept exact by triggers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.engine import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "grain, type, outcome, status"

# PostgreSQL: statement-level triggers with transition tables fold a whole batch of
# delivery changes into one upsert of a few rollup rows.
PG_GRAIN = "to_timestamp(floor(extract(epoch FROM done_at) / 900) * 900)"
PG_FUNCTION = f"""
CREATE FUNCTION delivery_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO delivery_counts AS c ({KEY}, count)
    SELECT {PG_GRAIN}, type, outcome, status, count(*) FROM new_rows GROUP BY 1, 2, 3, 4
    ON CONFLICT ({KEY}) DO UPDATE SET count = c.count + excluded.count;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO delivery_counts AS c ({KEY}, count)
    SELECT {PG_GRAIN}, type, outcome, status, -count(*) FROM old_rows GROUP BY 1, 2, 3, 4
    ON CONFLICT ({KEY}) DO UPDATE SET count = c.count + excluded.count;
  ELSE
    INSERT INTO delivery_counts AS c ({KEY}, count)
    SELECT grain, type, outcome, status, sum(delta) FROM (
      SELECT {PG_GRAIN} AS grain, type, outcome, status, -1 AS delta FROM old_rows
      UNION ALL
      SELECT {PG_GRAIN}, type, outcome, status, 1 FROM new_rows
    ) AS changes GROUP BY 1, 2, 3, 4 HAVING sum(delta) <> 0
    ON CONFLICT ({KEY}) DO UPDATE SET count = c.count + excluded.count;
  END IF;
  RETURN NULL;
END $$
"""
PG_TRIGGERS = [
    "CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply()",
    "CREATE TRIGGER delivery_counts_update AFTER UPDATE ON deliveries "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply()",
    "CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply()",
]


# SQLite: done_at is UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'; the grain is cut with substr (its
# date functions round to milliseconds) and written in the same canonical spelling. (The
# colon stands alone because ':00' would read as a bind parameter.)
def _sqlite_grain(row: str) -> str:
    return (
        f"substr({row}.done_at, 1, 14) || printf('%02d', "
        f"(CAST(substr({row}.done_at, 15, 2) AS INTEGER) / 15) * 15) || ':' || '00.000000'"
    )


def _sqlite_add(row: str, delta: str) -> str:
    return (
        f"INSERT INTO delivery_counts ({KEY}, count) VALUES ({_sqlite_grain(row)}, {row}.type, "
        f"{row}.outcome, {row}.status, {delta}) "
        f"ON CONFLICT ({KEY}) DO UPDATE SET count = count + ({delta});"
    )


SQLITE_TRIGGERS = [
    f"CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries BEGIN "
    f"{_sqlite_add('NEW', '1')} END",
    f"CREATE TRIGGER delivery_counts_update AFTER UPDATE OF done_at, type, outcome, status "
    f"ON deliveries WHEN OLD.done_at IS NOT NEW.done_at OR OLD.type IS NOT NEW.type "
    f"OR OLD.outcome IS NOT NEW.outcome OR OLD.status IS NOT NEW.status BEGIN "
    f"{_sqlite_add('OLD', '-1')} {_sqlite_add('NEW', '1')} END",
    f"CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries BEGIN "
    f"{_sqlite_add('OLD', '-1')} END",
]


def upgrade() -> None:
    op.create_table(
        "delivery_counts",
        sa.Column("grain", UTCDateTime(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "grain", "type", "outcome", "status", name=op.f("pk_delivery_counts")
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
        backfill_grain = PG_GRAIN
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
        backfill_grain = _sqlite_grain("deliveries")
    op.execute(
        f"INSERT INTO delivery_counts ({KEY}, count) "
        f"SELECT {backfill_grain}, type, outcome, status, count(*) FROM deliveries "
        f"GROUP BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    for name in ("delivery_counts_insert", "delivery_counts_update", "delivery_counts_delete"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON deliveries")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS delivery_counts_apply()")
    op.drop_table("delivery_counts")
