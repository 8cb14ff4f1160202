"""Refused API keys per client, counted in the database so that every worker process and
replica sees them: the dashboard's login form and /v1 share one count per client."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import KeyFailure

Scope = Literal["login", "api"]

#: Refused keys one client may give within WINDOW_SECONDS; then it is locked out until the
#: oldest of them is WINDOW_SECONDS old.
FAILURES_ALLOWED = 10
WINDOW_SECONDS = 600.0
#: Refused logins per minute from all clients together beyond which the login form stops
#: checking keys for everyone until the minute's count falls below it again.
LOGIN_FAILURES_PER_MINUTE = 100
MINUTE = 60.0
#: How long a process trusts what it last read of a client before reading it again.
CACHE_SECONDS = 5.0
#: Clients a process remembers at most (the least recently seen are forgotten first); a key
#: is at most 64 characters, so this stays under a few MB.
MAX_CACHED = 10_000
PRUNE_EVERY_SECONDS = 60.0


@dataclass(slots=True)
class _Known:
    locked_until: float | None
    read_at: float


def _seconds_until(until: float | None, now: float) -> int | None:
    if until is None or until <= now:
        return None
    return max(1, math.ceil(until - now))


class KeyThrottle:
    """After `allowed` refused keys from one client within `window` seconds, that client is
    refused (429) until the oldest of them leaves the window, even with a right key, so the
    lock does not tell which guess was right. A client is an address, or an IPv6 /64
    (app.web.security.client_key). A right key on the login form clears the client's record.

    The failures are rows of `key_failures`, so every process and replica counts them. What
    a process read of a client is kept for `cache_seconds`, so that an authenticated request
    does not pay a query each time; a refused key always writes and reads the database. The
    price of the cache: a process that read a client as free a moment ago lets it try
    (at most once more: its own refusal reads the count again) until the entry is
    `cache_seconds` old, although another process has locked it meanwhile.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        allowed: int = FAILURES_ALLOWED,
        window: float = WINDOW_SECONDS,
        login_failures_per_minute: int = LOGIN_FAILURES_PER_MINUTE,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self.engine = engine
        self.allowed = allowed
        self.window = window
        self.login_failures_per_minute = login_failures_per_minute
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.max_cached = max_cached
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._pruned_at = -math.inf

    @staticmethod
    def _at(seconds: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)

    async def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try a key again, or None when it may try now."""
        now = self.clock()
        known = self._known.get(client)
        if known is None or now - known.read_at >= self.cache_seconds:
            known = self._remember(client, await self._locked_until(client, now), now)
        else:
            self._known.move_to_end(client)
        return _seconds_until(known.locked_until, now)

    async def logins_retry_after(self) -> int | None:
        """Seconds until the login form checks keys again while the refused logins of the
        last minute, from all clients together, are at the cap; None when it may check."""
        now = self.clock()
        query = (
            select(KeyFailure.failed_at)
            .where(KeyFailure.scope == "login", KeyFailure.failed_at > self._at(now - MINUTE))
            .order_by(KeyFailure.failed_at.desc())
            .offset(self.login_failures_per_minute - 1)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            capped = (await conn.execute(query)).scalar_one_or_none()
        return None if capped is None else _seconds_until(capped.timestamp() + MINUTE, now)

    async def failed(self, client: str, scope: Scope) -> int | None:
        """Count a refused key of `client`; returns its wait now (None: it may try again)."""
        now = self.clock()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(KeyFailure).values(client=client, scope=scope, failed_at=self._at(now))
            )
            if now - self._pruned_at >= PRUNE_EVERY_SECONDS:
                self._pruned_at = now
                old = self._at(now - max(self.window, MINUTE))
                await conn.execute(delete(KeyFailure).where(KeyFailure.failed_at <= old))
        known = self._remember(client, await self._locked_until(client, now), now)
        return _seconds_until(known.locked_until, now)

    async def succeeded(self, client: str) -> None:
        """A right key from `client` on the login form: forget its refused ones."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(KeyFailure).where(KeyFailure.client == client))
        self._known.pop(client, None)

    async def _locked_until(self, client: str, now: float) -> float | None:
        # The allowed-th newest failure inside the window: while there is one, the client is
        # locked until it leaves the window.
        query = (
            select(KeyFailure.failed_at)
            .where(KeyFailure.client == client, KeyFailure.failed_at > self._at(now - self.window))
            .order_by(KeyFailure.failed_at.desc())
            .offset(self.allowed - 1)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            oldest = (await conn.execute(query)).scalar_one_or_none()
        return None if oldest is None else oldest.timestamp() + self.window

    def _remember(self, client: str, locked_until: float | None, now: float) -> _Known:
        known = _Known(locked_until, now)
        self._known[client] = known
        self._known.move_to_end(client)
        while len(self._known) > self.max_cached:
            self._known.popitem(last=False)
        return known
