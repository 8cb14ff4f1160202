"""Dashboard sessions ended by logging out: refused by every process until they expire."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import insert_for
from app.db.models import RevokedSession


async def revoke(engine: AsyncEngine, session_id: str, expires: float) -> None:
    """Refuse the session from now on, until `expires` (epoch seconds), when its signature
    refuses it anyway; the rows of sessions past that are removed here too."""
    now = dt.datetime.now(dt.UTC)
    insert = insert_for(engine.dialect, RevokedSession).values(
        session_id=session_id, expires_at=dt.datetime.fromtimestamp(expires, dt.UTC)
    )
    async with engine.begin() as conn:
        await conn.execute(insert.on_conflict_do_nothing(index_elements=["session_id"]))
        await conn.execute(delete(RevokedSession).where(RevokedSession.expires_at <= now))


async def is_revoked(engine: AsyncEngine, session_id: str) -> bool:
    """Whether the session was logged out (one primary-key lookup)."""
    query = select(RevokedSession.session_id).where(RevokedSession.session_id == session_id)
    async with engine.connect() as conn:
        return (await conn.execute(query)).first() is not None
