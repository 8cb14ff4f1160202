"""The quarantine: rejected callback requests kept whole, listed, and replayed."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import insert_for
from app.db.models import REJECTED, Rejected
from app.ingest.errors import (
    CallbackRejected,
    IngestRefused,
    IngestUnavailable,
    is_connectivity_error,
)
from app.ingest.parse import ParsedReport, parse_callback
from app.ingest.writer import Writer


@dataclass(frozen=True, slots=True)
class RawRequest:
    """What the gateway sent, byte for byte, as the quarantine keeps it."""

    method: str
    query: str  # the raw query string, latin-1 decoded so it re-encodes to the same bytes
    content_type: str
    source_address: str
    body: bytes


class QuarantineEffect(Protocol):
    """Work that commits with a request's first quarantine (its callback.rejected event)."""

    async def record_rejected(
        self,
        connection: Any,
        rejected_id: int,
        reason: str,
        errors: Sequence[dict[str, Any]],
        received_at: dt.datetime,
    ) -> None: ...


def fingerprint(request: RawRequest) -> bytes:
    digest = hashlib.sha256()
    for part in (request.method, request.query, request.content_type):
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\x00")
    digest.update(request.body)
    return digest.digest()


async def quarantine(
    session: AsyncSession,
    request: RawRequest,
    reason: str,
    errors: list[dict[str, Any]],
    received_at: dt.datetime,
    effect: QuarantineEffect | None = None,
) -> int:
    """Store a rejected request (or count one more copy of it) in the caller's transaction;
    return its id. `effect` runs in that transaction when this is the request's first
    occurrence."""
    ins = insert_for(session.get_bind().dialect, REJECTED)
    stmt = ins.on_conflict_do_update(
        index_elements=[REJECTED.c.fingerprint],
        set_={
            "count": REJECTED.c.count + 1,
            "last_seen_at": ins.excluded.last_seen_at,
            "source_address": ins.excluded.source_address,
        },
    ).returning(REJECTED.c.id, REJECTED.c.count)
    result = await session.execute(
        stmt,
        {
            "fingerprint": fingerprint(request),
            "received_at": received_at,
            "last_seen_at": received_at,
            "count": 1,
            "reason": reason,
            "errors": errors,
            "method": request.method,
            "query": request.query,
            "content_type": request.content_type,
            "source_address": request.source_address,
            "body": request.body,
        },
    )
    rejected_id, count = result.one()
    if effect is not None and count == 1:
        await effect.record_rejected(session, rejected_id, reason, errors, received_at)
    return int(rejected_id)


async def list_rejected(
    session: AsyncSession,
    limit: int,
    *,
    reason: str | None = None,
    before_id: int | None = None,
    after_id: int | None = None,
    include_replayed: bool = True,
) -> Sequence[Rejected]:
    """Quarantined rows: newest first below `before_id`, or oldest first above `after_id`."""
    stmt = select(Rejected)
    if reason is not None:
        stmt = stmt.where(Rejected.reason == reason)
    if not include_replayed:
        stmt = stmt.where(Rejected.replayed_at.is_(None))
    if after_id is not None:
        stmt = stmt.where(Rejected.id > after_id).order_by(Rejected.id)
    else:
        if before_id is not None:
            stmt = stmt.where(Rejected.id < before_id)
        stmt = stmt.order_by(Rejected.id.desc())
    return (await session.scalars(stmt.limit(limit))).all()


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """A replay either stored its report (`new` is False for a duplicate) or found errors."""

    report: ParsedReport | None
    new: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)


async def replay(
    session: AsyncSession, writer: Writer, zone: ZoneInfo, row: Rejected
) -> ReplayResult:
    """Validate a quarantined request again as of its receipt and store it the usual way.

    The report goes through the writer (its own transaction), so dedup and the ordering
    rule are the callback's own; a second replay is a duplicate. The row is marked replayed
    in the caller's transaction: should that not commit, replaying again is a harmless
    duplicate. IngestUnavailable propagates when the database is away (the report may or may
    not be stored; a retry is safe either way).
    """
    try:
        report = parse_callback(
            row.content_type, row.body, row.query.encode("latin-1"), zone, row.received_at
        )
    except CallbackRejected as rejected:
        return ReplayResult(None, errors=rejected.errors)
    try:
        new = await writer.submit(report, row.received_at)
    except IngestRefused as exc:
        return ReplayResult(
            None, errors=[{"field": "report", "message": f"the database refused it ({exc})"}]
        )
    try:
        now = dt.datetime.now(dt.UTC)
        await session.execute(update(Rejected).where(Rejected.id == row.id).values(replayed_at=now))
    except Exception as exc:
        if is_connectivity_error(exc):
            raise IngestUnavailable("database") from exc
        raise
    return ReplayResult(report, new=new)
