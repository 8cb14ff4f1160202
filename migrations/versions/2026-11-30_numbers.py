"""numbers: a summary per number kept by the write path, and its suppression

One row per number with deliveries (or suppressed by hand): counts by outcome, first and last
done_at, the latest state, the latest delivered time and the failure streak, written in the
same transaction as the deliveries they count (on PostgreSQL by triggers on deliveries, on
SQLite by app.ingest.numbers); the suppression (source, reason, since) and the time of the
last lift, which bounds the streak.

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
FAILING = sa.text("failure_streak > 0")

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

# PostgreSQL: the summaries move inside the statement that writes the deliveries, by
# statement-level triggers (as the delivery_counts rollup does): no statement of its own per
# batch, for ingest and any other writer of deliveries alike. Each trigger hands the changed
# deliveries (new ones, or those whose state an update changed) to numbers_apply, whose steps
# are each a statement of their own, so each takes a new snapshot. Every writer of a number's
# summary (the pipelined batches, other replicas, a lift, the retention purge) takes its row
# lock first, in mobile order (no deadlock), and only then reads deliveries: the snapshot of
# that read sees every delivery committed by whoever held the lock before, so the last writer
# to commit has counted everything.
# 1. Rows for the numbers seen for the first time, in mobile order: one with a single
#    delivery (most numbers of a campaign) gets that delivery's summary, written once.
#    (Inserting them all in one ordered statement, and then locking the known ones in order,
#    keeps two writers from each waiting for a row the other holds.)
# 2. Known numbers: locked in order, their counts moved by the changes, the rest recounted
#    (a done_at can move back, a delivered report resets the streak) by index lookups on
#    (mobile, done_at desc, msgid): the latest delivery always; the earliest only when the
#    number has more than one; the latest delivered one and the failures after it only when
#    the latest delivery is not delivered (most are; then the streak is 0).
#    (`outcome || ''` keeps the planner off the outcome index, which would walk every
#    delivered report; OFFSET 0 keeps a step's lookups from being run again by the next.)
# Plans are cached per connection: made while the tables are small, they would scan them
# whole ever after, so these functions allow index lookups only. Suppressing the numbers whose
# streak reached DLR_SUPPRESS_AFTER_FAILURES is left to the service (app.ingest.numbers calls
# numbers_suppress), which knows the threshold and announces what it suppressed.
PG_FUNCTION = """
CREATE FUNCTION numbers_apply(
  batch_mobiles varchar[], batch_statuses varchar[], batch_outcomes varchar[],
  batch_finals boolean[], batch_done_at timestamptz[], batch_previous varchar[]
) RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
DECLARE
  fresh varchar[];
  known varchar[];
BEGIN
  -- Every number of the batch gets its row here, in mobile order: a number first seen with
  -- one delivery the summary of that delivery, any other new one an empty row for step 2.
  WITH inserted AS (
    INSERT INTO numbers (mobile, deliveries, delivered, failed, pending, first_done_at,
                         last_done_at, last_status, last_outcome, last_delivered_at,
                         failure_streak)
    SELECT mobile, CASE WHEN single THEN 1 ELSE 0 END,
           CASE WHEN single THEN delivered ELSE 0 END,
           CASE WHEN single THEN failed ELSE 0 END,
           CASE WHEN single THEN pending ELSE 0 END,
           CASE WHEN single THEN done_at END, CASE WHEN single THEN done_at END,
           CASE WHEN single THEN status END, CASE WHEN single THEN outcome END,
           CASE WHEN single THEN delivered_at END,
           CASE WHEN single THEN streak ELSE 0 END
    FROM (
      -- For a group of one change, the aggregates are that change's values.
      SELECT mobile, count(*) = 1 AND bool_and(previous IS NULL) AS single,
             count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
             count(*) FILTER (WHERE outcome = 'failed') AS failed,
             count(*) FILTER (WHERE outcome = 'pending') AS pending,
             min(done_at) AS done_at, min(status) AS status, min(outcome) AS outcome,
             min(done_at) FILTER (WHERE outcome = 'delivered') AS delivered_at,
             count(*) FILTER (WHERE outcome = 'failed' AND final) AS streak
      FROM unnest(batch_mobiles, batch_statuses, batch_outcomes, batch_finals, batch_done_at,
                  batch_previous) AS c(mobile, status, outcome, final, done_at, previous)
      GROUP BY mobile
    ) AS g
    ORDER BY mobile
    ON CONFLICT (mobile) DO NOTHING
    RETURNING mobile, deliveries
  )
  SELECT array_agg(mobile) FILTER (WHERE deliveries = 1) INTO fresh FROM inserted;

  known := ARRAY(
    SELECT DISTINCT m FROM unnest(batch_mobiles) AS m
    WHERE fresh IS NULL OR m <> ALL(fresh) ORDER BY 1
  );
  IF cardinality(known) > 0 THEN
    PERFORM 1 FROM numbers WHERE mobile = ANY(known) ORDER BY mobile FOR UPDATE;
    UPDATE numbers AS n SET
      deliveries = s.deliveries,
      delivered = n.delivered + s.d_delivered,
      failed = n.failed + s.d_failed,
      pending = n.pending + s.d_pending,
      first_done_at = s.first_done_at,
      last_done_at = s.last_done_at,
      last_status = s.last_status,
      last_outcome = s.last_outcome,
      last_delivered_at = s.last_delivered_at,
      failure_streak = s.failure_streak
    FROM (
      SELECT b.*,
             CASE WHEN b.last_done_at IS NULL OR b.last_delivered_at = b.last_done_at
                       OR b.last_done_at <= b.lifted_at THEN 0
                  ELSE (SELECT count(*)::int FROM deliveries AS d
                        WHERE d.mobile = b.mobile AND d.outcome || '' = 'failed' AND d.final
                          AND d.done_at > greatest(b.last_delivered_at, b.lifted_at,
                                                   '-infinity'::timestamptz))
             END AS failure_streak
      FROM (
        SELECT a.*,
               CASE WHEN a.deliveries = 1 THEN a.last_done_at
                    ELSE (SELECT d.done_at FROM deliveries AS d WHERE d.mobile = a.mobile
                          ORDER BY d.done_at LIMIT 1)
               END AS first_done_at,
               CASE WHEN a.last_outcome = 'delivered' THEN a.last_done_at
                    ELSE (SELECT d.done_at FROM deliveries AS d
                          WHERE d.mobile = a.mobile AND d.outcome || '' = 'delivered'
                          ORDER BY d.done_at DESC LIMIT 1)
               END AS last_delivered_at
        FROM (
          SELECT g.mobile, cur.deliveries + g.d_deliveries AS deliveries, g.d_delivered,
                 g.d_failed, g.d_pending, cur.lifted_at, latest.done_at AS last_done_at,
                 latest.status AS last_status, latest.outcome AS last_outcome
          FROM (
            SELECT c.mobile,
                   count(*) FILTER (WHERE c.previous IS NULL) AS d_deliveries,
                   count(*) FILTER (WHERE c.outcome = 'delivered')
                     - count(*) FILTER (WHERE c.previous = 'delivered') AS d_delivered,
                   count(*) FILTER (WHERE c.outcome = 'failed')
                     - count(*) FILTER (WHERE c.previous = 'failed') AS d_failed,
                   count(*) FILTER (WHERE c.outcome = 'pending')
                     - count(*) FILTER (WHERE c.previous = 'pending') AS d_pending
            FROM unnest(batch_mobiles, batch_outcomes, batch_previous)
                 AS c(mobile, outcome, previous)
            WHERE c.mobile = ANY(known)
            GROUP BY c.mobile
          ) AS g
          JOIN numbers AS cur ON cur.mobile = g.mobile
          LEFT JOIN LATERAL (
            SELECT d.done_at, d.status, d.outcome FROM deliveries AS d
            WHERE d.mobile = g.mobile ORDER BY d.done_at DESC, d.msgid LIMIT 1
          ) AS latest ON true
        ) AS a
        OFFSET 0
      ) AS b
      OFFSET 0
    ) AS s
    WHERE n.mobile = s.mobile;
  END IF;

