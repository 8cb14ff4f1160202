"""ORM tables: reports, current state per delivery, numbers, the quarantine, our own sends,
and the outbound events with their subscriptions.

Every table is in this one module, past our usual length on purpose: the schema reads as a
whole, and the test that compares it with the migrations compares it with this file."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.engine import Base, UTCDateTime

# SQLite autoincrements only an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Report(Base):
    """One callback as received: never updated, never stored twice.

    On PostgreSQL the table is partitioned by month of done_at (migration 0011,
    app.db.partitions), and its primary key is (id, done_at): a partitioned table's unique
    keys must hold the partition key. SQLite keeps one table."""

    __tablename__ = "reports"
    __table_args__ = (
        CheckConstraint("statuscode IN (0, 1)", name="statuscode"),
        # The identity, led by msgid: a report's retries meet here (the key hashes msgid
        # too, so this is as unique as the key alone), inserts of a campaign's ascending
        # msgids land on neighbouring pages instead of random ones, and a delivery's
        # history is one short range. done_at is in it for the partitions; the key hashes
        # donetime, so a retry has the same done_at and meets its first copy all the same.
        UniqueConstraint("msgid", "report_key", "done_at"),
        # batch summaries: one range per ID (and type), each delivery's reports together
        Index("ix_reports_batch_id_type_msgid_mobile", "batch_id", "type", "msgid", "mobile"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # 64-bit blake2b of the normalised identity (ID, msgid, mobile, statuscode, statusstr,
    # donetime); see app.ingest.parse.report_key
    report_key: Mapped[int] = mapped_column(BigInteger)
    batch_id: Mapped[str] = mapped_column(String(64))
    msgid: Mapped[str] = mapped_column(String(64))
    mobile: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    statuscode: Mapped[int] = mapped_column(SmallInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    final: Mapped[bool] = mapped_column(Boolean)
    inconsistent: Mapped[bool] = mapped_column(Boolean)
    done_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16), default="callback")


class Delivery(Base):
    """The current state of one message (one msgid to one mobile), from its newest report."""

    __tablename__ = "deliveries"
    # The list is ordered newest done_at first, then msgid and mobile ascending; each index
    # ends in that order after its equality column so a page is one ordered range scan.
    # The msgid filter is served by the primary key (msgid, mobile).
    __table_args__ = (
        Index("ix_deliveries_done_at_msgid_mobile", column("done_at").desc(), "msgid", "mobile"),
        Index("ix_deliveries_mobile_done_at_msgid", "mobile", column("done_at").desc(), "msgid"),
        Index(
            "ix_deliveries_batch_id_done_at_msgid_mobile",
            "batch_id",
            column("done_at").desc(),
            "msgid",
            "mobile",
        ),
        Index(
            "ix_deliveries_status_done_at_msgid_mobile",
            "status",
            column("done_at").desc(),
            "msgid",
            "mobile",
        ),
        Index(
            "ix_deliveries_outcome_done_at_msgid_mobile",
            "outcome",
            column("done_at").desc(),
            "msgid",
            "mobile",
        ),
        # Stats read the delivery_counts rollup; a send's numbers are found through the
        # batch_id index (migration 0005 dropped the indexes these two once had).
    )

    msgid: Mapped[str] = mapped_column(String(64), primary_key=True)
    mobile: Mapped[str] = mapped_column(String(16), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    statuscode: Mapped[int] = mapped_column(SmallInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    final: Mapped[bool] = mapped_column(Boolean)
    inconsistent: Mapped[bool] = mapped_column(Boolean)
    done_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reports: Mapped[int] = mapped_column(Integer)
    report_id: Mapped[int] = mapped_column(BigInteger)
    # What a change of the current state needs to tell (outbound events, per-number
    # summaries, written in the batch's transaction): `version` is 1 for the first state and
    # one more for each batch whose report won the ordering rule; prev_* hold the state
    # that win replaced (NULL until the first replacement). Set by the ingest upsert.
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    prev_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prev_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prev_final: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    prev_done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


# A suppressed number is one whose suppressed_since is set (the three columns go together).
SUPPRESSED = text("suppressed_since IS NOT NULL")
FAILING = text("failure_streak > 0")


class Number(Base):
    """What the deliveries to one number add up to, and whether sending to it is suppressed.

    The summary columns are written in the same transaction as the deliveries they count (on
    PostgreSQL by triggers on deliveries, migration 0008; on SQLite by app.ingest.numbers;
    the purge by app.db.numbers), so they always equal a recount from deliveries:
    `mboxii-dlr check-numbers` compares the two. A row exists while the number has
    deliveries, or once it has been suppressed."""

    __tablename__ = "numbers"
    __table_args__ = (
        CheckConstraint("suppressed_source IN ('automatic', 'manual')", name="suppressed_source"),
        # The list order, highest streak first, then mobile, for the numbers with a streak:
        # the rest (most numbers) follow in the order of the primary key. A number whose
        # streak stays 0 is then updated without touching any index (on PostgreSQL a HOT
        # update), as most are on every batch.
        Index(
            "ix_numbers_failure_streak_mobile",
            column("failure_streak").desc(),
            "mobile",
            postgresql_where=FAILING,
            sqlite_where=FAILING,
        ),
        # Suppressed numbers are few: their own small indexes serve ?suppressed=true and
        # /v1/suppressions (latest first) without a walk over every number.
        Index(
            "ix_numbers_suppressed_failure_streak_mobile",
            column("failure_streak").desc(),
            "mobile",
            postgresql_where=SUPPRESSED,
            sqlite_where=SUPPRESSED,
        ),
        Index(
            "ix_numbers_suppressed_since_mobile",
            column("suppressed_since").desc(),
            "mobile",
            postgresql_where=SUPPRESSED,
            sqlite_where=SUPPRESSED,
        ),
    )

    mobile: Mapped[str] = mapped_column(String(16), primary_key=True)
    deliveries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    delivered: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    pending: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    first_done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The state of the delivery with the latest done_at (ties: the lowest msgid, as listed).
    last_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Final failed deliveries done after max(last_delivered_at, lifted_at).
    failure_streak: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    suppressed_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    suppressed_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    suppressed_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When a suppression was last lifted (or the number's latest done_at then, if later):
    # failures done before it no longer count towards the streak.
    lifted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Rejected(Base):
    """A callback request that failed validation, kept whole so it can be replayed."""

    __tablename__ = "rejected"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # sha256 over method, query, content type and body: identical retries share one row
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(16))
    query: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(Text)
    source_address: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    replayed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Send(Base):
    """One send through the gateway (now or scheduled, up to 80 numbers, one gateway ID),
    and where its reconciliation stands."""

    __tablename__ = "sends"
    __table_args__ = (
        # Immediate and scheduled sends number their IDs in two sequences.
        UniqueConstraint("batch_id", "type"),
        CheckConstraint("type IN ('now', 'scheduled')", name="type"),
        Index("ix_sends_next_check_at", "next_check_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    send_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    gateway_answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Reconciliation: when to ask CheckSMS next (NULL: no more), and how it went so far.
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    checks: Mapped[int] = mapped_column(Integer, default=0)
    check_errors: Mapped[int] = mapped_column(Integer, default=0)
    last_check_result: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where this send's delivery.updated events also go (signed with
    # DLR_STATUS_CALLBACK_SECRET); NULL for none.
    status_callback: Mapped[str | None] = mapped_column(Text, nullable=True)


class SendNumber(Base):
    """One number of a send, in E.164, in the order given."""

    __tablename__ = "send_numbers"

    send_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("sends.id", ondelete="CASCADE"), primary_key=True
    )
    mobile: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger)


class DeliveryCount(Base):
    """Deliveries per 15-minute UTC grain of done_at, type, outcome and status word.

    A rollup kept exact by triggers on deliveries (insert, update, delete), in the same
    transaction as the change, so stats over months never scan deliveries. 15 minutes is the
    grain every zone offset in use divides.
    """

    __tablename__ = "delivery_counts"

    grain: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    type: Mapped[str] = mapped_column(String(16), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class KeyFailure(Base):
    """One refused API key (dashboard login or /v1) from one client, kept for the key
    throttle's window (app.db.throttle), so every process and replica counts it."""

    __tablename__ = "key_failures"
    __table_args__ = (
        Index("ix_key_failures_client_failed_at", "client", "failed_at"),
        # pruning, and the count of refused logins of the last minute
        Index("ix_key_failures_failed_at", "failed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The address, or for IPv6 its /64 (app.web.security.client_key)
    client: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))  # "login" or "api"
    failed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class RevokedSession(Base):
    """A dashboard session ended by logging out, refused until it would have expired."""

    __tablename__ = "revoked_sessions"
    __table_args__ = (Index("ix_revoked_sessions_expires_at", "expires_at"),)

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Subscription(Base):
    """A destination of outbound events: a URL, which event types, which deliveries."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    # Event types to send (NULL: all), and {"outcome": [...], "status": [...], "batch_id"}
    # limiting delivery.updated (NULL: every delivery).
    event_types: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    # Why it was disabled (by PATCH, or by the receiver answering 410 Gone)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The signing secret (whsec_...); after a rotation the old one signs beside it until
    # previous_secret_until.
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_secret_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Event(Base):
    """One event to one destination (a subscription, or a send's status_callback): the
    outbox row the dispatcher sends, and its delivery record. The event itself (event_id,
    the webhook-id; type; payload) is repeated for each destination it goes to.

    A pending row is due at next_attempt_at; a dispatcher claims it by setting locked_until
    to the end of its attempt (a lease: should the process die, the row is due again when it
    runs out). locked_until is in no index, so on PostgreSQL the claim's update is a HOT
    update (the fillfactor leaves it room on the page) and writes no index entry."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        # What the dispatchers claim: only pending rows, the due ones first.
        Index(
            "ix_events_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # Failed rows are few, and the ones an operator looks for.
        Index(
            "ix_events_failed",
            "id",
            postgresql_where=text("status = 'failed'"),
            sqlite_where=text("status = 'failed'"),
        ),
        Index("ix_events_subscription_id_id", "subscription_id", "id"),
        {"postgresql_with": {"fillfactor": 80}},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # The request body as sent, byte for byte on every attempt
    payload: Mapped[str] = mapped_column(Text)
    # NULL for a send's status_callback (which signs with DLR_STATUS_CALLBACK_SECRET)
    subscription_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    url: Mapped[str] = mapped_column(Text)
    # scheme://host:port of url: the receiver whose concurrency limit this row counts against
    origin: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(Base):
    """A background job that runs once per deployment (retention): the process that claims
    its row runs it, whichever worker or replica that is (app.db.jobs)."""

    __tablename__ = "jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: who runs it now, and until when that claim holds unless renewed
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RateSlot(Base):
    """One rate limit shared by every process and replica (app.db.rates): the time, in epoch
    seconds of the database's clock, before which the next call must not go out."""

    __tablename__ = "rate_slots"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    next_at: Mapped[float] = mapped_column(Double)


# The tables of the statements written in SQLAlchemy Core (bulk writes, recounts, purges).
REPORTS = cast(Table, Report.__table__)
DELIVERIES = cast(Table, Delivery.__table__)
NUMBERS = cast(Table, Number.__table__)
REJECTED = cast(Table, Rejected.__table__)
SENDS = cast(Table, Send.__table__)
SEND_NUMBERS = cast(Table, SendNumber.__table__)
EVENTS = cast(Table, Event.__table__)
