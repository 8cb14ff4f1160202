"""Sending through the gateway: send now or schedule, show, cancel (only with an account)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import require_send_key
from app.api.errors import error_responses
from app.api.params import (
    IDENTIFIER_PATTERN,
    check_identifier,
    checked_url,
    invalid,
    parse_instant,
    pattern,
)
from app.api.schemas.common import MessageType, ValidationErrorRead
from app.api.schemas.messages import (
    AllSuppressedRead,
    GatewayErrorRead,
    MessageCreate,
    MessageRead,
    MessageSent,
)
from app.core import errors
from app.db.models import Send
from app.gateway import (
    GatewayError,
    GatewayRefused,
    GatewayTimeout,
    InvalidMessage,
    UnreadableAnswer,
    prepare_message,
)
from app.gateway.budget import SendBudget
from app.gateway.sends import (
    DuplicateSend,
    find_sends,
    get_send,
    mark_cancelled,
    numbers_of,
    pending_numbers,
    record_send,
)
from app.gateway.suppressions import suppressed_among
from app.state import GatewayDep, SessionDep, SettingsDep, get_state

log = logging.getLogger("mboxii_dlr.messages")

router = APIRouter(prefix="/v1", tags=["messages"])

BatchPath = Annotated[
    str,
    Path(
        description="The gateway's ID of the send",
        examples=["123456"],
        json_schema_extra=pattern(IDENTIFIER_PATTERN),
    ),
]
TypeQuery = Annotated[
    MessageType | None,
    Query(description="`now` or `scheduled`, when both sequences share the ID"),
]
GATEWAY_RESPONSES: dict[int | str, dict[str, Any]] = {
    502: {"model": GatewayErrorRead, "description": error_responses(502)[502]["description"]},
    504: {"model": GatewayErrorRead, "description": error_responses(504)[504]["description"]},
}


def api_error(exc: GatewayError) -> errors.ApiError:
    """The HTTP answer to a gateway failure: 502 with the code and its meaning, 504 on timeout."""
    common: dict[str, Any] = {"interface": exc.interface, "answer": exc.raw}
    if isinstance(exc, GatewayRefused):
        return errors.GatewayFailed(
            f"{exc.interface} refused: {exc.meaning}", code=exc.code, meaning=exc.meaning, **common
        )
    if isinstance(exc, GatewayTimeout):
        return errors.GatewayTimedOut(exc.message, **common)
    if isinstance(exc, UnreadableAnswer):
        return errors.GatewayBadAnswer(exc.message, **common)
    return errors.GatewayUnreachable(exc.message, **common)


def spend_budget(request: Request, count: int) -> None:
    """Take `count` messages from the caller's key's budget, or refuse with 429 (or 422 for
    a send larger than a whole minute's budget, which could never pass)."""
    budget: SendBudget = get_state(request).send_budget
    if count > budget.rate:
        raise errors.InvalidParameters(
            errors=[
                {
                    "field": "numbers",
                    "message": f"more numbers than DLR_SEND_RATE allows per minute ({budget.rate})",
                }
            ]
        )
    key = request.scope.get("state", {}).get("api_key") or "open"
    wait = budget.take(key, count)
    if wait is not None:
        log.warning("send refused: key %s is over its budget of %d a minute", key, budget.rate)
        raise errors.TooManyRequests(
            f"this key may send {budget.rate} messages a minute; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )


async def message_view(session: AsyncSession, send: Send) -> dict[str, Any]:
    numbers = await numbers_of(session, send.id)
    pending = 0 if send.cancelled_at else len(await pending_numbers(session, send.id))
    return {
        "batch_id": send.batch_id,
        "type": send.type,
        "numbers": numbers,
        "language": send.language,
        "text": send.text,
        "send_at": send.send_at,
        "created_at": send.created_at,
        "cancelled_at": send.cancelled_at,
        "gateway_answer": send.gateway_answer,
        "pending": pending,
        "next_check_at": send.next_check_at,
        "last_checked_at": send.last_checked_at,
        "status_callback": send.status_callback,
    }


@router.post(
    "/messages",
    status_code=201,
    response_model=MessageSent,
    summary="Send a message now, or schedule it",
    dependencies=[Depends(require_send_key)],
    responses={
        **error_responses(400, 401, 403, 422, 429, 503),
        422: {
            "model": ValidationErrorRead | AllSuppressedRead,
            "description": "Invalid parameters (`invalid_parameters`), or every number is "
            "suppressed (`all_numbers_suppressed`, with the list; nothing was sent)",
        },
        **GATEWAY_RESPONSES,
    },
)
async def create_message(
    body: MessageCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    client: GatewayDep,
) -> dict[str, Any]:
    """Check the message against the gateway's rules, send or schedule it, and record it.

    Suppressed numbers (GET /v1/suppressions) are left out and listed in `suppressed`; when
    every number is suppressed nothing is sent (`422 all_numbers_suppressed`).
    `include_suppressed: true` sends to them anyway."""
    now = dt.datetime.now(dt.UTC)
    send_at = parse_instant("send_at", body.send_at, settings.zone)
    try:
        message = prepare_message(
            body.numbers,
            body.text,
            zone=settings.zone,
            now=now,
            send_at=send_at,
            language=body.language,
        )
    except InvalidMessage as exc:
        raise errors.InvalidParameters(errors=exc.errors) from None
    status_callback = None
    if body.status_callback is not None:
        if not settings.status_callback_secret.get_secret_value():
            raise invalid(
                "status_callback",
                "needs DLR_STATUS_CALLBACK_SECRET (a whsec_ secret) to sign its events",
            )
        status_callback = await checked_url(settings, body.status_callback, "status_callback")
    skipped: list[str] = []
    if not body.include_suppressed:
        suppressed = await suppressed_among(session, message.numbers)
        skipped = [mobile for mobile in message.numbers if mobile in suppressed]
        if skipped:
            get_state(request).metrics.sends_skipped.inc(len(skipped))
            log.info("%d suppressed numbers left out of a send", len(skipped))
        if len(skipped) == len(message.numbers):
            raise errors.AllNumbersSuppressed(
                "every number is suppressed; nothing was sent (include_suppressed: true "
                "sends to them anyway)",
                suppressed=skipped,
            )
        if skipped:
            kept = tuple(m for m in message.numbers if m not in suppressed)
            message = dataclasses.replace(message, numbers=kept)
    spend_budget(request, len(message.numbers))
    try:
        result = await client.send(message, settings.callback_url)
    except GatewayError as exc:
        log.warning("send refused: %s", exc.message)
        raise api_error(exc) from None
    first_check = (message.send_at or now) + settings.reconcile_after
    try:
        send = await record_send(
            session,
            message,
            result,
            created_at=now,
            next_check_at=first_check,
            status_callback=status_callback,
        )
        # Committed here rather than by SessionDep after the handler: the gateway has sent
        # the message, so the answer must say whether this service recorded it.
        await session.commit()
    except DuplicateSend:
        log.error(
            "the gateway reused the %s ID %s; the send is not recorded",
            result.type,
            result.batch_id,
        )
        raise errors.GatewayIdReused(
            f"the gateway accepted the send but gave it the ID {result.batch_id}, which an "
            f"earlier {result.type} send already has; this send is not recorded",
            batch_id=result.batch_id,
            type=result.type,
        ) from None
    except Exception as exc:
        log.error(
            "the gateway accepted %s send %s but recording it failed (%s)",
            result.type,
            result.batch_id,
            type(exc).__name__,
        )
        raise errors.Unavailable(
            f"the gateway accepted the send (ID {result.batch_id}) but the database could not "
            "record it",
            batch_id=result.batch_id,
            type=result.type,
        ) from None
    log.info("%s send %s to %d numbers", result.type, result.batch_id, len(message.numbers))
    response.headers["location"] = f"/v1/messages/{send.batch_id}?type={send.type}"
    return {**await message_view(session, send), "suppressed": skipped}


@router.get(
    "/messages/{batch_id}",
    response_model=MessageRead,
    operation_id="read_message",
    summary="One send",
    responses=error_responses(401, 404, 409, 422),
)
async def read_message(
    session: SessionDep, batch_id: BatchPath, type: TypeQuery = None
) -> dict[str, Any]:
    """Show a recorded send and how many of its numbers still wait for a final report."""
    check_identifier("batch_id", batch_id)
    return await message_view(session, await get_send(session, batch_id, type))


@router.delete(
    "/messages/{batch_id}",
    response_model=MessageRead,
    operation_id="cancel_message",
    summary="Cancel a scheduled send",
    dependencies=[Depends(require_send_key)],
    responses={**error_responses(401, 403, 404, 409, 422), **GATEWAY_RESPONSES},
)
async def cancel_message(
    session: SessionDep, client: GatewayDep, batch_id: BatchPath, type: TypeQuery = None
) -> dict[str, Any]:
    """Cancel a scheduled send at the gateway (SendTimeSMS D=Y) before it goes out."""
    check_identifier("batch_id", batch_id)
    sends = await find_sends(session, batch_id, type)
    if not sends:
        raise errors.NotFound(f"no recorded send with ID {batch_id!r}")
    scheduled = next((s for s in sends if s.type == "scheduled"), None)
    if scheduled is None:
        raise errors.NotCancellable("an immediate send cannot be cancelled")
    if scheduled.cancelled_at is not None:
        raise errors.NotCancellable("this scheduled send is already cancelled")
    now = dt.datetime.now(dt.UTC)
    if scheduled.send_at is not None and scheduled.send_at <= now:
        raise errors.NotCancellable("this scheduled send has already gone out")
    try:
        await client.cancel(batch_id)
    except GatewayError as exc:
        log.warning("cancel of %s refused: %s", batch_id, exc.message)
        raise api_error(exc) from None
    if not await mark_cancelled(session, scheduled, now):
        # Another request cancelled it while the gateway answered this one.
        raise errors.NotCancellable("this scheduled send is already cancelled")
    log.info("scheduled send %s cancelled", batch_id)
    return await message_view(session, scheduled)
