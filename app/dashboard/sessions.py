"""Dashboard sessions: signed cookie tokens per API key, CSRF tokens, and the login check."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from itsdangerous import BadData, Signer, URLSafeSerializer
from pydantic import SecretStr

from app.core.settings import Settings
from app.db.revoked import is_revoked
from app.read.cursors import cursor_key
from app.state import get_state
from app.web.security import key_id

COOKIE = "dlr_dashboard"
COOKIE_PATH = "/dashboard"
LIFETIME_SECONDS = 12 * 3600
OPEN_KEY_ID = "open"  # the sessions of a dashboard without API keys
_SESSION_SALT = "mboxii-dlr dashboard session"
_CSRF_SALT = "mboxii-dlr dashboard csrf"
_MAX_TOKEN = 512


def _key_secret(key: str) -> bytes:
    # Derived from the key itself, so removing the key from DLR_API_KEYS voids its sessions.
    return hmac.new(b"mboxii-dlr dashboard session", key.encode(), hashlib.sha256).digest()


def _open_secret(settings: Settings) -> bytes:
    return hmac.new(b"mboxii-dlr dashboard open", cursor_key(settings), hashlib.sha256).digest()


def _secrets(settings: Settings) -> dict[str, bytes]:
    """Signing secret by key id: one per API key, or the open one when there are no keys."""
    if not settings.read_keys:
        return {OPEN_KEY_ID: _open_secret(settings)}
    keys = (k.get_secret_value() for k in settings.read_keys)
    return {key_id(key): _key_secret(key) for key in keys}


def _serializer(secret: bytes | list[bytes]) -> URLSafeSerializer:
    # A list of secrets: a token verifies when any of them signed it.
    return URLSafeSerializer(
        secret, salt=_SESSION_SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )


def _csrf(secret: bytes, session_id: str) -> str:
    signer = Signer(secret, salt=_CSRF_SALT, digest_method=hashlib.sha256)
    return signer.get_signature(session_id).decode("ascii")


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: which key opened it, until when, and its CSRF token."""

    key_id: str
    expires: int
    csrf: str
    token: str
    id: str  # random, names the session in the revocation list (app.db.revoked)
    new: bool = False  # made by this request: the response must set the cookie


def issue(settings: Settings, key: str | None, now: float | None = None) -> Session:
    """A new session for a key (None: the open dashboard)."""
    now = time.time() if now is None else now
    if key is None:
        kid, secret = OPEN_KEY_ID, _open_secret(settings)
    else:
        kid, secret = key_id(key), _key_secret(key)
    session_id = secrets.token_urlsafe(16)
    expires = int(now) + LIFETIME_SECONDS
    token = str(_serializer(secret).dumps({"k": kid, "e": expires, "s": session_id}))
    return Session(kid, expires, _csrf(secret, session_id), token, session_id, new=True)


def verify(settings: Settings, token: str | None, now: float | None = None) -> Session | None:
    """The session a cookie names, or None when it is forged, expired or its key is gone.
    Says nothing of logouts: `current_session` asks the revocation list too."""
    if not token or len(token) > _MAX_TOKEN:
        return None
    by_kid = _secrets(settings)
    try:
        payload: Any = _serializer(list(by_kid.values())).loads(token)
    except BadData:
        return None
    if not isinstance(payload, dict):
        return None
    kid, expires, session_id = payload.get("k"), payload.get("e"), payload.get("s")
    if not (isinstance(kid, str) and isinstance(expires, int) and isinstance(session_id, str)):
        return None
    secret = by_kid.get(kid)
    if secret is None:
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return Session(kid, expires, _csrf(secret, session_id), token, session_id)


def matching_key(given: str, keys: Sequence[SecretStr]) -> str | None:
    """The configured key equal to `given`, compared in constant time against every key."""
    found = None
    for key in keys:
        value = key.get_secret_value()
        if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), value.encode()):
            found = value
    return found


async def current_session(request: Request) -> Session | None:
    """The request's valid session, unless logged out; on an open dashboard, a new one when
    it has none."""
    state = get_state(request)
    settings = state.settings
    session = verify(settings, request.cookies.get(COOKIE))
    if session is not None and await is_revoked(state.engine, session.id):
        session = None
    if session is None and not settings.read_keys:
        session = issue(settings, None)
    return session


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https, directly or through a trusted proxy."""
    if request.url.scheme == "https":
        return True
    settings = get_state(request).settings
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if forwarded != "https" or request.client is None:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(peer in net for net in settings.trusted_proxies)


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site.

    Sec-Fetch-Site is the browser's own verdict and survives proxies that rewrite Host, so it
    decides when present; older browsers are judged by Origin against Host. Requests with
    neither (not from a browser) still need the session's CSRF token.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def csrf_ok(session: Session, given: object) -> bool:
    """The form's token belongs to this session."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())
