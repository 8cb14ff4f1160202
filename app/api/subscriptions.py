"""Outbound events API: subscriptions (destinations) and the event log with its retry."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from app.api.errors import error_responses
from app.api.params import CursorQuery, LimitQuery, check_cursor, checked_url, invalid
from app.api.schemas.common import ErrorRead
from app.api.schemas.events import (
    EventPage,
    EventRead,
    EventStatus,
    EventType,
    SecretRead,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPage,
    SubscriptionRead,
    SubscriptionUpdate,
)
from app.db.engine import MAX_ROW_ID
from app.db.models import Event, Subscription
from app.events import subscriptions as service
from app.events.payloads import EVENT_TYPES
from app.read.cursors import (
    cursor_key,
    decode_cursor,
    id_position,
    next_page,
    not_this_list,
)
from app.state import SessionDep, SettingsDep, StateDep

router = APIRouter(prefix="/v1", tags=["events"])

SubscriptionPath = Annotated[
    str,
    # Any text: one that is not an id (or no longer one) is unknown, a 404.
    Path(
        max_length=100,
        description="The subscription's id",
        examples=["sub_5f0c2a9e4b7d1c3a8e6f9b2d"],
    ),
]


def subscription_view(row: Subscription) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "events": list(row.event_types or EVENT_TYPES),
        "filter": row.filter,
        "description": row.description,
        "enabled": row.enabled,
        "created_at": row.created_at,
        "disabled_reason": row.disabled_reason,
    }


def event_view(row: Event) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "type": row.type,
        "created_at": row.created_at,
        "subscription_id": row.subscription_id,
        "url": row.url,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at,
        "last_attempt_at": row.last_attempt_at,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "payload": json.loads(row.payload),
    }


@router.post(
    "/subscriptions",
    status_code=201,
    response_model=SubscriptionCreated,
    operation_id="create_subscription",
    summary="Subscribe a URL to events",
    responses=error_responses(400, 401, 403, 422),
)
async def create_subscription(
    body: SubscriptionCreate, settings: SettingsDep, session: SessionDep
) -> dict[str, Any]:
    """Create a subscription; the answer holds its signing secret."""
    url = await checked_url(settings, body.url)
    row = await service.create_subscription(
        session,
        url,
        sorted(set(body.events)) if body.events else None,
        body.filter.stored() if body.filter else None,
        body.description,
    )
    return {**subscription_view(row), "secret": row.secret}


@router.get(
    "/subscriptions",
    response_model=SubscriptionPage,
    summary="The subscriptions",
    responses=error_responses(401, 422),
)
async def list_subscriptions(
    settings: SettingsDep,
    session: SessionDep,
    limit: LimitQuery = 100,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """List the subscriptions, oldest first (without their secrets)."""
    key = cursor_key(settings)
    filters = {"list": "subscriptions"}
    after = None
    if cursor is not None:
        check_cursor(cursor)
        position = decode_cursor(key, cursor, filters)
        try:
            at, last_id = position
            after = (dt.datetime.fromisoformat(at), str(last_id))
        except (TypeError, ValueError):
            raise not_this_list() from None
    rows = await service.list_subscriptions(session, limit + 1, after)
    page, next_cursor = next_page(
        rows, limit, key, filters, lambda last: [last.created_at.isoformat(), last.id]
    )
    return {"items": [subscription_view(r) for r in page], "next_cursor": next_cursor}


@router.get(
    "/subscriptions/{id}",
    response_model=SubscriptionRead,
    operation_id="read_subscription",
    summary="One subscription",
    responses=error_responses(401, 404, 422),
)
async def read_subscription(session: SessionDep, id: SubscriptionPath) -> dict[str, Any]:
    """Show a subscription (without its secret)."""
    return subscription_view(await service.get_subscription(session, id))


@router.patch(
    "/subscriptions/{id}",
    response_model=SubscriptionRead,
    operation_id="update_subscription",
    summary="Change a subscription",
    responses=error_responses(400, 401, 403, 404, 422),
)
async def update_subscription(
    body: SubscriptionUpdate, settings: SettingsDep, session: SessionDep, id: SubscriptionPath
) -> dict[str, Any]:
    """Change the fields given: a new URL applies to the events still waiting; `enabled`
    false fails them (retry sends one again), true starts sending new events again."""
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    for name in ("url", "enabled"):
        if name in given and getattr(body, name) is None:
            raise invalid(name, "must not be null")
    if "url" in given and body.url is not None:
        changes["url"] = await checked_url(settings, body.url)
    if "events" in given:
        changes["event_types"] = sorted(set(body.events)) if body.events else None
    if "filter" in given:
        changes["filter"] = body.filter.stored() if body.filter else None
    if "description" in given:
        changes["description"] = body.description
    if "enabled" in given:
        changes["enabled"] = body.enabled
    return subscription_view(await service.change_subscription(session, id, changes))


@router.delete(
    "/subscriptions/{id}",
    status_code=204,
    response_class=Response,
    operation_id="delete_subscription",
    summary="Delete a subscription",
    responses=error_responses(401, 403, 404, 422),
)
async def delete_subscription(session: SessionDep, id: SubscriptionPath) -> Response:
    """Delete a subscription; its undelivered events are dropped."""
    await service.delete_subscription(session, id)
    return Response(status_code=204)


@router.get(
    "/subscriptions/{id}/secret",
    response_model=SecretRead,
    operation_id="read_subscription_secret",
    summary="A subscription's signing secret",
    responses=error_responses(401, 403, 404, 422),
)
async def read_secret(session: SessionDep, id: SubscriptionPath) -> dict[str, str]:
    """Show the secret the events of this subscription are signed with."""
    return {"secret": (await service.get_subscription(session, id)).secret}


@router.post(
    "/subscriptions/{id}/secret/rotate",
    response_model=SecretRead,
    operation_id="rotate_subscription_secret",
    summary="Rotate a subscription's signing secret",
    responses=error_responses(401, 403, 404, 422),
)
async def rotate_secret(session: SessionDep, id: SubscriptionPath) -> dict[str, str]:
    """Make a new secret; for 24 hours the old one signs too (two signatures, space
    separated), so receivers can switch without losing an event."""
    return {"secret": (await service.rotate_secret(session, id)).secret}


@router.get(
    "/events",
    response_model=EventPage,
    summary="Outbound events",
    responses=error_responses(401, 422),
)
async def list_events(
    settings: SettingsDep,
    session: SessionDep,
    status: Annotated[EventStatus | None, Query(description="Only rows in this state")] = None,
    type: Annotated[EventType | None, Query(description="Only events of this type")] = None,
    subscription_id: Annotated[
        str | None,
        Query(pattern=r"^sub_[0-9a-f]{24}$", max_length=28, description="Only this destination"),
    ] = None,
    limit: LimitQuery = 100,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """List events, one item per event and destination, newest first."""
    key = cursor_key(settings)
    filters = {"list": "events", "status": status, "type": type, "sub": subscription_id}
    before_id = id_position(key, check_cursor(cursor), filters)
    rows = await service.list_events(
        session,
        limit + 1,
        status=status,
        event_type=type,
        subscription_id=subscription_id,
        before_id=before_id,
    )
    page, next_cursor = next_page(rows, limit, key, filters, lambda last: [last.id])
    return {"items": [event_view(r) for r in page], "next_cursor": next_cursor}


@router.post(
    "/events/{id}/retry",
    status_code=202,
    response_model=EventRead,
    operation_id="retry_event",
    summary="Send an event again",
    responses={
        **error_responses(401, 404, 422),
        409: {
            "model": ErrorRead,
            "description": "The event's subscription is disabled or deleted "
            "(`subscription_disabled`): nothing would be sent",
        },
    },
)
async def retry_event(
    state: StateDep,
    session: SessionDep,
    # Within a row id's range either way (0 and below are unknown: 404).
    id: Annotated[
        int,
        Path(ge=-MAX_ROW_ID, le=MAX_ROW_ID, description="The event row's id", examples=[4821]),
    ],
) -> dict[str, Any]:
    """Send this event to this destination again now, whatever its status; its attempts
    start over. 404 for an unknown id; 409 when its subscription is disabled (enable it
    first) or deleted."""
    row = await service.retry_event(session, id)
    # On SQLite the dispatcher's next round takes the write lock, so it sees the row once
    # this request's transaction has committed; PostgreSQL's dispatchers hear the NOTIFY.
    state.dispatcher.wake()
    return event_view(row)
