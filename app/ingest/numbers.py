"""Per-number summaries kept in each batch's transaction (a BatchEffect): counts moved by the
batch's changes, the rest recounted from deliveries, and automatic suppression."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from app.core.metrics import Metrics
from app.core.mobiles import mask_mobile
from app.ingest.fold import DeliveryChange
from app.ingest.store import AfterCommit

log = logging.getLogger("mboxii_dlr.numbers")

# Why the statements below are hand-written SQL: they lean on features the two databases
# spell differently (unnest and LATERAL; json_each, row-value SET) and are the hot path.
#
# PostgreSQL, two statements per batch, so that every writer (pipelined batches, other
# replicas, a lift, the retention purge) sees a number's summary move in one order:
# 1. an upsert of the batch's numbers in mobile order moves the counts by the batch's
#    changes. It takes each number's row lock, in one order for every writer (no deadlock),
#    and adds to the newest committed row whatever snapshot the statement started with;
# 2. a new statement, so a new snapshot taken while those locks are held: it sees every
#    delivery committed by whoever held them before, and recounts what a sum cannot carry
#    (a done_at can move back, a delivered report resets the streak) with a few index
#    lookups per number on (mobile, done_at desc, msgid). It suppresses the numbers whose
#    streak reached the threshold and returns those.
PG_COUNT = """
INSERT INTO numbers AS n (mobile, deliveries, delivered, failed, pending)
SELECT c.mobile,
       count(*) FILTER (WHERE c.previous IS NULL),
       count(*) FILTER (WHERE c.outcome = 'delivered')
         - count(*) FILTER (WHERE c.previous = 'delivered'),
       count(*) FILTER (WHERE c.outcome = 'failed')
         - count(*) FILTER (WHERE c.previous = 'failed'),
       count(*) FILTER (WHERE c.outcome = 'pending')
         - count(*) FILTER (WHERE c.previous = 'pending')
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS c(mobile, outcome, previous)
GROUP BY c.mobile
ORDER BY c.mobile
ON CONFLICT (mobile) DO UPDATE SET
  deliveries = n.deliveries + excluded.deliveries,
  delivered = n.delivered + excluded.delivered,
  failed = n.failed + excluded.failed,
  pending = n.pending + excluded.pending
"""
PG_RECOUNT = """
WITH updated AS (
  UPDATE numbers AS n SET
    first_done_at = s.first_done_at,
    last_done_at = s.last_done_at,
    last_status = s.last_status,
    last_outcome = s.last_outcome,
    last_delivered_at = s.last_delivered_at,
    failure_streak = s.failure_streak,
    suppressed_source = CASE WHEN s.suppress THEN 'automatic' ELSE n.suppressed_source END,
    suppressed_reason = CASE WHEN s.suppress THEN $3 ELSE n.suppressed_reason END,
    suppressed_since = CASE WHEN s.suppress THEN $4 ELSE n.suppressed_since END
  FROM (
    SELECT t.mobile,
           earliest.done_at AS first_done_at,
           latest.done_at AS last_done_at,
           latest.status AS last_status,
           latest.outcome AS last_outcome,
           delivered.done_at AS last_delivered_at,
           streak.failures AS failure_streak,
           (cur.suppressed_since IS NULL AND streak.failures >= $2) AS suppress
    FROM (SELECT DISTINCT unnest($1::varchar[]) AS mobile) AS t
    JOIN numbers AS cur ON cur.mobile = t.mobile
    LEFT JOIN LATERAL (
      SELECT d.done_at FROM deliveries AS d WHERE d.mobile = t.mobile
      ORDER BY d.done_at LIMIT 1
    ) AS earliest ON true
    LEFT JOIN LATERAL (
      SELECT d.done_at, d.status, d.outcome FROM deliveries AS d WHERE d.mobile = t.mobile
      ORDER BY d.done_at DESC, d.msgid LIMIT 1
    ) AS latest ON true
    LEFT JOIN LATERAL (
      SELECT d.done_at FROM deliveries AS d WHERE d.mobile = t.mobile AND d.outcome = 'delivered'
      ORDER BY d.done_at DESC LIMIT 1
    ) AS delivered ON true
    CROSS JOIN LATERAL (
      SELECT count(*)::int AS failures FROM deliveries AS d
      WHERE d.mobile = t.mobile AND d.outcome = 'failed' AND d.final
        AND d.done_at > greatest(delivered.done_at, cur.lifted_at, '-infinity'::timestamptz)
    ) AS streak
  ) AS s
  WHERE n.mobile = s.mobile
  RETURNING n.mobile, n.failure_streak, s.suppress
)
SELECT mobile, failure_streak FROM updated WHERE suppress
"""

# SQLite has one writer at a time, so the same steps need no care for order: the counts
# moved, the rest recounted (the SET expressions all see the row as it was, hence the
# repeated lookup of the latest delivered one), then the suppressions, each one call over
# the batch as JSON. Times are UTC text, which compares in time order.
SQLITE_COUNT = """
INSERT INTO numbers (mobile, deliveries, delivered, failed, pending)
SELECT mobile,
       sum(previous IS NULL),
       sum(outcome = 'delivered') - sum(coalesce(previous = 'delivered', 0)),
       sum(outcome = 'failed') - sum(coalesce(previous = 'failed', 0)),
       sum(outcome = 'pending') - sum(coalesce(previous = 'pending', 0))
