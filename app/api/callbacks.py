"""The gateway's callback as the OpenAPI document shows it, declared with FastAPI.

app.main.DlrApp hands every callback path to the lean endpoint (app.ingest.endpoint) before
FastAPI routes anything, so these routes are never called: they exist so that the document
is generated from code beside the endpoint's own answers instead of kept by hand."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.api.schemas.common import ErrorRead, FieldError
from app.core.paths import ROUTE

router = APIRouter(tags=["callback"])

CALLBACK_EXAMPLE: dict[str, JsonValue] = {
    "ID": "123456",
    "msgid": "208217564",
    "type": "Now",
    "mobile": "0922161529",
    "donetime": "2003/05/22 13:48:50",
    "statuscode": "1",
    "statusstr": "DELIVRD",
}


class CallbackFields(BaseModel):
    """One delivery report as the gateway sends it. Names match in any case; the query
    string fills fields the body lacks."""

    model_config = ConfigDict(json_schema_extra={"example": CALLBACK_EXAMPLE})

    ID: str = Field(max_length=64, description="The send's ID (batch)")
    msgid: str = Field(max_length=64, description="The carrier's message id")
    type: Literal["Now", "dlv"] = Field(description="Any case")
    mobile: str = Field(examples=["0922161529"])
    donetime: str = Field(
        description="YYYY/MM/DD HH:MM:SS, YYYY-MM-DD HH:MM:SS, YYYY/MM/DD HH:MM, "
        "YYYYMMDDHHMMSS, YYYYMMDDHHMM, YYMMDDhhmm or ISO 8601; without an offset it is in "
        "DLR_GATEWAY_TIMEZONE"
    )
    statuscode: Literal["0", "1"] = Field(description="Alias `status`")
    statusstr: str = Field(pattern=r"^[A-Za-z0-9_]{1,16}$")


class CallbackRejectedRead(BaseModel):
    """A callback that was kept in the quarantine instead of stored (see /v1/rejected)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "invalid_callback",
                "errors": [{"field": "mobile", "message": "is required"}],
                "rejected_id": 17,
            }
        }
    )

    error: Literal["invalid_callback", "unsupported_media_type", "storage_refused"]
    errors: list[FieldError]
    rejected_id: int


TokenPath = Annotated[
    str, Path(description="One of DLR_CALLBACK_TOKENS (or the bare path when none is set)")
]

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored, or the same report was stored before (body: DLR_CALLBACK_ACK)",
        "content": {"text/plain": {"schema": {"type": "string"}, "example": "OK"}},
    },
    403: {"model": ErrorRead, "description": "Source address outside DLR_CALLBACK_NETWORKS"},
    404: {"model": ErrorRead, "description": "Token missing or wrong; nothing stored"},
    413: {"model": ErrorRead, "description": "Body over DLR_MAX_BODY_BYTES"},
    415: {
        "model": CallbackRejectedRead,
        "description": "Body of another content type; quarantined",
    },
    422: {"model": CallbackRejectedRead, "description": "A field missing or invalid; quarantined"},
    500: {
        "model": CallbackRejectedRead,
        "description": "The database refused this valid report; quarantined",
    },
    503: {
        "model": ErrorRead,
        "description": "Storage unreachable or ingest saturated; retry after the Retry-After "
        "header",
    },
}
DESCRIPTION = (
    "The 200 is sent only after the report is committed; a report received again is "
    "acknowledged the same way and stored once."
)
BODY_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "application/json")


def _never_reached() -> Response:
    # DlrApp routes the callback paths to the endpoint before FastAPI; a request that got
    # here would mean that routing broke, which must not pass for an acknowledgement.
    raise RuntimeError("the callback path reached FastAPI instead of the callback endpoint")


@router.get(
    ROUTE,
    summary="Receive one delivery report (query string)",
    description=DESCRIPTION,
    operation_id="receive_callback_get",
    # A bare Response adds no media type of its own: the 200 is the text/plain documented
    # below, the errors are JSON.
    response_class=Response,
    responses=RESPONSES,
)
async def receive_callback_get(
    token: TokenPath, fields: Annotated[CallbackFields, Query()]
) -> Response:
    """Store one delivery report sent as a query string."""
    return _never_reached()


@router.post(
    ROUTE,
    summary="Receive one delivery report (form, multipart or JSON body)",
    description=DESCRIPTION,
    operation_id="receive_callback_post",
    # A bare Response adds no media type of its own: the 200 is the text/plain documented
    # below, the errors are JSON.
    response_class=Response,
    responses=RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                media: {
                    "schema": CallbackFields.model_json_schema(),
                    "example": CALLBACK_EXAMPLE,
                }
                for media in BODY_MEDIA_TYPES
            },
        }
    },
)
async def receive_callback_post(token: TokenPath) -> Response:
    """Store one delivery report sent as a form, a multipart form or JSON."""
    return _never_reached()
