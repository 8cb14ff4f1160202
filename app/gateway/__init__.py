"""The MboxII gateway's send, schedule and check interfaces: client, rules, return codes."""

from app.gateway.answers import CheckResult, CheckStatus, parse_check_answer, parse_send_answer
from app.gateway.client import MboxiiClient, ScheduledState, SendResult
from app.gateway.errors import (
    CODES,
    GatewayError,
    GatewayRefused,
    GatewayTimeout,
    GatewayUnavailable,
    Interface,
    NotSentYet,
    RecordNotFound,
    UnreadableAnswer,
    refusal,
)
from app.gateway.rules import (
    InvalidMessage,
    Language,
    OutboundMessage,
    SendType,
    gateway_mobile,
    prepare_message,
)

__all__ = [
    "CODES",
    "CheckResult",
    "CheckStatus",
    "GatewayError",
    "GatewayRefused",
    "GatewayTimeout",
    "GatewayUnavailable",
    "Interface",
    "InvalidMessage",
    "Language",
    "MboxiiClient",
    "NotSentYet",
    "OutboundMessage",
    "RecordNotFound",
    "ScheduledState",
    "SendResult",
    "SendType",
    "UnreadableAnswer",
    "gateway_mobile",
    "parse_check_answer",
    "parse_send_answer",
    "prepare_message",
    "refusal",
]
