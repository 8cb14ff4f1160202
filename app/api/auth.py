"""Who may call /v1: the API keys, as a dependency every /v1 router is mounted with."""

from __future__ import annotations

from fastapi import Request

from app.core.errors import Unauthorized
from app.state import SettingsDep
from app.web.security import matches_secret


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Let a /v1 request through when DLR_API_KEYS is empty or it carries one of the keys."""
    keys = settings.api_keys
    if not keys:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = credentials.strip()
    if not given or not matches_secret(given, keys):
        raise Unauthorized(
            "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>",
            headers={"WWW-Authenticate": 'Bearer realm="mboxii-dlr"'},
        )
