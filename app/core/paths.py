"""The callback's URL paths, whose token is a secret every layer (logs, metrics) must recognise."""

from __future__ import annotations

PREFIX = "/callbacks/mboxii"
ROUTE = PREFIX + "/{token}"


def route_template(path: str) -> str | None:
    """The callback route a path belongs to (the token as `{token}`), or None."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    if rest in ("", "/"):
        return PREFIX
    if rest[0] != "/":
        return None
    return ROUTE


def token_of(path: str) -> str | None:
    """The token in a callback path: '' for the bare path, None for a path of another shape."""
    rest = path[len(PREFIX) :].strip("/") if path.startswith(PREFIX) else None
    if rest is None or "/" in rest:
        return None
    return rest
