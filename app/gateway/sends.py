"""Outbound records: the sends this service made, their numbers, and what is still unreported."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Ambiguous, NotFound
from app.db.engine import insert_for
from app.db.models import SEND_NUMBERS, SENDS, Delivery, Send, SendNumber
from app.gateway import OutboundMessage, SendResult


class DuplicateSend(Exception):
    """The gateway returned an ID already recorded for a send of the same type."""


async def record_send(
    session: AsyncSession,
    message: OutboundMessage,
    result: SendResult,
    *,
    created_at: dt.datetime,
    next_check_at: dt.datetime,
    status_callback: str | None = None,
) -> Send:
    """Store a send the gateway accepted, with its numbers, in the caller's transaction."""
    stmt = (
        insert_for(session.get_bind().dialect, SENDS)
        .values(
            batch_id=result.batch_id,
            type=result.type,
            language=message.language,
            text=message.text,
            send_at=message.send_at,
            gateway_answer=result.raw,
            created_at=created_at,
            next_check_at=next_check_at,
            checks=0,
            check_errors=0,
            status_callback=status_callback,
        )
        .on_conflict_do_nothing(index_elements=["batch_id", "type"])
        .returning(SENDS.c.id)
    )
    send_id = (await session.execute(stmt)).scalar_one_or_none()
    if send_id is None:  # nothing was written
        raise DuplicateSend(result.batch_id)
    await session.execute(
        insert_for(session.get_bind().dialect, SEND_NUMBERS),
        [
            {"send_id": send_id, "mobile": mobile, "position": i}
            for i, mobile in enumerate(message.numbers)
        ],
    )
    send = await session.get(Send, send_id)
    assert send is not None
    return send


async def find_sends(session: AsyncSession, batch_id: str, type: str | None = None) -> list[Send]:
    """The sends with this gateway ID (one per type at most), immediate first."""
    stmt = select(Send).where(Send.batch_id == batch_id)
    if type is not None:
        stmt = stmt.where(Send.type == type)
    return list((await session.scalars(stmt.order_by(Send.type))).all())


async def get_send(session: AsyncSession, batch_id: str, type: str | None = None) -> Send:
    """The send with this ID; 404 if none, 409 if an immediate and a scheduled one share it."""
    sends = await find_sends(session, batch_id, type)
    if not sends:
        raise NotFound(f"no recorded send with ID {batch_id!r}")
    if len(sends) > 1:
        raise Ambiguous(
            "an immediate and a scheduled send share this ID; pass type",
            types=[s.type for s in sends],
        )
    return sends[0]


async def send_exists(session: AsyncSession, batch_id: str, type: str | None = None) -> bool:
    """Whether a recorded send names this ID (for the batch summary's 404)."""
    return bool(await find_sends(session, batch_id, type))


async def numbers_of(session: AsyncSession, send_id: int) -> list[str]:
    """The numbers of a send in E.164, in the order given."""
    stmt = (
        select(SendNumber.mobile).where(SendNumber.send_id == send_id).order_by(SendNumber.position)
    )
    return list((await session.scalars(stmt)).all())


def _delivery_of(final_only: bool) -> Any:
    """EXISTS: a delivery of the send's ID and type to the number (a final one if asked)."""
    condition = and_(
        Delivery.batch_id == Send.batch_id,
        Delivery.type == Send.type,
        Delivery.mobile == SendNumber.mobile,
    )
    if final_only:
        condition = and_(condition, Delivery.final)
    return exists().where(condition)


async def unreported_numbers(session: AsyncSession, batch_id: str, type: str | None = None) -> int:
    """Numbers sent under this ID (of either type when `type` is None) without any report.

    The batch summary adds these to `pending`: numbers with a non-final report are already
    counted there as non-final deliveries. Cancelled sends sent nothing and count 0."""
    stmt = (
        select(func.count())
        .select_from(SendNumber)
        .join(Send, Send.id == SendNumber.send_id)
        .where(Send.batch_id == batch_id, Send.cancelled_at.is_(None), ~_delivery_of(False))
    )
    if type is not None:
        stmt = stmt.where(Send.type == type)
    return int((await session.execute(stmt)).scalar_one())


async def unreported_since(session: AsyncSession, since: dt.datetime) -> int:
    """Numbers of the sends made since `since` (not cancelled) without any report yet."""
    stmt = (
        select(func.count())
        .select_from(SendNumber)
        .join(Send, Send.id == SendNumber.send_id)
        .where(Send.created_at >= since, Send.cancelled_at.is_(None), ~_delivery_of(False))
    )
    return int((await session.execute(stmt)).scalar_one())


async def pending_numbers(session: AsyncSession, send_id: int) -> list[str]:
    """Numbers of one send that have no final report yet (what reconciliation asks about)."""
    stmt = (
        select(SendNumber.mobile)
        .join(Send, Send.id == SendNumber.send_id)
        .where(SendNumber.send_id == send_id, ~_delivery_of(True))
        .order_by(SendNumber.position)
    )
    return list((await session.scalars(stmt)).all())


def awaiting_final_report() -> Any:
    """EXISTS, for a statement on sends: a number of the send without a final report yet."""
    return exists().where(SendNumber.send_id == Send.id, ~_delivery_of(True)).correlate(Send)


async def mark_cancelled(session: AsyncSession, send: Send, at: dt.datetime) -> bool:
    """Record a cancellation and stop reconciling, in the caller's transaction; False if
    it was cancelled meanwhile."""
    result = await session.execute(
        update(Send)
        .where(Send.id == send.id, Send.cancelled_at.is_(None))
        .values(cancelled_at=at, next_check_at=None)
    )
    await session.refresh(send)
    return bool(getattr(result, "rowcount", 0))
