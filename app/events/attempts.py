"""One attempt at sending a claimed event: sign it, post it, and judge the answer (delivered,
again after a wait of the contract's retry schedule, or failed)."""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from app.events.client import Answer, ConnectionFailed, WebhookClient
from app.events.payloads import Signer
from app.events.queue import Claimed
from app.events.urls import Refused, Unresolvable

RETRY_AFTER_CAP = 3600.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def next_delay(
    attempts: int, schedule: Sequence[dt.timedelta], retry_after: float | None = None
) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones (±20% jitter), at least
    a Retry-After of up to an hour; None when the schedule is spent (the row fails)."""
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1].total_seconds() * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


def _snippet(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace")
    return " ".join(text.split())


class Signers:
    """The signer of each row: its subscription's secret (and the previous one while a
    rotation is fresh), or DLR_STATUS_CALLBACK_SECRET for a send's status_callback."""

    def __init__(self, callback_secret: str) -> None:
        self._callback = Signer([callback_secret]) if callback_secret else None
        # One per set of secrets: building a signer decodes its keys.
        self._known: dict[tuple[str, ...], Signer] = {}

    def for_row(self, row: Claimed) -> Signer | None:
        """None for a status_callback row while DLR_STATUS_CALLBACK_SECRET is unset."""
        if row.subscription_id is None:
            return self._callback
        assert row.secret is not None
        secrets: tuple[str, ...] = (row.secret,)
        if (
            row.previous_secret
            and row.previous_until
            and row.previous_until > dt.datetime.now(dt.UTC)
        ):
            secrets = (row.secret, row.previous_secret)
        signer = self._known.get(secrets)
        if signer is None:
            if len(self._known) > 1000:
                self._known.clear()
            signer = self._known[secrets] = Signer(secrets)
        return signer


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an attempt went."""

    status: str  # delivered, pending (again after `delay` seconds) or failed
    result: str  # its label among mboxii_dlr_event_attempts' results
    at: dt.datetime  # when the answer came (or did not)
    code: int | None  # the receiver's HTTP status
    error: str | None
    delay: float | None = None
    gone: bool = False  # a 410: the subscription is to be disabled


async def attempt(
    client: WebhookClient,
    row: Claimed,
    signer: Signer,
    seconds: float,
    schedule: Sequence[dt.timedelta],
) -> Verdict:
    """Post the row's event, signed, waiting at most `seconds`, and judge what came back."""
    body = row.payload.encode()
    headers = signer.headers(row.event_id, int(time.time()), row.payload)
    answer: Answer | None = None
    error = label = ""
    try:
        answer = await client.post(row.url, headers, body, seconds)
    except TimeoutError:
        label, error = "timeout", f"no answer within {seconds:g}s"
    except Refused as exc:
        label, error = "refused", str(exc)
    except Unresolvable as exc:
        label, error = "connection_error", str(exc)
    except (ConnectionFailed, OSError) as exc:
        label, error = "connection_error", str(exc) or exc.__class__.__name__
    at = dt.datetime.now(dt.UTC)
    code = None if answer is None else answer.status
    retry_after = None
    if answer is not None:
        if 200 <= answer.status < 300:
            return Verdict("delivered", "delivered", at, code, None)
        if answer.status == 410:
            reason = "the receiver answered 410 Gone"
            return Verdict("failed", "gone", at, code, reason, gone=True)
        if 300 <= answer.status < 400:
            label = "redirect"
            error = f"HTTP {answer.status} redirect to {answer.location or '?'} (not followed)"
        else:
            label = "http_error"
            error = f"HTTP {answer.status}"
            snippet = _snippet(answer.body)
            if snippet:
                error += f": {snippet}"
            if answer.status in (429, 503):
                retry_after = retry_after_seconds(answer.retry_after, time.time())
    delay = next_delay(row.attempts + 1, schedule, retry_after)
    if delay is None:
        return Verdict("failed", label, at, code, error[:500])
    return Verdict("pending", label, at, code, error[:500], delay)
