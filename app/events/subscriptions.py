"""Subscriptions and the event log: create, change, rotate, delete; list events and send
one again. The caller owns the transaction (these only execute and flush)."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound, SubscriptionDisabled
from app.db.models import Event, Subscription
from app.events.outbox import NOTIFY_CHANNEL
from app.events.urls import origin_of

ROTATION_OVERLAP = dt.timedelta(hours=24)
UNDELIVERED = ("pending", "failed")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_subscription_id() -> str:
    return "sub_" + secrets.token_hex(12)


async def create_subscription(
    session: AsyncSession,
    url: str,
    event_types: list[str] | None,
    filters: dict[str, Any] | None,
    description: str | None,
) -> Subscription:
    now = dt.datetime.now(dt.UTC)
    subscription = Subscription(
        id=new_subscription_id(),
        url=url,
        event_types=event_types,
        filter=filters,
        description=description,
        enabled=True,
        secret=new_secret(),
        created_at=now,
        updated_at=now,
    )
    session.add(subscription)
    await session.flush()
    return subscription


async def get_subscription(session: AsyncSession, subscription_id: str) -> Subscription:
    subscription = await session.get(Subscription, subscription_id)
    if subscription is None:
        raise NotFound(f"no subscription {subscription_id}")
    return subscription


async def list_subscriptions(
    session: AsyncSession, limit: int, after: tuple[dt.datetime, str] | None
) -> Sequence[Subscription]:
    """Oldest first (the order they were made), after the cursor's position."""
    stmt = select(Subscription).order_by(Subscription.created_at, Subscription.id)
    if after is not None:
        at, last_id = after
        stmt = stmt.where(
            (Subscription.created_at > at)
            | ((Subscription.created_at == at) & (Subscription.id > last_id))
        )
    return (await session.scalars(stmt.limit(limit))).all()


async def _fail_pending(session: AsyncSession, subscription_id: str, reason: str) -> None:
    await session.execute(
        update(Event)
        .where(Event.subscription_id == subscription_id, Event.status == "pending")
        .values(status="failed", next_attempt_at=None, locked_until=None, last_error=reason)
    )


async def change_subscription(
    session: AsyncSession, subscription_id: str, changes: dict[str, Any]
) -> Subscription:
    """Apply a PATCH (only the fields it names). A new URL applies to the events still
    waiting too; disabling fails those (POST /v1/events/{id}/retry sends one again)."""
    subscription = await get_subscription(session, subscription_id)
    if "url" in changes and changes["url"] != subscription.url:
        subscription.url = changes["url"]
        await session.execute(
            update(Event)
            .where(Event.subscription_id == subscription_id, Event.status == "pending")
            .values(url=changes["url"], origin=origin_of(changes["url"]))
        )
    for name in ("event_types", "filter", "description"):
        if name in changes:
            setattr(subscription, name, changes[name])
    if "enabled" in changes and changes["enabled"] != subscription.enabled:
        subscription.enabled = changes["enabled"]
        if subscription.enabled:
            subscription.disabled_reason = None
        else:
            subscription.disabled_reason = "disabled through the API"
            await _fail_pending(session, subscription_id, "subscription disabled")
    subscription.updated_at = dt.datetime.now(dt.UTC)
    await session.flush()
    return subscription


async def rotate_secret(session: AsyncSession, subscription_id: str) -> Subscription:
    """A new secret; the current one keeps signing beside it for 24 hours."""
    subscription = await get_subscription(session, subscription_id)
    now = dt.datetime.now(dt.UTC)
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_until = now + ROTATION_OVERLAP
    subscription.secret = new_secret()
    subscription.updated_at = now
    await session.flush()
    return subscription


async def delete_subscription(session: AsyncSession, subscription_id: str) -> None:
    """Delete it and its undelivered events (the delivered ones stay in the log)."""
    await get_subscription(session, subscription_id)
    await session.execute(
        delete(Event).where(Event.subscription_id == subscription_id, Event.status.in_(UNDELIVERED))
    )
    await session.execute(delete(Subscription).where(Subscription.id == subscription_id))
    await session.flush()


async def list_events(
    session: AsyncSession,
    limit: int,
    *,
    status: str | None = None,
    event_type: str | None = None,
    subscription_id: str | None = None,
    before_id: int | None = None,
) -> Sequence[Event]:
    """Event rows, newest first, below `before_id`."""
    stmt = select(Event)
    if status is not None:
        stmt = stmt.where(Event.status == status)
    if event_type is not None:
        stmt = stmt.where(Event.type == event_type)
    if subscription_id is not None:
        stmt = stmt.where(Event.subscription_id == subscription_id)
    if before_id is not None:
        stmt = stmt.where(Event.id < before_id)
    return (await session.scalars(stmt.order_by(Event.id.desc()).limit(limit))).all()


async def retry_event(session: AsyncSession, event_row_id: int) -> Event:
    """Make a row due now with its attempts starting over, whatever its status; refused
    for a subscription that is disabled or deleted (nothing would be sent)."""
    row = await session.get(Event, event_row_id)
    if row is None:
        raise NotFound(f"no event #{event_row_id}")
    if row.subscription_id is not None:
        subscription = await session.get(Subscription, row.subscription_id)
        if subscription is None or not subscription.enabled:
            state = "deleted" if subscription is None else "disabled"
            raise SubscriptionDisabled(
                f"event #{event_row_id} belongs to subscription {row.subscription_id}, which "
                f"is {state}: nothing would be sent"
                + ("; enable it (PATCH enabled: true) first" if subscription else "")
            )
    row.status = "pending"
    row.attempts = 0
    row.next_attempt_at = dt.datetime.now(dt.UTC)
    row.locked_until = None  # a send in flight records nothing over this
    row.delivered_at = None
    if session.get_bind().dialect.name == "postgresql":
        # Delivered to the dispatchers when the caller commits.
        await session.execute(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))
    await session.flush()
    return row
