"""Client-visible errors: one exception type each, raised by services, rendered by the API."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of every error the API answers on purpose."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str = "", headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message or self.code)
        self.message = message
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code}
        if self.message:
            body["message"] = self.message
        body.update(self.extra)
        return body


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Ambiguous(ApiError):
    status_code = 409
    code = "ambiguous"


class InvalidParameters(ApiError):
    status_code = 422
    code = "invalid_parameters"


class InvalidCallback(ApiError):
    """A stored callback request that still does not pass validation."""

    status_code = 422
    code = "invalid_callback"


class AllNumbersSuppressed(ApiError):
    """Every number of a send is suppressed (`suppressed` lists them); nothing was sent."""

    status_code = 422
    code = "all_numbers_suppressed"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """A valid key that may not do this (a read-only key sending)."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(ApiError):
    """Too many refused API keys from one client, or a send over its key's budget;
    `Retry-After` says how long to wait."""

    status_code = 429
    code = "too_many_requests"


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"


class NotCancellable(ApiError):
    status_code = 409
    code = "not_cancellable"


class SubscriptionDisabled(ApiError):
    """An event of a disabled or deleted subscription cannot be sent again."""

    status_code = 409
    code = "subscription_disabled"


class GatewayFailed(ApiError):
    """The gateway answered one of its error codes (`code`, `meaning`, `interface`)."""

    status_code = 502
    code = "gateway_error"


class GatewayUnreachable(ApiError):
    status_code = 502
    code = "gateway_unreachable"


class GatewayBadAnswer(ApiError):
    status_code = 502
    code = "gateway_bad_answer"


class GatewayIdReused(ApiError):
    status_code = 502
    code = "gateway_id_reused"


class GatewayTimedOut(ApiError):
    status_code = 504
    code = "gateway_timeout"
