"""Rate limits that hold for the whole deployment: one row of `rate_slots` per limit, and each
caller takes the next free slot with one statement, so calls from every process and replica
are spaced evenly, as if one process made them all."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Double, case, cast, extract, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.db.engine import insert_for
from app.db.models import RateSlot

SLOTS = RateSlot.__table__.c


class SharedRate:
    """At most one call per `spacing` seconds under `name`, across every process that uses
    the same name on the same database."""

    def __init__(self, engine: AsyncEngine, name: str, spacing: float) -> None:
        self.engine = engine
        self.name = name
        self.spacing = spacing
        postgres = engine.dialect.name == "postgresql"
        # PostgreSQL's clock, so replicas on hosts whose clocks differ still agree; SQLite
        # serves processes of one host, whose clock they share.
        self._greatest = func.greatest if postgres else func.max
        self._postgres = postgres

    def _now(self) -> Any:
        if self._postgres:
            return cast(extract("epoch", func.statement_timestamp()), Double)
        return literal(time.time(), Double)

    async def reserve(self, max_wait: float) -> float:
        """Take the next slot unless it is more than `max_wait` seconds away (a pause, or a
        queue that long); returns the seconds until it. A wait over `max_wait` means no slot
        was taken: come back then."""
        # next_at is the next free slot: the caller takes it (or now, if it has passed) and
        # moves it one spacing on; one statement, so one round trip a call.
        now = self._now()
        statement = insert_for(self.engine.dialect, RateSlot).values(
            name=self.name, next_at=now + self.spacing
        )
        statement = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "next_at": case(
                    (SLOTS.next_at > now + max_wait, SLOTS.next_at),
                    else_=self._greatest(SLOTS.next_at, now) + self.spacing,
                )
            },
        ).returning(SLOTS.next_at, now)
        async with self.engine.begin() as connection:
            row = (await connection.execute(statement)).one()
        next_at, at = float(row[0]), float(row[1])
        # Taken: next_at moved one spacing past the slot. Not taken: next_at is where it was,
        # over max_wait away. (A slot taken within one spacing of max_wait reads as not taken
        # and goes unused: a lost slot, nothing worse.)
        slot = next_at if next_at - at > max_wait else next_at - self.spacing
        # Slept until on this host's clock: an offset from the database's clock (NTP keeps
        # it to milliseconds) moves every call of this process alike and keeps their spacing,
        # where a wait counted from the statement would vary with each round trip.
        return max(0.0, float(slot) - time.time())

    async def hold_off(self, seconds: float) -> None:
        """Let no call out for `seconds` from now (slots already taken stay taken)."""
        now = self._now()
        statement = insert_for(self.engine.dialect, RateSlot).values(
            name=self.name, next_at=now + seconds
        )
        statement = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"next_at": self._greatest(SLOTS.next_at, now + seconds)},
        )
        async with self.engine.begin() as connection:
            await connection.execute(statement)

    async def seconds_held_off(self, connection: AsyncConnection | AsyncSession) -> float:
        """How long until the next free slot (0 when one is free now), read in the caller's
        transaction."""
        wait = await connection.scalar(
            select(SLOTS.next_at - self._now()).where(SLOTS.name == self.name)
        )
        return max(0.0, float(wait or 0.0))