END $$
"""
PG_SUPPRESS_FUNCTION = """
CREATE FUNCTION numbers_suppress(
  batch_mobiles varchar[], threshold integer, reason text, since timestamptz
) RETURNS TABLE (suppressed_mobile varchar, streak integer)
LANGUAGE sql
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
  UPDATE numbers
  SET suppressed_source = 'automatic', suppressed_reason = reason, suppressed_since = since
  WHERE mobile = ANY(batch_mobiles) AND suppressed_since IS NULL AND failure_streak >= threshold
  RETURNING mobile, failure_streak
$$
"""
PG_TRIGGER_FUNCTION = """
CREATE FUNCTION numbers_from_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  mobiles varchar[]; statuses varchar[]; outcomes varchar[]; finals boolean[];
  done timestamptz[]; previous varchar[];
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT array_agg(mobile), array_agg(status), array_agg(outcome), array_agg(final),
           array_agg(done_at), array_agg(NULL::varchar)
    INTO mobiles, statuses, outcomes, finals, done, previous
    FROM new_rows;
  ELSE
    -- an update that left the state as it was (a late report that lost) changes nothing
    SELECT array_agg(n.mobile), array_agg(n.status), array_agg(n.outcome), array_agg(n.final),
           array_agg(n.done_at), array_agg(o.outcome)
    INTO mobiles, statuses, outcomes, finals, done, previous
    FROM new_rows AS n JOIN old_rows AS o USING (msgid, mobile)
    WHERE (n.status, n.outcome, n.final, n.done_at)
          IS DISTINCT FROM (o.status, o.outcome, o.final, o.done_at);
  END IF;
  IF mobiles IS NOT NULL THEN
    PERFORM numbers_apply(mobiles, statuses, outcomes, finals, done, previous);
  END IF;
  RETURN NULL;
END $$
"""
PG_TRIGGERS = {
    "numbers_insert": "AFTER INSERT ON deliveries REFERENCING NEW TABLE AS new_rows",
    "numbers_update": "AFTER UPDATE ON deliveries "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
}


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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_SUPPRESS_FUNCTION)
        op.execute(PG_TRIGGER_FUNCTION)
        for name, when in PG_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT "
                "EXECUTE FUNCTION numbers_from_deliveries()"
            )
    # Built after the backfill: one sort each instead of a million inserts into them.
    op.create_index(
        "ix_numbers_failure_streak_mobile",
        "numbers",
        [sa.column("failure_streak").desc(), "mobile"],
        postgresql_where=FAILING,
        sqlite_where=FAILING,
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
    if op.get_bind().dialect.name == "postgresql":
        for name in PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON deliveries")
        op.execute("DROP FUNCTION IF EXISTS numbers_from_deliveries")
        op.execute("DROP FUNCTION IF EXISTS numbers_suppress")
        op.execute("DROP FUNCTION IF EXISTS numbers_apply")
    op.drop_index("ix_numbers_suppressed_since_mobile", table_name="numbers")
    op.drop_index("ix_numbers_suppressed_failure_streak_mobile", table_name="numbers")
    op.drop_index("ix_numbers_failure_streak_mobile", table_name="numbers")
    op.drop_table("numbers")
