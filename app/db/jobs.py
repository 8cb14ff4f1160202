"""Background jobs that run once per deployment: every process offers to run a job, the one
that claims its row in `jobs` runs it, and the row says when it is due again.

A claim is a lease: the holder renews it while the job runs, and should the holder die, the
lease runs out and another process takes the job over. The same rows work on PostgreSQL
and on SQLite (several workers of one container), which a PostgreSQL advisory lock would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import insert_for
from app.db.models import Job

log = logging.getLogger("mboxii_dlr.jobs")

#: How long a claim holds without renewal: a holder renews it every third of this, so only
#: a process that died (or stalled this long) loses its job to another.
LEASE = dt.timedelta(seconds=60)
#: The longest a process sleeps before it looks at a job's row again.
POLL_SECONDS = 30.0


def holder_name() -> str:
    """Who claims: host and process, and a random part (pids repeat across containers)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JobRunner:
    """Runs one named job at most once per `interval` across every process that runs a
    JobRunner of that name on the same database."""

    def __init__(
        self,
        engine: AsyncEngine,
        name: str,
        interval: dt.timedelta,
        work: Callable[[], Awaitable[object]],
        *,
        first_delay: dt.timedelta = dt.timedelta(0),
        lease: dt.timedelta = LEASE,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.interval = interval
        self.work = work
        self.first_delay = first_delay
        self.lease = lease
        self.holder = holder or holder_name()

    async def run_forever(self) -> None:
        await self._create()
        while True:
            try:
                if await self.claim():
                    await self._run_claimed()
                wait = await self._seconds_until_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away; look again later
                log.warning("job %s: %s; trying again later", self.name, exc.__class__.__name__)
                wait = POLL_SECONDS
            # A little jitter, so processes that start together do not all ask at once.
            await asyncio.sleep(max(0.05, min(wait, POLL_SECONDS)) * random.uniform(1.0, 1.2))

    async def _create(self) -> None:
        first = _now() + self.first_delay
        statement = insert_for(self.engine.dialect, Job).values(name=self.name, next_run_at=first)
        with contextlib.suppress(Exception):  # run_forever's claims report the database's state
            async with self.engine.begin() as connection:
                await connection.execute(statement.on_conflict_do_nothing(index_elements=["name"]))

    async def claim(self) -> bool:
        """Take the job if it is due and nobody holds it; True when this process now does."""
        now = _now()
        job = Job.__table__.c
        statement = (
            update(Job)
            .where(
                job.name == self.name,
                # due, or due later than a run from now would make it (the interval shrank)
                or_(job.next_run_at <= now, job.next_run_at > now + self.interval),
                or_(job.lease_until.is_(None), job.lease_until < now),
            )
            .values(holder=self.holder, lease_until=now + self.lease)
        )
        async with self.engine.begin() as connection:
            taken = await connection.execute(statement)
        return bool(taken.rowcount)

    async def _run_claimed(self) -> None:
        renewer = asyncio.create_task(self._renew(), name=f"mboxii-dlr-job-{self.name}-lease")
        try:
            await self.work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s failed; it runs again in %s", self.name, self.interval)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await asyncio.shield(self._finish())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            async with self.engine.begin() as connection:
                kept = await connection.execute(
                    update(Job)
                    .where(Job.name == self.name, Job.holder == self.holder)
                    .values(lease_until=_now() + self.lease)
                )
            if not kept.rowcount:
                log.warning("job %s: another process took it over while this one ran", self.name)
                return

    async def _finish(self) -> None:
        now = _now()
        with contextlib.suppress(Exception):  # the lease runs out on its own
            async with self.engine.begin() as connection:
                await connection.execute(
                    update(Job)
                    .where(Job.name == self.name, Job.holder == self.holder)
                    .values(
                        next_run_at=now + self.interval,
                        holder=None,
                        lease_until=None,
                        last_finished_at=now,
                    )
                )

    async def _seconds_until_due(self) -> float:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(Job.next_run_at, Job.lease_until).where(Job.name == self.name)
                )
            ).one_or_none()
        if row is None:  # someone deleted it: make it again
            await self._create()
            return 0.0
        due: dt.datetime = max(row.next_run_at, row.lease_until or row.next_run_at)
        return (due - _now()).total_seconds()
