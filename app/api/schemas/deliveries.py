"""Models of the deliveries: one delivery, its history, a page of them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.api.schemas.common import ErrorRead, MessageType, Outcome, UtcTime

DELIVERY_EXAMPLE: JsonDict = {
    "msgid": "208217564",
    "batch_id": "123456",
    "mobile": "+886922161529",
    "type": "now",
    "status": "DELIVRD",
    "statuscode": 1,
    "outcome": "delivered",
    "final": True,
    "inconsistent": False,
    "done_at": "2003-05-22T05:48:50Z",
    "first_received_at": "2003-05-22T05:48:52Z",
    "last_received_at": "2003-05-22T05:49:10Z",
    "reports": 2,
}


class DeliveryRead(BaseModel):
    """The current state of one message: one msgid to one mobile."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"example": DELIVERY_EXAMPLE})

    msgid: str = Field(description="The carrier's id of this message")
    batch_id: str = Field(description="The ID of the send (the first one reported)")
    mobile: str = Field(description="E.164 number, `+886912345678`")
    type: MessageType = Field(description="`now` (immediate send) or `scheduled`")
    status: str = Field(description="Status word of the newest report, upper case")
    statuscode: int = Field(description="1 success, 0 failure, as the gateway sent it")
    outcome: Outcome
    final: bool = Field(description="False only for non-final words (ENROUTE)")
    inconsistent: bool = Field(description="statuscode contradicts the status word")
    done_at: UtcTime = Field(description="When the message reached this state (UTC)")
    first_received_at: UtcTime
    last_received_at: UtcTime
    reports: int = Field(description="Distinct reports received for this delivery")


class DeliveryPage(BaseModel):
    """One page of deliveries, newest `done_at` first."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"items": [DELIVERY_EXAMPLE], "next_cursor": "q1Z3...signed-cursor"}
        }
    )

    items: list[DeliveryRead]
    next_cursor: str | None = Field(
        description="Pass it as `cursor`, with the same filters, for the next page; "
        "null on the last page"
    )


class HistoryItem(BaseModel):
    """One report of a delivery, as received."""

    model_config = ConfigDict(from_attributes=True)

    batch_id: str
    status: str
    statuscode: int
    outcome: Outcome
    inconsistent: bool
    done_at: UtcTime
    received_at: UtcTime
    source: str = Field(description="`callback`, or `poll` when learnt from CheckSMS")


class DeliveryDetail(DeliveryRead):
    """A delivery with every report that named it, oldest received first."""

    history: list[HistoryItem]


class AmbiguousRead(ErrorRead):
    mobiles: list[str]
