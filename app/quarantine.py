"""The quarantine: rejected callback requests kept whole, one row per identical request."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import insert_for
from app.models import Rejected

REJECTED = Rejected.__table__


@dataclass(frozen=True, slots=True)
class RawRequest:
    """What the gateway sent, byte for byte, as the quarantine keeps it."""

    method: str
    query: str  # the raw query string, latin-1 decoded so it re-encodes to the same bytes
    content_type: str
    source_address: str
    body: bytes


def fingerprint(request: RawRequest) -> bytes:
    digest = hashlib.sha256()
    for part in (request.method, request.query, request.content_type):
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\x00")
    digest.update(request.body)
    return digest.digest()


async def quarantine(
    engine: AsyncEngine,
    request: RawRequest,
    reason: str,
    errors: list[dict[str, Any]],
    received_at: dt.datetime,
) -> int:
    """Store a rejected request (or count one more copy of it); return its id."""
    ins = insert_for(engine.dialect, REJECTED)
    stmt = ins.on_conflict_do_update(
        index_elements=[REJECTED.c.fingerprint],
        set_={
            "count": REJECTED.c.count + 1,
            "last_seen_at": ins.excluded.last_seen_at,
            "source_address": ins.excluded.source_address,
        },
    ).returning(REJECTED.c.id)
    async with engine.begin() as connection:
        result = await connection.execute(
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
        return int(result.scalar_one())