FROM (
  SELECT json_extract(value, '$[0]') AS mobile, json_extract(value, '$[1]') AS outcome,
         json_extract(value, '$[2]') AS previous
  FROM json_each(?)
)
WHERE true
GROUP BY mobile
ORDER BY mobile
ON CONFLICT (mobile) DO UPDATE SET
  deliveries = deliveries + excluded.deliveries,
  delivered = delivered + excluded.delivered,
  failed = failed + excluded.failed,
  pending = pending + excluded.pending
"""
SQLITE_RECOUNT = """
UPDATE numbers SET
  first_done_at = (
    SELECT d.done_at FROM deliveries AS d WHERE d.mobile = numbers.mobile
    ORDER BY d.done_at LIMIT 1
  ),
  (last_done_at, last_status, last_outcome) = (
    SELECT d.done_at, d.status, d.outcome FROM deliveries AS d WHERE d.mobile = numbers.mobile
    ORDER BY d.done_at DESC, d.msgid LIMIT 1
  ),
  last_delivered_at = (
    SELECT d.done_at FROM deliveries AS d
    WHERE d.mobile = numbers.mobile AND d.outcome = 'delivered'
    ORDER BY d.done_at DESC LIMIT 1
  ),
  failure_streak = (
    SELECT count(*) FROM deliveries AS d
    WHERE d.mobile = numbers.mobile AND d.outcome = 'failed' AND d.final
      AND d.done_at > max(
        coalesce((
          SELECT e.done_at FROM deliveries AS e
          WHERE e.mobile = numbers.mobile AND e.outcome = 'delivered'
          ORDER BY e.done_at DESC LIMIT 1
        ), ''),
        coalesce(numbers.lifted_at, '')
      )
  )
WHERE mobile IN (SELECT json_extract(value, '$[0]') FROM json_each(?))
"""
SQLITE_SUPPRESS = """
UPDATE numbers
SET suppressed_source = 'automatic', suppressed_reason = ?, suppressed_since = ?
WHERE mobile IN (SELECT json_extract(value, '$[0]') FROM json_each(?))
  AND suppressed_since IS NULL AND failure_streak >= ?
RETURNING mobile, failure_streak
"""


def automatic_reason(threshold: int) -> str:
    return f"{threshold} failed deliveries in a row"


def _sqlite_time(value: dt.datetime) -> str:
    """As UTCDateTime stores a time in SQLite."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class NumberSummaries:
    """The BatchEffect that keeps the `numbers` table exact: each batch moves the summaries
    of the numbers it touched, in its own transaction, on either database. With
    `suppress_after` set, a number whose failure streak reaches it is suppressed there
    too; each suppression is logged (the number masked) and counted once committed."""

    def __init__(
        self,
        metrics: Metrics,
        suppress_after: int | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.metrics = metrics
        self.suppress_after = suppress_after
        self.clock = clock
        self.reason = automatic_reason(suppress_after) if suppress_after else None

    async def apply_postgres(
        self, connection: Any, changes: Sequence[DeliveryChange]
    ) -> AfterCommit | None:
        mobiles = [c.state.mobile for c in changes]
        outcomes = [c.state.outcome for c in changes]
        previous = [None if c.previous is None else c.previous.outcome for c in changes]
        await connection.execute(PG_COUNT, mobiles, outcomes, previous)
        suppressed = await connection.fetch(
            PG_RECOUNT, mobiles, self.suppress_after, self.reason, self.clock()
        )
        return self._announce([(row[0], row[1]) for row in suppressed])

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> AfterCommit | None:
        rows = json.dumps(
            [(c.state.mobile, c.state.outcome, c.previous and c.previous.outcome) for c in changes]
        )
        connection.execute(SQLITE_COUNT, (rows,))
        connection.execute(SQLITE_RECOUNT, (rows,))
        if self.suppress_after is None:
            return None
        at = _sqlite_time(self.clock())
        cursor = connection.execute(SQLITE_SUPPRESS, (self.reason, at, rows, self.suppress_after))
        return self._announce(cursor.fetchall())

    def _announce(self, suppressed: list[tuple[str, int]]) -> AfterCommit | None:
        if not suppressed:
            return None

        def announce() -> None:
            for mobile, streak in suppressed:
                log.warning(
                    "number %s suppressed automatically: %d failed deliveries in a row",
                    mask_mobile(mobile),
                    streak,
                )
            self.metrics.suppressions.labels("automatic").inc(len(suppressed))

        return announce
