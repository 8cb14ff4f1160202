"""The outbox: event rows written in the transaction of the change they describe, one per
destination that wants the event (a BatchEffect of the ingest writer, and a hook of the
quarantine).

Destinations are read for each batch, in one statement: the enabled subscriptions (a small
table) and the status_callback of the sends named by the batch's reports. No cache another
replica could have made stale decides who hears of a change: the read runs in the batch's
transaction, so whatever was committed before the batch began (a subscription whose POST
was answered, a send whose status_callback was recorded) is always matched. On PostgreSQL it
is the outbox's companion query (app.ingest.store.CompanionEffect): it runs inside the
statement that inserts the batch's reports, so it adds no round trip to a batch (a statement
of its own cost 7% of the ingest rate even without any subscription; one on a connection of
its own, beside the batch, 4-6% of the CPU of the server and of PostgreSQL per report).
A batch's events are one INSERT, which also NOTIFYs the dispatchers on PostgreSQL (they
hear it when the batch commits)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.metrics import Metrics
from app.core.times import utc_z
from app.events.payloads import (
    CALLBACK_REJECTED,
    DELIVERY_UPDATED,
    delivery_body,
    new_event_id,
    rejected_body,
)
from app.events.urls import origin_of
from app.ingest.fold import DeliveryChange
from app.ingest.store import AfterCommit, Companion

NOTIFY_CHANNEL = "mboxii_dlr_events"

# The destinations of a batch: enabled subscriptions, then the status callbacks of the sends
# named by the batch's deliveries (kind 'c', batch_id and type in the filter columns' place).
# ({batch_ids} is left for the store to fill in, in the companion query.)
_TARGETS = """
SELECT 's' AS kind, id, url, event_types, filter, NULL AS batch_id, NULL AS send_type
FROM subscriptions WHERE enabled
UNION ALL
SELECT 'c', NULL, status_callback, NULL, NULL, batch_id, type FROM sends
WHERE status_callback IS NOT NULL AND batch_id {where}
"""
TARGETS_COMPANION = _TARGETS.format(where="= ANY({batch_ids})")
TARGETS_POSTGRES = _TARGETS.format(where="= ANY($1::text[])")
TARGETS_SQLITE = _TARGETS.format(where="IN (SELECT value FROM json_each(?))")
SUBSCRIPTIONS_SQL = (
    "SELECT 's', id, url, event_types, filter, NULL, NULL FROM subscriptions WHERE enabled"
)

_COLUMNS = (
    "event_id, type, created_at, payload, subscription_id, url, origin, status, attempts, "
    "next_attempt_at"
)
# Due at once by the database's clock too, which the dispatchers' claims read: a service
# clock ahead of the database's would otherwise hold new events back by the difference.
INSERT_POSTGRES = f"""
WITH inserted AS (
    INSERT INTO events ({_COLUMNS})
    SELECT e, $6, $7, p, s, u, o, 'pending', 0, least($7::timestamptz, now())
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS r(e, p, s, u, o)
    RETURNING 1
)
SELECT pg_notify('{NOTIFY_CHANNEL}', ''), count(*) FROM inserted
"""
INSERT_SQLITE = f"""
INSERT INTO events ({_COLUMNS})
SELECT json_extract(value, '$[0]'), ?, ?, json_extract(value, '$[1]'),
       json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'),
       'pending', 0, ?
FROM json_each(?)
"""


def sqlite_time(value: dt.datetime) -> str:
    """A time as UTCDateTime stores it on SQLite (sortable UTC text)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(slots=True)
class Destination:
    """Who wants which events: a subscription (with its filters) or a send's
    status_callback (its batch ID and type)."""

    subscription_id: str | None
    url: str
    origin: str
    types: frozenset[str] | None = None
    outcomes: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    batch_id: str | None = None
    send_type: str | None = None

    def wants(self, change: DeliveryChange) -> bool:
        s = change.state
        if self.subscription_id is None:
            return s.batch_id == self.batch_id and s.type == self.send_type
        return (
            (self.types is None or DELIVERY_UPDATED in self.types)
            and (self.outcomes is None or s.outcome in self.outcomes)
            and (self.statuses is None or s.status in self.statuses)
            and (self.batch_id is None or s.batch_id == self.batch_id)
        )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def destinations(rows: Iterable[Sequence[Any]]) -> list[Destination]:
    """Destinations from the rows of the targets query."""
    found = []
    for kind, sub_id, url, types, filters, batch_id, send_type in rows:
        if kind == "c":
            found.append(
                Destination(None, url, origin_of(url), batch_id=batch_id, send_type=send_type)
            )
            continue
        types, filters = _json(types), _json(filters) or {}
        found.append(
            Destination(
                sub_id,
                url,
                origin_of(url),
                frozenset(types) if types is not None else None,
                frozenset(filters["outcome"]) if filters.get("outcome") else None,
                frozenset(filters["status"]) if filters.get("status") else None,
                filters.get("batch_id") or None,
            )
        )
    return found


