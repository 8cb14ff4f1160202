"""Per-number summaries kept in each batch's transaction (a BatchEffect): on SQLite counts
moved by the batch's changes and the rest recounted from deliveries; on either database the
automatic suppression of the numbers whose failure streak reached the threshold."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from app.core.metrics import Metrics
from app.db.numbers import announce_automatic, automatic_reason
from app.ingest.fold import DeliveryChange
from app.ingest.store import AfterCommit, Companion

# PostgreSQL keeps the summaries itself: triggers on deliveries (migration 0008) move them in
# the very statement that writes the deliveries, so a batch pays no statement of its own for
# them. What is left here is suppression, which needs the threshold: one call, and only for a
# batch with a failure in it (nothing else makes a streak longer). The trigger holds the
# numbers' row locks already, so it waits for nobody. (A function, as a plan cached while the
# table was small would scan it whole ever after.)
PG_SUPPRESS = "SELECT suppressed_mobile, streak FROM numbers_suppress($1, $2, $3, $4)"

# SQLite has one writer at a time, so the same steps need no care for order: a number seen
# for the first time with one delivery gets its summary from that delivery, written once;
# the others have their counts moved and the rest recounted with the same lookups (LIMIT -1
# keeps each step from being merged into the next, which would run its lookups again); then
# the suppressions (as on PostgreSQL, only for numbers with a failure in the batch). Each is
# one call over the batch as JSON: [mobile, msgid, outcome,
# previous outcome] per change. Times are UTC text, which compares in time order.
_SQLITE_CHANGES = """(
  SELECT json_extract(value, '$[0]') AS mobile, json_extract(value, '$[1]') AS msgid,
         json_extract(value, '$[2]') AS outcome, json_extract(value, '$[3]') AS previous
  FROM json_each(:changes)
)"""
SQLITE_FRESH = f"""
INSERT INTO numbers (mobile, deliveries, delivered, failed, pending, first_done_at,
                     last_done_at, last_status, last_outcome, last_delivered_at, failure_streak)
SELECT d.mobile, 1, d.outcome = 'delivered', d.outcome = 'failed', d.outcome = 'pending',
       d.done_at, d.done_at, d.status, d.outcome,
       CASE WHEN d.outcome = 'delivered' THEN d.done_at END, d.outcome = 'failed' AND d.final
FROM {_SQLITE_CHANGES} AS c
JOIN deliveries AS d ON d.msgid = c.msgid AND d.mobile = c.mobile
WHERE true
ON CONFLICT (mobile) DO NOTHING
RETURNING mobile
"""  # noqa: S608 - SQL from constants only
SQLITE_MEND = """
INSERT INTO numbers (mobile) SELECT value FROM json_each(:known) WHERE true
ON CONFLICT (mobile) DO NOTHING
"""
SQLITE_KNOWN = f"""
UPDATE numbers SET
  deliveries = s.deliveries,
  delivered = numbers.delivered + s.d_delivered,
  failed = numbers.failed + s.d_failed,
  pending = numbers.pending + s.d_pending,
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
              ELSE (SELECT count(*) FROM deliveries AS d
                    WHERE d.mobile = b.mobile AND d.outcome || '' = 'failed' AND d.final
                      AND d.done_at > max(coalesce(b.last_delivered_at, ''),
                                          coalesce(b.lifted_at, '')))
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
        SELECT mobile,
               sum(previous IS NULL) AS d_deliveries,
               sum(outcome = 'delivered') - sum(coalesce(previous = 'delivered', 0))
                 AS d_delivered,
               sum(outcome = 'failed') - sum(coalesce(previous = 'failed', 0)) AS d_failed,
               sum(outcome = 'pending') - sum(coalesce(previous = 'pending', 0)) AS d_pending
        FROM {_SQLITE_CHANGES}
        WHERE mobile IN (SELECT value FROM json_each(:known))
        GROUP BY mobile
      ) AS g
      JOIN numbers AS cur ON cur.mobile = g.mobile
      LEFT JOIN deliveries AS latest ON latest.rowid = (
        SELECT d.rowid FROM deliveries AS d WHERE d.mobile = g.mobile
        ORDER BY d.done_at DESC, d.msgid LIMIT 1
      )
      LIMIT -1
    ) AS a
    LIMIT -1
  ) AS b
  LIMIT -1
) AS s
WHERE numbers.mobile = s.mobile
"""  # noqa: S608 - SQL from constants only
SQLITE_SUPPRESS = """
UPDATE numbers
SET suppressed_source = 'automatic', suppressed_reason = :reason, suppressed_since = :at
WHERE mobile IN (SELECT value FROM json_each(:mobiles))
  AND suppressed_since IS NULL AND failure_streak >= :threshold
RETURNING mobile, failure_streak
"""


def _sqlite_time(value: dt.datetime) -> str:
    """As UTCDateTime stores a time in SQLite."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class NumberSummaries:
    """The BatchEffect that keeps the `numbers` table exact on SQLite (each batch moves the
    summaries of the numbers it touched, in its own transaction; on PostgreSQL triggers do),
    and with `suppress_after` set, suppresses a number whose failure streak reaches it, on
    either database; each suppression is logged (the number masked) and counted once
    committed."""

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
        self,
        connection: Any,
        changes: Sequence[DeliveryChange],
        companion: Companion | None = None,
    ) -> AfterCommit | None:
        failing = sorted({c.state.mobile for c in changes if c.state.outcome == "failed"})
        if self.suppress_after is None or not failing:
            return None
        suppressed = await connection.fetch(
            PG_SUPPRESS, failing, self.suppress_after, self.reason, self.clock()
        )
        return self._announce([(row[0], row[1]) for row in suppressed])

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> AfterCommit | None:
        per_number = Counter(c.state.mobile for c in changes)
        first_seen = [
            (c.state.mobile, c.state.msgid)
            for c in changes
            if c.previous is None and per_number[c.state.mobile] == 1
        ]
        fresh = set()
        if first_seen:
            inserted = connection.execute(SQLITE_FRESH, {"changes": json.dumps(first_seen)})
            fresh = {row[0] for row in inserted}
        changes_json = json.dumps(
            [
                (c.state.mobile, c.state.msgid, c.state.outcome, c.previous and c.previous.outcome)
                for c in changes
                if c.state.mobile not in fresh
            ]
        )
        known = json.dumps(sorted(per_number.keys() - fresh))
        if len(per_number) > len(fresh):
            # A number first seen with several deliveries gets its row here (and a number
            # with deliveries but no row, which should not be, is mended).
            connection.execute(SQLITE_MEND, {"known": known})
            connection.execute(SQLITE_KNOWN, {"changes": changes_json, "known": known})
        failing = sorted({c.state.mobile for c in changes if c.state.outcome == "failed"})
        if self.suppress_after is None or not failing:
            return None
        cursor = connection.execute(
            SQLITE_SUPPRESS,
            {
                "mobiles": json.dumps(failing),
                "reason": self.reason,
                "at": _sqlite_time(self.clock()),
                "threshold": self.suppress_after,
            },
        )
        return self._announce(cursor.fetchall())

    def _announce(self, suppressed: list[tuple[str, int]]) -> AfterCommit | None:
        if not suppressed:
            return None
        return lambda: announce_automatic(suppressed, self.metrics)
