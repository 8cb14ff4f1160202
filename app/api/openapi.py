"""The OpenAPI document made exact: parameters as sent on the wire, links between operations."""

from __future__ import annotations

from typing import Any

# Operation ids the links point at (set on the routes).
LINKS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    ("/v1/messages", "post", "201"): {
        "GetMessage": {
            "operationId": "read_message",
            "parameters": {"batch_id": "$response.body#/batch_id", "type": "$response.body#/type"},
            "description": "The send just made",
        },
        "CancelMessage": {
            "operationId": "cancel_message",
            "parameters": {"batch_id": "$response.body#/batch_id", "type": "$response.body#/type"},
            "description": "Cancel it (a scheduled send, before it goes out)",
        },
    },
    ("/v1/subscriptions", "post", "201"): {
        name: {
            "operationId": operation,
            "parameters": {"id": "$response.body#/id"},
            "description": description,
        }
        for name, operation, description in (
            ("GetSubscription", "read_subscription", "The subscription just made"),
            ("UpdateSubscription", "update_subscription", "Change it"),
            ("GetSubscriptionSecret", "read_subscription_secret", "Its signing secret"),
            ("RotateSubscriptionSecret", "rotate_subscription_secret", "A new secret"),
            ("DeleteSubscription", "delete_subscription", "Delete it"),
        )
    },
    ("/v1/events", "get", "200"): {
        "RetryEvent": {
            "operationId": "retry_event",
            "parameters": {"id": "$response.body#/items/0/id"},
            "description": "Send the newest event of the page again",
        },
    },
    ("/v1/rejected", "get", "200"): {
        "ReplayRejected": {
            "operationId": "replay_rejected",
            "parameters": {"id": "$response.body#/items/0/id"},
            "description": "Replay the newest quarantined request of the page",
        },
    },
}


def _wire_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the `null` of an optional value: a query parameter is
    left out or sent as text, never null. Keywords beside `anyOf` join the remaining type."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [option for option in options if option.get("type") != "null"]
    if len(kept) != 1 or len(kept) == len(options):
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**kept[0], **rest}


def refine(document: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they travel, and the links that let a client (or a stateful test)
    follow a send to its reading and cancelling, and a quarantine page to a replay."""
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if "schema" in parameter:
                    parameter["schema"] = _wire_schema(parameter["schema"])
            for status, response in operation.get("responses", {}).items():
                links = LINKS.get((path, method, status))
                if links is not None:
                    response["links"] = links
    return document