def plan_rows(
    changes: Sequence[DeliveryChange], targets: Sequence[Destination], timestamp: str
) -> list[list[str | None]]:
    """Columns (event id, payload, subscription id, url, origin) of the event rows for these
    changes: one per change and destination that wants it; one event id and body per change."""
    ids: list[str | None] = []
    payloads: list[str | None] = []
    subs: list[str | None] = []
    urls: list[str | None] = []
    origins: list[str | None] = []
    for change in changes:
        event_id = body = None
        for target in targets:
            if not target.wants(change):
                continue
            if event_id is None:
                event_id, body = new_event_id(), delivery_body(change, timestamp)
            ids.append(event_id)
            payloads.append(body)
            subs.append(target.subscription_id)
            urls.append(target.url)
            origins.append(target.origin)
    return [ids, payloads, subs, urls, origins]


class EventOutbox:
    """Records events in the transaction of their change (a BatchEffect and, for its
    destinations, a CompanionEffect; see app.ingest.store). Once a batch with events has
    committed, `wake` is called (on SQLite; PostgreSQL's dispatchers hear the NOTIFY)."""

    companion = TARGETS_COMPANION

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.wake: Callable[[], None] | None = None

    def _created(self, event_type: str, rows: int) -> AfterCommit:
        """What to do once the rows are committed: count them, wake the dispatcher."""

        def committed() -> None:
            if self.metrics is not None:
                self.metrics.events_created.labels(event_type).inc(rows)
            if self.wake is not None:
                self.wake()

        return committed

    async def apply_postgres(
        self,
        connection: Any,
        changes: Sequence[DeliveryChange],
        companion: Companion | None = None,
    ) -> AfterCommit | None:
        batch_ids = {c.state.batch_id for c in changes}
        rows: Iterable[Sequence[Any]]
        if companion is not None and batch_ids <= companion.batch_ids:
            rows = companion.rows
        else:
            # A delivery keeps an ID none of the batch's reports carry (a report of another
            # batch ID): read again, for the deliveries' IDs.
            rows = await connection.fetch(TARGETS_POSTGRES, list(batch_ids))
        targets = destinations(rows)
        if not targets:
            return None
        now = dt.datetime.now(dt.UTC)
        columns = plan_rows(changes, targets, utc_z(now))
        if columns[0]:
            await connection.fetch(INSERT_POSTGRES, *columns, DELIVERY_UPDATED, now)
            return self._created(DELIVERY_UPDATED, len(columns[0]))
        return None

    def apply_sqlite(
        self, connection: sqlite3.Connection, changes: Sequence[DeliveryChange]
    ) -> AfterCommit | None:
        batch_ids = json.dumps(list({c.state.batch_id for c in changes}), ensure_ascii=False)
        targets = destinations(connection.execute(TARGETS_SQLITE, (batch_ids,)).fetchall())
        if not targets:
            return None
        now = dt.datetime.now(dt.UTC)
        columns = plan_rows(changes, targets, utc_z(now))
        if columns[0]:
            rows = json.dumps(list(zip(*columns, strict=True)), ensure_ascii=False)
            at = sqlite_time(now)
            connection.execute(INSERT_SQLITE, (DELIVERY_UPDATED, at, at, rows))
            return self._created(DELIVERY_UPDATED, len(columns[0]))
        return None

    async def record_rejected(
        self,
        session: Any,
        rejected_id: int,
        reason: str,
        errors: Sequence[dict[str, Any]],
        received_at: dt.datetime,
    ) -> None:
        """A callback.rejected event for a first quarantine, in the quarantine's transaction
        (its SQLAlchemy AsyncSession, either database)."""
        from sqlalchemy import text

        rows = (await session.execute(text(SUBSCRIPTIONS_SQL))).all()
        wanted = [d for d in destinations(rows) if d.types is None or CALLBACK_REJECTED in d.types]
        if not wanted:
            return
        now = dt.datetime.now(dt.UTC)
        body = rejected_body(rejected_id, reason, errors, received_at, utc_z(now))
        event_id = new_event_id()
        from sqlalchemy import insert

        from app.db.models import Event

        await session.execute(
            insert(Event),
            [
                {
                    "event_id": event_id,
                    "type": CALLBACK_REJECTED,
                    "created_at": now,
                    "payload": body,
                    "subscription_id": d.subscription_id,
                    "url": d.url,
                    "origin": d.origin,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for d in wanted
            ],
        )
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))
        # The quarantine's caller commits right after; counting and waking now is as good
        # (on SQLite the dispatcher's claim waits for that commit's write lock).
        self._created(CALLBACK_REJECTED, len(wanted))()
