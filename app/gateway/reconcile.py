"""Reconciliation: ask CheckSMS about numbers whose report never came, store what it says."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, fields
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.settings import Settings
from app.db.engine import UTCDateTime
from app.db.models import Send
from app.db.rates import SharedRate
from app.gateway import (
    CheckResult,
    CheckStatus,
    GatewayError,
    GatewayRefused,
    MboxiiClient,
    NotSentYet,
)
from app.gateway.sends import awaiting_final_report, pending_numbers
from app.ingest.errors import CallbackRejected, IngestRefused, IngestUnavailable
from app.ingest.parse import ParsedReport, validate_fields
from app.ingest.writer import Writer

log = logging.getLogger("mboxii_dlr.reconcile")

#: Sends looked at per pass; the rest wait for the next pass.
PASS_LIMIT = 200
#: What is kept of a CheckSMS answer on the send, for the operator.
KEEP_ANSWER = 4000


def poll_report(
    batch_id: str,
    type: str,
    status: CheckStatus,
    zone: ZoneInfo,
    received_at: dt.datetime,
) -> ParsedReport | None:
    """A CheckSMS STATUS line as the report its callback would be, or None while it waits.

    The fields go through the callback's own validation, so the identity (ID, msgid,
    mobile, statuscode, statusstr, donetime) of a polled report equals its callback's."""
    if status.statuscode is None or not status.text:
        return None
    values = {
        "ID": batch_id,
        "msgid": status.msgid,
        "type": "Now" if type == "now" else "dlv",
        "mobile": status.mobile,
        "donetime": status.time,
        # CheckSMS writes 0 for success and -1 for failure; the callback 1 and 0.
        "statuscode": str(status.statuscode),
        "statusstr": status.text,
    }
    return validate_fields(values, zone, received_at)


