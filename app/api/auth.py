"""Who may call /v1: the API keys, as a dependency every /v1 router is mounted with."""

from __future__ import annotations

from fastapi import Request

from app.core.errors import TooManyRequests, Unauthorized
from app.state import StateDep
from app.web.security import caller_address, client_key, matches_secret


async def require_api_key(request: Request, state: StateDep) -> None:
    """Let a /v1 request through when DLR_API_KEYS is empty or it carries one of the keys.

    Refused keys count against the caller's address (app.db.throttle, shared with the
    dashboard's login form); a locked address gets 429 whatever key it sends. A request
    without a key costs no look at the throttle."""
    settings = state.settings
    if not settings.api_keys:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = credentials.strip()
    if not given:  # guesses nothing: answered without a look at the throttle
        raise _unauthorized()
    throttle = state.key_throttle
    client = client_key(caller_address(request.scope, settings.trusted_proxies))
    wait = await throttle.retry_after(client)
    if wait is not None:
        raise TooManyRequests(
            "too many refused API keys from this address; try again later",
            headers={"Retry-After": str(wait)},
        )
    if not matches_secret(given, settings.api_keys):
        await throttle.failed(client, "api")
        raise _unauthorized()


def _unauthorized() -> Unauthorized:
    return Unauthorized(
        "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>",
        headers={"WWW-Authenticate": 'Bearer realm="mboxii-dlr"'},
    )
