"""Numbers not to send to: suppressing and lifting by hand, and which numbers of a send are
suppressed. Each runs in its caller's transaction; the caller commits."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.metrics import Metrics
from app.core.mobiles import mask_mobile
from app.db.engine import insert_for
from app.db.models import NUMBERS, Number

log = logging.getLogger("mboxii_dlr.numbers")

REASON_MAX_LENGTH = 500


async def suppress(
    session: AsyncSession, mobile: str, reason: str, at: dt.datetime, metrics: Metrics
) -> Number:
    """Suppress `mobile` by hand (a number never seen gets a row of its own). A number
    suppressed automatically becomes a manual suppression from `at`; one suppressed by hand
    already keeps its time and takes the new reason."""
    n = NUMBERS.c
    insert = insert_for(session.get_bind().dialect, NUMBERS)
    statement = (
        insert.values(
            mobile=mobile, suppressed_source="manual", suppressed_reason=reason, suppressed_since=at
        )
        .on_conflict_do_update(
            index_elements=[n.mobile],
            set_={
                "suppressed_source": "manual",
                "suppressed_reason": insert.excluded.suppressed_reason,
                "suppressed_since": case(
                    (n.suppressed_source == "manual", n.suppressed_since),
                    else_=insert.excluded.suppressed_since,
                ),
            },
        )
        .returning(n.suppressed_since)
    )
    since = (await session.execute(statement)).scalar_one()
    if since == at:
        log.warning("number %s suppressed by hand", mask_mobile(mobile))
        metrics.suppressions.labels("manual").inc()
    return await _reread(session, mobile)


async def lift(
    session: AsyncSession, mobile: str, at: dt.datetime, metrics: Metrics
) -> Number | None:
    """Lift the suppression of `mobile`, manual or automatic: its failure streak starts
    again from 0, and failures done before `at` (or before its latest done_at, if later)
    no longer count. None when it was not suppressed."""
    n = NUMBERS.c
    statement = (
        update(NUMBERS)
        .where(n.mobile == mobile, n.suppressed_since.is_not(None))
        .values(
            suppressed_source=None,
            suppressed_reason=None,
            suppressed_since=None,
            failure_streak=0,
            # A report dated ahead of the lift (the gateway may date one up to a day
            # ahead) must not count either, or the streak would not be 0 by a recount.
            lifted_at=case((n.last_done_at > at, n.last_done_at), else_=at),
        )
        .returning(n.mobile)
    )
    if (await session.execute(statement)).scalar_one_or_none() is None:
        return None
    log.warning("suppression of number %s lifted", mask_mobile(mobile))
    metrics.lifts.inc()
    return await _reread(session, mobile)


async def suppressed_among(session: AsyncSession, mobiles: Sequence[str]) -> set[str]:
    """Those of `mobiles` (E.164) that are suppressed."""
    if not mobiles:
        return set()
    n = NUMBERS.c
    rows = await session.scalars(
        select(n.mobile).where(n.mobile.in_(sorted(set(mobiles))), n.suppressed_since.is_not(None))
    )
    return set(rows)


async def _reread(session: AsyncSession, mobile: str) -> Number:
    # populate_existing: the session may hold this row from before the statement.
    number = await session.get(Number, mobile, populate_existing=True)
    assert number is not None
    return number
