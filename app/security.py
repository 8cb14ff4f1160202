"""Who may call: callback tokens, source networks behind trusted proxies, API keys."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence

from fastapi import Request

from app.errors import Unauthorized
from app.settings import IPNetwork


def matches_secret(given: str, secrets: Sequence[str]) -> bool:
    """Compare against every configured secret in constant time, without short-circuit."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given_bytes, secret.encode("utf-8"))
    return found


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Iterable[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in nets)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> str:
    """The caller's address: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted hop of X-Forwarded-For (read right to left, so a client cannot forge it)."""
    peer_ip = _address(peer or "")
    if peer_ip is None:
        return peer or ""
    if not forwarded_for or not trusted_proxies or not _in(peer_ip, trusted_proxies):
        return str(peer_ip)
    hops = [hop for hop in (_address(h) for h in forwarded_for.split(",")) if hop is not None]
    for hop in reversed(hops):
        if not _in(hop, trusted_proxies):
            return str(hop)
    return str(hops[0]) if hops else str(peer_ip)


def address_allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    """True when no allowlist is set or the address lies in one of its networks."""
    if not networks:
        return True
    ip = _address(address)
    return ip is not None and _in(ip, networks)


def require_api_key(request: Request) -> None:
    """Let a /v1 request through when DLR_API_KEYS is empty or it carries one of the keys."""
    keys: list[str] = request.app.state.settings.api_keys
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
