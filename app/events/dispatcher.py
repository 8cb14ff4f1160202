"""The dispatcher: a task in every replica that claims due event rows, sends them (signed,
per receiver at most DLR_WEBHOOK_CONCURRENCY at a time), and records the outcomes, with the
contract's retry schedule.

One loop does the database work in rounds: each round records the outcomes gathered since
the last one and claims more, in one statement on PostgreSQL. New events wake it at once
(LISTEN on PostgreSQL, whose NOTIFY arrives when the batch commits; a call from the outbox
on SQLite); otherwise it looks every POLL_SECONDS and when a retry of its own falls due.
Sending happens in worker tasks per receiver (origin), so one slow receiver holds only its
own slots: a receiver at its limit is left out of the claims until it catches up. What one
attempt does and how its answer is judged is app.events.attempts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.core.metrics import Metrics
from app.core.settings import Settings
from app.events.attempts import Signers, attempt
from app.events.client import WebhookClient
from app.events.outbox import NOTIFY_CHANNEL, EventOutbox
from app.events.queue import (
    Claimed,
    EventQueue,
    Round,
    Settled,
    connect_postgres,
    open_queue,
)

log = logging.getLogger("mboxii_dlr.events")

POLL_SECONDS = 1.0
# Rounds are at least this far apart, so a busy dispatcher records and claims many rows
# per statement instead of a few.
ROUND_GAP = 0.005
# On SQLite a round holds the one write lock the ingest writer needs, and commits with an
# fsync: fewer, larger rounds.
SQLITE_ROUND_GAP = 0.02
# Claimed rows held at once in this process (queued and being sent).
MAX_HELD = 1000
# A receiver may have this many times its concurrency claimed, the rest waiting in its
# queue: enough that its slots stay busy between two rounds.
QUEUE_FACTOR = 8
# Time a claim keeps beyond what its sends can take, for the round trips around them.
LEASE_MARGIN = 5.0
WAITING_REFRESH_SECONDS = 5.0


def lease_seconds(timeout: float) -> float:
    """How long a claim holds a row: a row may wait behind one full set of the receiver's
    slots (each at most `timeout`) and then take `timeout` itself; the rest is margin."""
    return (QUEUE_FACTOR + 1) * timeout + LEASE_MARGIN


@dataclass(slots=True)
class _Receiver:
    """Claimed rows of one origin, and the workers sending them."""

    queue: deque[Claimed] = field(default_factory=deque)
    workers: int = 0
    held: int = 0  # queued + being sent


class Dispatcher:
    """Sends the outbox's rows; start() in the app's lifespan, stop() at its end."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        metrics: Metrics,
        outbox: EventOutbox | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.timeout = settings.webhook_timeout_seconds
        self.schedule = list(settings.webhook_retry_schedule)
        self.concurrency = settings.webhook_concurrency
        self._signers = Signers(settings.status_callback_secret.get_secret_value())
        self.lease = lease_seconds(self.timeout)
        self.client = WebhookClient(
            allow_private=settings.webhook_allow_private, user_agent=f"mboxii-dlr/{__version__}"
        )
        self._queue: EventQueue = open_queue(engine)
        self._sqlite = engine.dialect.name == "sqlite"
        self._round_gap = SQLITE_ROUND_GAP if self._sqlite else ROUND_GAP
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._more = True  # something may be due: claim on the next round
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._receivers: dict[str, _Receiver] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._held = 0
        self._settled: list[Settled] = []
        self._released: list[tuple[int, Any]] = []
        self._disable: dict[str, str] = {}
        self._timers: list[float] = []  # a heap: monotonic times our own retries fall due
        self._explored_at = 0.0
        self._waiting_at = 0.0
        self._failures = 0
        if outbox is not None and self._sqlite:
            # PostgreSQL's dispatchers hear of new rows by NOTIFY at commit.
            outbox.wake = self.wake_threadsafe

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="mboxii-dlr-events")
        if not self._sqlite:
            self._listener = asyncio.create_task(self._listen(), name="mboxii-dlr-events-listen")

    async def stop(self) -> None:
        """Stop claiming, let the sends in flight finish (up to the timeout), record them.
        Rows still queued are released for the next dispatcher."""
        self._closing = True
        if self._loop is None:  # never started (DLR_WEBHOOK_DISPATCH=false)
            await self.client.aclose()
            await self._queue.close()
            return
        self._wakeup.set()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._task is not None:
            await self._task
        for receiver in self._receivers.values():
            while receiver.queue:
                row = receiver.queue.popleft()
                self._released.append((row.id, row.token))
        if self._workers:
            await asyncio.wait(self._workers, timeout=self.timeout + 1)
            for worker in self._workers:
                worker.cancel()
        with contextlib.suppress(Exception):
            await self._round(limit=0)
        await self.client.aclose()
        await self._queue.close()

    def wake(self) -> None:
        self._more = True
        self._wakeup.set()

    def wake_threadsafe(self) -> None:
        """wake(), from any thread (the SQLite store's)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.wake)

    async def _listen(self) -> None:
        """LISTEN for the outbox's NOTIFY on a connection of its own, reconnecting."""
        while True:
            connection = None
            try:
                connection = await connect_postgres(self.engine, "listen")
                closed = asyncio.Event()
                connection.add_termination_listener(lambda *_, closed=closed: closed.set())
                await connection.add_listener(NOTIFY_CHANNEL, lambda *_: self.wake())
                self.wake()  # anything committed while not listening
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("events: LISTEN connection failed (%s)", exc.__class__.__name__)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
            await asyncio.sleep(1)

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        last = 0.0
        while not self._closing:
            now = time.monotonic()
            if not (self._more or self._settled):
                while self._timers and self._timers[0] <= now:
                    heapq.heappop(self._timers)
                wait = POLL_SECONDS
                if self._timers:
                    wait = min(wait, self._timers[0] - now)
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), max(wait, 0.0))
                except TimeoutError:
                    self._more = True
                continue
            gap = last + self._round_gap - now
            if gap > 0:
                await asyncio.sleep(gap)
            last = time.monotonic()
            try:
                await self._round(limit=self._claim_limit())
            except Exception as exc:
                self._failures += 1
                pause = min(0.25 * 2 ** min(self._failures, 5), 5.0)
                log.warning(
                    "events: database round failed (%s); again in %.2fs",
                    exc.__class__.__name__,
                    pause,
                )
                await asyncio.sleep(pause)
                self._more = True
                continue
            self._failures = 0
            if time.monotonic() - self._waiting_at > WAITING_REFRESH_SECONDS:
                await self._refresh_waiting()

    def _claim_limit(self) -> int:
        """What the known receivers have room for. Rows of other origins come along in due
        order; when every known receiver is full, one receiver's worth more, once per poll,
        finds the others (a claimed row without room is released at once)."""
        cap = self.concurrency * QUEUE_FACTOR
        room = sum(max(cap - r.held, 0) for r in self._receivers.values())
        now = time.monotonic()
        if room == 0 or now - self._explored_at >= POLL_SECONDS:
            self._explored_at = now
            room += cap
        return min(room, MAX_HELD - self._held)

    async def _round(self, limit: int) -> None:
        self._more = False
        cap = self.concurrency * QUEUE_FACTOR
        busy = [origin for origin, r in self._receivers.items() if r.held >= cap]
        work = Round(
            self._settled,
            self._released,
            list(self._disable.items()),
            max(limit, 0) if not self._closing else 0,
            busy,
            self.lease,
        )
        self._settled, self._released, self._disable = [], [], {}
        try:
            claimed = await self._queue.round(work)
        except BaseException:
            # Not recorded: keep them for the next round (the tokens still hold).
            self._settled = work.settled + self._settled
            self._released = work.released + self._released
            self._disable.update(dict(work.disable))
            raise
        if claimed and len(claimed) >= work.limit:
            self._more = True  # there may be more due
        now = time.monotonic()
        for row in claimed:
            row.claimed_at = now
            receiver = self._receivers.get(row.origin)
            if receiver is None:
                receiver = self._receivers[row.origin] = _Receiver()
            if receiver.held >= cap:
                self._released.append((row.id, row.token))
                continue
            receiver.queue.append(row)
            receiver.held += 1
            self._held += 1
            # Every worker is busy with a row (one pops the next as soon as it is done): a
            # queued row waits only when the receiver has its concurrency of them.
            if receiver.workers < self.concurrency:
                receiver.workers += 1
                task = asyncio.create_task(self._work(row.origin, receiver))
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
        if self._released:
            self._more = True

    async def _refresh_waiting(self) -> None:
        self._waiting_at = time.monotonic()
        try:
            count, oldest = await self._queue.waiting()
        except Exception:
            return
        self.metrics.events_waiting.set(count)
        age = 0.0 if oldest is None else (dt.datetime.now(dt.UTC) - oldest).total_seconds()
        self.metrics.events_oldest_age.set(max(age, 0.0))

    # ---------------------------------------------------------------- sending

    async def _work(self, origin: str, receiver: _Receiver) -> None:
        try:
            while receiver.queue and not self._closing:
                row = receiver.queue.popleft()
                try:
                    await self._attempt(row)
                finally:
                    if receiver.held == self.concurrency * QUEUE_FACTOR:
                        self._more = True  # room again: claim its backlog
                    receiver.held -= 1
                    self._held -= 1
        finally:
            receiver.workers -= 1
            if not receiver.held and not receiver.workers and not receiver.queue:
                self._receivers.pop(origin, None)
            self._wakeup.set()

    async def _attempt(self, row: Claimed) -> None:
        now = dt.datetime.now(dt.UTC)
        if row.subscription_id is not None and not row.enabled:
            self._settle(row, "failed", None, False, now, None, "subscription disabled or deleted")
            return
        signer = self._signers.for_row(row)
        if signer is None:
            self._settle(row, "failed", None, False, now, None, "DLR_STATUS_CALLBACK_SECRET unset")
            return
        if time.monotonic() - row.claimed_at > self.lease - self.timeout - LEASE_MARGIN / 2:
            # Too little of the lease left to finish: another dispatcher may take it.
            self._released.append((row.id, row.token))
            return
        verdict = await attempt(self.client, row, signer, self.timeout, self.schedule)
        self.metrics.event_attempts.labels(verdict.result).inc()
        if verdict.status == "delivered":
            self.metrics.event_latency.observe((verdict.at - row.created_at).total_seconds())
        if verdict.gone and row.subscription_id is not None:
            assert verdict.error is not None
            self._disable[row.subscription_id] = verdict.error
            log.warning("events: subscription %s disabled: %s", row.subscription_id, verdict.error)
        if verdict.delay is not None:
            heapq.heappush(self._timers, time.monotonic() + verdict.delay)
        self._settle(
            row,
            verdict.status,
            verdict.delay,
            True,
            verdict.at,
            verdict.code,
            verdict.error,
            row.attempts + 1,
        )

    def _settle(
        self,
        row: Claimed,
        status: str,
        delay: float | None,
        attempted: bool,
        at: dt.datetime,
        code: int | None,
        error: str | None,
        attempts: int | None = None,
    ) -> None:
        self._settled.append(
            Settled(
                row.id,
                row.token,
                status,
                row.attempts if attempts is None else attempts,
                delay,
                attempted,
                at,
                code,
                error,
            )
        )
        self._wakeup.set()
