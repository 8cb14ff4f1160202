"""Event bodies and ids: `delivery.updated` and `callback.rejected` as the contract writes
them (section 4), and their Standard Webhooks signatures."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as json_string
from typing import Any

from standardwebhooks.webhooks import Webhook

from app.core.times import utc_z
from app.ingest.fold import DeliveryChange

DELIVERY_UPDATED = "delivery.updated"
CALLBACK_REJECTED = "callback.rejected"
EVENT_TYPES = (DELIVERY_UPDATED, CALLBACK_REJECTED)


def new_event_id() -> str:
    """`msg_` + milliseconds since 1970 (hex, so ids sort by creation) + 64 random bits."""
    return f"msg_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


_TRUE_FALSE = ("false", "true")


def delivery_body(change: DeliveryChange, timestamp: str) -> str:
    """The body of a delivery.updated event: the Delivery of section 2, its version and the
    state it replaced. Written by hand from validated parts (status words, E.164 numbers,
    the two types); msgid and batch_id are any printable text, so they are JSON-escaped.
    tests/test_event_payloads.py checks it against json.dumps of the same dict."""
    s = change.state
    p = change.previous
    previous = (
        "null"
        if p is None
        else f'{{"status":"{p.status}","outcome":"{p.outcome}","final":{_TRUE_FALSE[p.final]}}}'
    )
    return (
        f'{{"type":"delivery.updated","timestamp":"{timestamp}","data":{{'
        f'"msgid":{json_string(s.msgid)},"batch_id":{json_string(s.batch_id)},'
        f'"mobile":"{s.mobile}","type":"{s.type}","status":"{s.status}",'
        f'"statuscode":{s.statuscode},"outcome":"{s.outcome}",'
        f'"final":{_TRUE_FALSE[s.final]},"inconsistent":{_TRUE_FALSE[s.inconsistent]},'
        f'"done_at":"{utc_z(s.done_at)}","first_received_at":"{utc_z(s.first_received_at)}",'
        f'"last_received_at":"{utc_z(s.last_received_at)}","reports":{s.reports},'
        f'"version":{change.version},"previous":{previous}}}}}'
    )


def rejected_body(
    rejected_id: int,
    reason: str,
    errors: Sequence[dict[str, Any]],
    received_at: dt.datetime,
    timestamp: str,
) -> str:
    """The body of a callback.rejected event (never the raw request)."""
    return json.dumps(
        {
            "type": CALLBACK_REJECTED,
            "timestamp": timestamp,
            "data": {
                "rejected_id": rejected_id,
                "reason": reason,
                "errors": list(errors),
                "received_at": utc_z(received_at),
            },
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


class Signer:
    """Signs with one or two secrets (two while a rotated one is still valid), with the
    standardwebhooks package: `webhook-signature: v1,<sig>[ v1,<sig>]`."""

    __slots__ = ("_webhooks",)

    def __init__(self, secrets: Sequence[str]) -> None:
        self._webhooks = [Webhook(secret) for secret in secrets]

    def headers(self, event_id: str, timestamp: int, body: str) -> bytes:
        """The three webhook-* header lines for one attempt."""
        at = dt.datetime.fromtimestamp(timestamp, dt.UTC)
        signature = " ".join(w.sign(event_id, at, body) for w in self._webhooks)
        return (
            f"webhook-id: {event_id}\r\nwebhook-timestamp: {timestamp}\r\n"
            f"webhook-signature: {signature}\r\n"
        ).encode("ascii")