@dataclass(slots=True)
class PassResult:
    """What one reconciliation pass did."""

    checked: int = 0
    reports_new: int = 0
    reports_duplicate: int = 0
    complete: int = 0
    not_sent_yet: int = 0
    errors: int = 0
    gave_up: int = 0

    def add(self, other: PassResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        parts = (f"{f.name.replace('_', ' ')} {getattr(self, f.name)}" for f in fields(self))
        return ", ".join(parts)


def rate_name(settings: Settings) -> str:
    """The name of the account's CheckSMS rate limit in `rate_slots`."""
    return f"CheckSMS:{settings.mboxii_cid}"


class Reconciler:
    """Finds sends whose numbers still lack a final report after DLR_RECONCILE_AFTER, asks
    CheckSMS about them (rate limited, a few at a time) and submits what it learns to the
    ingest writer as `poll` reports. Backs off per send and, for errors that concern the
    whole account or gateway, globally.

    Every process and replica runs one. They share the work through the database: each
    send is claimed by one of them for its check (a conditional UPDATE of next_check_at),
    and the account's rate limit and its pause after an account-wide error are one row of
    `rate_slots` (app.db.rates), so DLR_RECONCILE_RATE holds for the whole deployment."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: Writer,
        client: MboxiiClient,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.client = client
        # One call per 1/rate seconds, evenly spaced, across the deployment.
        self.rate = SharedRate(engine, rate_name(settings), 1.0 / settings.reconcile_rate)
        self.slots = asyncio.Semaphore(settings.reconcile_concurrency)
        # Account-wide errors in a row seen by this process: the pause grows with them.
        self._global_errors = 0
        self._task: asyncio.Task[None] | None = None
        # A claim outlives the slowest possible check, then another process may retry.
        self.lease = dt.timedelta(seconds=max(60.0, 4 * settings.mboxii_timeout_seconds))
        # A send waits at most this long for its slot while claimed; a longer wait (a pause,
        # or many replicas' checks queued ahead) hands it back for later instead.
        self.max_wait = self.lease.total_seconds() / 2

    # ------------------------------------------------------------ scheduling

    def backoff(self, errors: int) -> dt.timedelta:
        """Exponential delay after `errors` failures in a row, capped."""
        base = self.settings.reconcile_interval
        cap = self.settings.reconcile_backoff_max
        delay: dt.timedelta = base * (2 ** min(errors, 20))
        return min(delay, cap)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="mboxii-dlr-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_forever(self) -> None:
        interval = self.settings.reconcile_interval.total_seconds()
        while True:
            try:
                result = await self.run_once()
                if result.checked or result.gave_up:
                    log.info("reconciliation pass: %s", result)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive a bad pass (the database away, ...)
                log.exception("reconciliation pass failed")
            await asyncio.sleep(interval)

    async def run_once(self, *, everything: bool = False) -> PassResult:
        """One pass over the sends that are due (every send still reconciled if
        `everything`); returns what it did."""
        now = dt.datetime.now(dt.UTC)
        total = PassResult()
        stmt = select(Send).where(Send.next_check_at.is_not(None), Send.cancelled_at.is_(None))
        if not everything:
            stmt = stmt.where(Send.next_check_at <= now)
        async with self.sessionmaker() as session:
            if await self.rate.seconds_held_off(session) > self.max_wait:
                return total  # paused after an account-wide error (by any process)
            due = list(
                (await session.scalars(stmt.order_by(Send.next_check_at).limit(PASS_LIMIT))).all()
            )
        results = await asyncio.gather(*(self._guarded(send) for send in due))
        for result in results:
            total.add(result)
        return total

    async def _guarded(self, send: Send) -> PassResult:
        async with self.slots:
            return await self.reconcile_send(send)

    # ------------------------------------------------------------ one send
    #
    # A step owns two short transactions, with the gateway's answer and the writer's commit
    # in between: the claim (what is still pending, and the send taken for this check) and
    # the record (what the check found). Each starts with its write, so SQLite takes its
    # write lock before it reads and reads the newest data.

    async def reconcile_send(self, send: Send) -> PassResult:
        """Check one send at the gateway and store what it reports."""
        result = PassResult()
        now = dt.datetime.now(dt.UTC)
        pending = await self._claim(send, now, result)
        if not pending:
            return result

        # Paused (a check failed for the whole account, in any process): take no slot, it
        # would push every later one back. Too many checks queued ahead: give the slot up.
        # Either way the send goes back, to be claimed again once its turn can come.
        wait = await self.rate.reserve(self.max_wait)
        if wait > self.max_wait:
            await self._record(send, next_check_at=now + dt.timedelta(seconds=wait))
            return result
        await asyncio.sleep(wait)
        result.checked = 1
        try:
            answer = await self.client.check(send.batch_id, scheduled=send.type == "scheduled")
        except NotSentYet as exc:
            # Not an error: the scheduled send has simply not gone out yet.
            result.not_sent_yet = 1
            wait_from = max(now, send.send_at or now)
            await self._checked(send, now, exc.raw, next_at=wait_from + self._after(), errors=0)
            return result
        except GatewayError as exc:
            result.errors = 1
            await self._failed(send, now, exc)
            return result
        self._global_errors = 0

        try:
            new, duplicate = await self._store(send, answer, pending)
        except (IngestUnavailable, IngestRefused) as exc:
            # Our storage, not the gateway: ask again soon, without counting an error.
            log.warning(
                "%s send %s: storing polled reports failed (%s)", send.type, send.batch_id, exc
            )
            await self._checked(
                send, now, answer.raw, next_at=now + self.settings.reconcile_interval, errors=0
            )
            result.errors = 1
            return result
        result.reports_new, result.reports_duplicate = new, duplicate
        next_at = await self._checked(
            send, now, answer.raw, next_at=now + self._after(), errors=0, until_final=True
        )
        if next_at is None:
            result.complete = 1
        return result

    async def _claim(self, send: Send, now: dt.datetime, result: PassResult) -> set[str]:
        """The first transaction: take the send for this check, unless another process or
        task took it first, and return its numbers still without a final report. A send
        with none left, or past DLR_RECONCILE_GIVE_UP_AFTER, is closed instead (and the
        result says so); either way nothing is left to ask."""
        async with self.sessionmaker.begin() as session:
            taken = await session.execute(
                update(Send)
                .where(Send.id == send.id, Send.next_check_at == send.next_check_at)
                .values(next_check_at=now + self.lease)
            )
            if not getattr(taken, "rowcount", 0):
                return set()
            pending = set(await pending_numbers(session, send.id))
            closed: dict[str, object] | None = None
            if not pending:
                closed = {}
                result.complete = 1
            elif now - (send.send_at or send.created_at) > self.settings.reconcile_give_up_after:
                log.warning(
                    "%s send %s: giving up on %d numbers without a final report",
                    send.type,
                    send.batch_id,
                    len(pending),
                )
                closed = {"last_check_result": "gave up: no final report"}
                result.gave_up = 1
            if closed is not None:
                await session.execute(
                    update(Send).where(Send.id == send.id).values(next_check_at=None, **closed)
                )
                return set()
        return pending

    async def _record(
        self, send: Send, *, until_final: bool = False, **values: Any
    ) -> dt.datetime | None:
        """The last transaction: one UPDATE of the send with what its check found; with
        `until_final`, the next check is dropped when no number waits any more. Returns the
        next check's time."""
        if until_final:
            values["next_check_at"] = case(
                (awaiting_final_report(), literal(values["next_check_at"], UTCDateTime())),
                else_=None,
            )
        async with self.sessionmaker.begin() as session:
            next_at: dt.datetime | None = await session.scalar(
                update(Send)
                .where(Send.id == send.id)
                .values(**values)
                .returning(Send.next_check_at)
            )
        return next_at

    def _after(self) -> dt.timedelta:
        return max(self.settings.reconcile_after, self.settings.reconcile_interval)

    async def _store(self, send: Send, answer: CheckResult, pending: set[str]) -> tuple[int, int]:
        received_at = dt.datetime.now(dt.UTC)
        reports: list[ParsedReport] = []
        for status in answer.statuses:
            try:
                report = poll_report(
                    send.batch_id, send.type, status, self.settings.zone, received_at
                )
            except CallbackRejected as exc:
                log.warning(
                    "%s send %s: a CheckSMS STATUS line is not a valid report: %s",
                    send.type,
                    send.batch_id,
                    "; ".join(f"{e['field']} {e['message']}" for e in exc.errors),
                )
                continue
            # Numbers already final need nothing; the newest word is already known.
            if report is not None and report.mobile in pending:
                reports.append(report)
        outcomes = await asyncio.gather(
            *(self.writer.submit(r, received_at, source="poll") for r in reports)
        )
        new = sum(outcomes)
        return new, len(outcomes) - new

    async def _checked(
        self,
        send: Send,
        now: dt.datetime,
        raw: str,
        *,
        next_at: dt.datetime,
        errors: int,
        until_final: bool = False,
    ) -> dt.datetime | None:
        return await self._record(
            send,
            until_final=until_final,
            next_check_at=next_at,
            last_checked_at=now,
            checks=Send.checks + 1,
            check_errors=errors,
            last_check_result=raw[:KEEP_ANSWER],
        )

    async def _failed(self, send: Send, now: dt.datetime, exc: GatewayError) -> None:
        errors = send.check_errors + 1
        delay = self.backoff(errors)
        account_wide = not isinstance(exc, GatewayRefused) or exc.account_wide
        if account_wide:
            # The gateway or the account is the problem: every send would fail alike.
            self._global_errors += 1
            pause = self.backoff(self._global_errors)
            await self.rate.hold_off(pause.total_seconds())
            log.warning(
                "CheckSMS failed (%s); pausing reconciliation for %.0fs", exc, pause.total_seconds()
            )
        else:
            log.warning(
                "%s send %s: CheckSMS failed (%s); next try in %.0fs",
                send.type,
                send.batch_id,
                exc,
                delay.total_seconds(),
            )
        summary = f"{type(exc).__name__}: {exc}"
        if exc.raw:
            summary += f"\n{exc.raw}"
        await self._checked(send, now, summary, next_at=now + delay, errors=errors)
