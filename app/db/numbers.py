"""Per-number summaries recounted from deliveries: the recount itself, rewriting summaries
from it (retention, repair), finding the summaries that differ from it (check), and the
automatic suppression of the numbers whose streak has reached the threshold."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Select,
    and_,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.metrics import Metrics
from app.core.mobiles import mask_mobile
from app.db.engine import insert_for
from app.db.models import DELIVERIES, NUMBERS

log = logging.getLogger("mboxii_dlr.numbers")


# The columns the write path keeps, in the order the recount gives them.
SUMMARY = (
    "deliveries",
    "delivered",
    "failed",
    "pending",
    "first_done_at",
    "last_done_at",
    "last_status",
    "last_outcome",
    "last_delivered_at",
    "failure_streak",
)
# What a number with no deliveries (one suppressed by hand, say) holds.
COUNTS = ("deliveries", "delivered", "failed", "pending", "failure_streak")
EMPTY: dict[str, Any] = {name: 0 if name in COUNTS else None for name in SUMMARY}


def recount(mobiles: Sequence[str] | None = None) -> Select[Any]:
    """The summary of every number with deliveries (or only of `mobiles`), counted from
    deliveries: one row per number, `mobile` then the SUMMARY columns."""
    d = DELIVERIES.c
    ranked_query = select(
        d.mobile,
        d.done_at,
        d.msgid,
        d.status,
        d.outcome,
        d.final,
        # The list order within one number: latest done_at first, then msgid.
        func.row_number()
        .over(partition_by=d.mobile, order_by=(d.done_at.desc(), d.msgid))
        .label("place"),
        func.max(case((d.outcome == "delivered", d.done_at)))
        .over(partition_by=d.mobile)
        .label("delivered_at"),
    )
    if mobiles is not None:
        ranked_query = ranked_query.where(d.mobile.in_(mobiles))
    r = ranked_query.subquery("ranked")
    n = NUMBERS.c
    counted = and_(
        r.c.outcome == "failed",
        r.c.final,
        or_(r.c.delivered_at.is_(None), r.c.done_at > r.c.delivered_at),
        or_(n.lifted_at.is_(None), r.c.done_at > n.lifted_at),
    )

    def how_many(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    return (
        select(
            r.c.mobile,
            func.count().label("deliveries"),
            how_many(r.c.outcome == "delivered").label("delivered"),
            how_many(r.c.outcome == "failed").label("failed"),
            how_many(r.c.outcome == "pending").label("pending"),
            func.min(r.c.done_at).label("first_done_at"),
            func.max(r.c.done_at).label("last_done_at"),
            func.max(case((r.c.place == 1, r.c.status))).label("last_status"),
            func.max(case((r.c.place == 1, r.c.outcome))).label("last_outcome"),
            func.max(r.c.delivered_at).label("last_delivered_at"),
            how_many(counted).label("failure_streak"),
        )
        .select_from(r.outerjoin(NUMBERS, n.mobile == r.c.mobile))
        .group_by(r.c.mobile)
    )


async def lock(connection: AsyncConnection, mobiles: Sequence[str]) -> None:
    """Take the row locks of `mobiles` in mobile order (creating missing rows), so that
    writers touching the same numbers queue in one order and cannot deadlock. A statement
    run after this one sees everything committed by whoever held them before."""
    if not mobiles:
        return
    insert = insert_for(connection.dialect, NUMBERS)
    rows = [{"mobile": mobile} for mobile in sorted(set(mobiles))]
    if connection.dialect.name == "sqlite":  # one writer: there is nothing to queue behind
        await connection.execute(insert.on_conflict_do_nothing(index_elements=["mobile"]), rows)
        return
    await connection.execute(
        insert.on_conflict_do_update(
            index_elements=["mobile"], set_={"mobile": insert.excluded.mobile}
        ),
        rows,
    )


async def refresh(connection: AsyncConnection, mobiles: Sequence[str]) -> None:
    """Rewrite the summaries of `mobiles` from a recount, in the caller's transaction.
    Numbers left without deliveries get the empty summary, and their rows go unless they
    are suppressed or were lifted (retention forgets a number with its deliveries)."""
    mobiles = sorted(set(mobiles))
    if not mobiles:
        return
    await lock(connection, mobiles)
    counted = recount(mobiles).subquery("counted")
    n = NUMBERS.c
    await connection.execute(
        update(NUMBERS)
        .where(n.mobile == counted.c.mobile)
        .values({name: counted.c[name] for name in SUMMARY})
    )
    gone = ~select(DELIVERIES.c.mobile).where(DELIVERIES.c.mobile == n.mobile).exists()
    await connection.execute(update(NUMBERS).where(n.mobile.in_(mobiles), gone).values(EMPTY))
    await connection.execute(
        delete(NUMBERS).where(
            n.mobile.in_(mobiles),
            gone,
            n.suppressed_since.is_(None),
            n.lifted_at.is_(None),
        )
    )


def _differs(stored: Any, counted: Any) -> Any:
    return or_(*(stored[name].is_distinct_from(counted[name]) for name in SUMMARY))


def mismatches() -> CompoundSelect[Any]:
    """The numbers whose stored summary differs from a recount from deliveries: stored ones
    that differ or have no deliveries yet claim some, and counted ones with no row. One
    statement, so one snapshot: committed summaries and deliveries always agree in it."""
    counted = recount().subquery("counted")
    n = NUMBERS.c
    differing = (
        select(n.mobile).join(counted, counted.c.mobile == n.mobile).where(_differs(n, counted.c))
    )
    empty = {name: literal(value) for name, value in EMPTY.items()}
    claims = select(n.mobile).where(
        ~select(DELIVERIES.c.mobile).where(DELIVERIES.c.mobile == n.mobile).exists(),
        or_(*(n[name].is_distinct_from(empty[name]) for name in SUMMARY)),
    )
    missing = select(counted.c.mobile).where(
        ~select(n.mobile).where(n.mobile == counted.c.mobile).exists()
    )
    return differing.union_all(claims, missing)


@dataclass(slots=True)
class CheckResult:
    """What check() found: the numbers whose summary differed, and whether it repaired them
    (then `remaining` are those that still differ, which a concurrent change can cause)."""

    differing: list[str]
    repaired: bool = False
    remaining: list[str] = field(default_factory=list)


async def check(engine: AsyncEngine, *, repair: bool = False, chunk: int = 500) -> CheckResult:
    """Compare every number's summary with a recount from deliveries; with `repair`, rewrite
    the differing ones from the recount (`chunk` numbers per transaction) and look again."""

    async def differing() -> list[str]:
        async with engine.connect() as connection:
            return sorted(set((await connection.execute(mismatches())).scalars()))

    result = CheckResult(await differing())
    if not repair or not result.differing:
        return result
    for start in range(0, len(result.differing), chunk):
        async with engine.begin() as connection:
            await refresh(connection, result.differing[start : start + chunk])
    result.repaired = True
    result.remaining = await differing()
    return result


def automatic_reason(threshold: int) -> str:
    """The reason an automatic suppression gives."""
    return f"{threshold} failed deliveries in a row"


def announce_automatic(suppressed: Sequence[tuple[str, int]], metrics: Metrics) -> None:
    """Log (the numbers masked) and count automatic suppressions that have been committed."""
    for mobile, streak in suppressed:
        log.warning(
            "number %s suppressed automatically: %d failed deliveries in a row",
            mask_mobile(mobile),
            streak,
        )
    if suppressed:
        metrics.suppressions.labels("automatic").inc(len(suppressed))


async def suppress_reached(
    engine: AsyncEngine, threshold: int, metrics: Metrics, chunk: int = 500
) -> int:
    """Suppress every number whose streak already reached `threshold` (the write path does it
    as a streak grows; this is for a threshold set or lowered since), `chunk` numbers per
    transaction, in mobile order like every writer of numbers. Returns how many."""
    n = NUMBERS.c
    due = n.failure_streak >= threshold, n.failure_streak > 0, n.suppressed_since.is_(None)
    done = 0
    after = ""
    while True:
        async with engine.begin() as connection:
            mobiles = list(
                (
                    await connection.execute(
                        select(n.mobile)
                        .where(*due, n.mobile > after)
                        .order_by(n.mobile)
                        .limit(chunk)
                    )
                ).scalars()
            )
            if not mobiles:
                return done
            after = mobiles[-1]
            rows = await connection.execute(
                update(NUMBERS)
                .where(n.mobile.in_(mobiles), *due)
                .values(
                    suppressed_source="automatic",
                    suppressed_reason=automatic_reason(threshold),
                    suppressed_since=dt.datetime.now(dt.UTC),
                )
                .returning(n.mobile, n.failure_streak)
            )
            suppressed = [(row[0], row[1]) for row in rows]
        announce_automatic(suppressed, metrics)
        done += len(suppressed)
