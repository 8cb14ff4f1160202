"""Dashboard sessions: signed cookie tokens per API key, CSRF tokens, and the login check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from app.core.settings import Settings
from app.read.cursors import cursor_key
from app.web.security import key_id

COOKIE = "dlr_dashboard"
COOKIE_PATH = "/dashboard"
LIFETIME_SECONDS = 12 * 3600
OPEN_KEY_ID = "open"  # the sessions of a dashboard without API keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _key_secret(key: str) -> bytes:
    # Derived from the key itself, so removing the key from DLR_API_KEYS voids its sessions.
    return hmac.new(b"mboxii-dlr dashboard session", key.encode(), hashlib.sha256).digest()


def _open_secret(settings: Settings) -> bytes:
    return hmac.new(b"mboxii-dlr dashboard open", cursor_key(settings), hashlib.sha256).digest()


def _secrets(settings: Settings) -> dict[str, bytes]:
    """Signing secret by key id: one per API key, or the open one when there are no keys."""
    if not settings.read_keys:
        return {OPEN_KEY_ID: _open_secret(settings)}
    return {key_id(key): _key_secret(key) for key in settings.read_keys}


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: which key opened it, until when, and its CSRF token."""

    key_id: str
    expires: int
    csrf: str
    token: str
    new: bool = False  # made by this request: the response must set the cookie


def _session(secret: bytes, kid: str, expires: int, nonce: str, new: bool = False) -> Session:
    payload = f"{kid}.{expires}.{nonce}"
    csrf = _sign(secret, "csrf." + nonce)[:32]
    return Session(kid, expires, csrf, f"{payload}.{_sign(secret, payload)}", new)


def issue(settings: Settings, key: str | None, now: float | None = None) -> Session:
    """A new session for a key (None: the open dashboard)."""
    now = time.time() if now is None else now
    if key is None:
        kid, secret = OPEN_KEY_ID, _open_secret(settings)
    else:
        kid, secret = key_id(key), _key_secret(key)
    return _session(secret, kid, int(now) + LIFETIME_SECONDS, _b64(secrets.token_bytes(16)), True)


def verify(settings: Settings, token: str | None, now: float | None = None) -> Session | None:
    """The session a cookie names, or None when it is forged, expired or its key is gone."""
    if not token or len(token) > 256:
        return None
    parts = token.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    kid, expires_text, nonce, signature = parts
    secret = _secrets(settings).get(kid)
    if secret is None:
        return None
    expected = _sign(secret, f"{kid}.{expires_text}.{nonce}")
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    expires = int(expires_text)
    if expires <= (time.time() if now is None else now):
        return None
    return _session(secret, kid, expires, nonce)


def matching_key(given: str, keys: Sequence[str]) -> str | None:
    """The configured key equal to `given`, compared in constant time against every key."""
    found = None
    for key in keys:
        if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode()):
            found = key
    return found


def current_session(request: Request) -> Session | None:
    """The request's valid session; on an open dashboard, a new one when it has none."""
    settings: Settings = request.app.state.settings
    session = verify(settings, request.cookies.get(COOKIE))
    if session is None and not settings.read_keys:
        session = issue(settings, None)
    return session


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https, directly or through a trusted proxy."""
    if request.url.scheme == "https":
        return True
    settings: Settings = request.app.state.settings
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
