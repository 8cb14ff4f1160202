"""Read API over deliveries."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.db import SessionDep
from app.errors import error_responses
from app.params import parse_mobile
from app.queries import get_delivery
from app.schemas import AmbiguousRead, DeliveryDetail

router = APIRouter(prefix="/v1", tags=["deliveries"])

MobileQuery = Annotated[
    str | None,
    Query(
        description="A Taiwan mobile number in any accepted form "
        "(`0912345678`, `+886912345678`, `886912345678`, `912345678`)",
        examples=["0922161529"],
    ),
]


@router.get(
    "/deliveries/{msgid:path}",
    response_model=DeliveryDetail,
    summary="One delivery with its history",
    responses={
        **error_responses(401, 404, 422),
        409: {"model": AmbiguousRead, "description": "Several numbers share this msgid"},
    },
)
async def read_delivery(
    session: SessionDep,
    msgid: Annotated[str, Path(description="The carrier's message id", examples=["208217564"])],
    mobile: MobileQuery = None,
) -> dict[str, Any]:
    """Show the current state of one message and every report received for it."""
    return await get_delivery(session, msgid, parse_mobile(mobile))
