"""Who may call /v1 and /metrics: read keys and send keys, checked before any body is read."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Request, Security
from fastapi.routing import iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import ApiError, Forbidden, TooManyRequests, Unauthorized, Unavailable
from app.core.settings import Settings
from app.db.throttle import KeyThrottle
from app.state import AppState, get_state
from app.web.answers import refuse
from app.web.security import caller_address, client_key, key_id, matches_secret

# read: every key. manage (event subscriptions and their secrets, suppressions): every key
# while DLR_SEND_API_KEYS is empty (there is no other key to do it), else only its keys.
# send (send and cancel messages): only a key of DLR_SEND_API_KEYS.
Access = Literal["read", "manage", "send"]
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mboxii-dlr"'}
UNAUTHORIZED = "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"
FORBIDDEN = {
    "send": "this key may read but not send nor cancel: use a key of DLR_SEND_API_KEYS",
    "manage": (
        "this key may read but not manage event subscriptions nor suppressions: with "
        "DLR_SEND_API_KEYS set, only its keys may"
    ),
}
# Only documentation: the checks themselves run in ApiKeyMiddleware, before the body is read.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey")
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer")


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries in X-API-Key, else as an Authorization Bearer token."""
    given = headers.get(b"x-api-key")
    if given is None:
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        given = credentials.strip()
    return given.decode("latin-1") or None


def needed_scope(method: str, path: str, settings: Settings) -> Access | None:
    """What a request needs: `send` to send or cancel, `manage` to change subscriptions
    or suppressions, `read` for the rest of /v1 (and /metrics unless it is public), None
    for paths open to anyone."""
    reading = method in ("GET", "HEAD", "OPTIONS")
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "read" if reading else "send"
    # Suppressing or lifting decides where messages go; a subscription receives every
    # delivery with its number: making, changing or reading the secret of one.
    if path.startswith("/v1/suppressions/"):
        return "read" if reading else "manage"
    if path == "/v1/subscriptions" or path.startswith("/v1/subscriptions/"):
        return "read" if reading and not path.endswith("/secret") else "manage"
    if path == "/v1" or path.startswith("/v1/"):
        return "read"
    if path == "/metrics" and not settings.metrics_open:
        return "read"
    return None


def check_key(settings: Settings, key: str | None, needed: Access) -> str | None:
    """The key's public name when it may do what `needed` says (None: no keys configured).
    Raise Unauthorized for a missing or unknown key, Forbidden for a read key that sends
    (or manages, when send keys are configured)."""
    if not settings.read_keys:
        return None
    if not key or not matches_secret(key, settings.read_keys):
        raise Unauthorized(UNAUTHORIZED, headers=CHALLENGE)
    if needed != "read" and not may(settings, key, needed):
        raise Forbidden(FORBIDDEN[needed])
    return key_id(key)


def may(settings: Settings, key: str, needed: Access) -> bool:
    """Whether a known key may do what `needed` says (see Access)."""
    if needed == "read" or (needed == "manage" and not settings.send_api_keys):
        return True
    return matches_secret(key, settings.send_api_keys)


async def authorize(
    scope: Scope, settings: Settings, throttle: KeyThrottle | None, needed: Access
) -> str | None:
    """check_key, with refused keys counted against the caller (app.db.throttle, shared
    with the dashboard's login form): a locked caller gets 429 whatever key it sends. A
    request without a key costs no look at the throttle."""
    if not settings.read_keys:
        return None
    key = presented_key(dict(scope["headers"]))
    if not key or throttle is None:  # guesses nothing: answered without the throttle
        return check_key(settings, key, needed)
    client = client_key(caller_address(scope, settings.trusted_proxies))
    wait = await throttle.retry_after(client)
    if wait is not None:
        raise TooManyRequests(
            "too many refused API keys from this address; try again later",
            headers={"Retry-After": str(wait)},
        )
    try:
        return check_key(settings, key, needed)
    except Unauthorized:
        await throttle.failed(client, "api")
        raise


def name_route(scope: Scope) -> None:
    """Put the route the request would have reached in the scope, so that metrics and the
    access log name a refused request by its template, never by its path (which holds ids)."""
    router = getattr(scope.get("app"), "router", None)
    for context in iter_route_contexts(router.routes if router is not None else []):
        match, _ = context.original_route.matches(scope)
        if match is not Match.NONE:
            scope["route"] = context.original_route
            return


class ApiKeyMiddleware:
    """Refuses a /v1 request without a valid key (401), from a locked caller (429) or sending
    with a read-only key (403) before the application reads its body, so a malformed body
    says nothing to a stranger. The key's public name goes to `scope["state"]["api_key"]`
    for the send budget."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.settings = state.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = needed_scope(scope["method"], scope["path"], self.settings)
        if needed is not None:
            # The throttle exists while the lifespan runs (None before start-up).
            throttle = getattr(self.state, "key_throttle", None)
            try:
                name = await authorize(scope, self.settings, throttle, needed)
            except ApiError as exc:
                await self._refuse(scope, receive, send, exc)
                return
            except (SQLAlchemyError, OSError, TimeoutError):
                # The throttle's database is away: the exception handlers lie inside this
                # middleware, so answer as they would.
                retry = {"Retry-After": str(self.settings.retry_after_seconds)}
                unavailable = Unavailable("the database is unreachable; retry later", retry)
                await self._refuse(scope, receive, send, unavailable)
                return
            scope.setdefault("state", {})["api_key"] = name
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ApiError) -> None:
        name_route(scope)
        extra = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        await refuse(
            send,
            receive,
            status=exc.status_code,
            payload=exc.body(),
            request_headers=dict(scope["headers"]),
            headers=extra,
        )


ApiKeyDoc = Annotated[str | None, Security(API_KEY_HEADER)]
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def require_api_key(request: Request, _key: ApiKeyDoc, _bearer: BearerDoc) -> None:
    """Check again, per route, what ApiKeyMiddleware checked (a route mounted without the
    middleware stays guarded); the parameters put the two schemes in the OpenAPI document."""
    check_key(get_state(request).settings, presented_key(dict(request.scope["headers"])), "read")


def require_send_key(request: Request, _key: ApiKeyDoc, _bearer: BearerDoc) -> None:
    """As require_api_key, for the routes that send or cancel."""
    check_key(get_state(request).settings, presented_key(dict(request.scope["headers"])), "send")


def require_manage_key(request: Request, _key: ApiKeyDoc, _bearer: BearerDoc) -> None:
    """As require_api_key, for the routes that suppress or lift."""
    headers = dict(request.scope["headers"])
    check_key(get_state(request).settings, presented_key(headers), "manage")
