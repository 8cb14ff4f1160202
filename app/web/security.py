"""Who is calling: secrets compared in constant time, caller addresses behind trusted proxies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from pydantic import SecretStr
from starlette.types import Scope

from app.core.setting_types import IPNetwork


def matches_secret(given: str, secrets: Sequence[SecretStr]) -> bool:
    """Compare against every configured secret in constant time, without short-circuit."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given_bytes, secret.get_secret_value().encode("utf-8"))
    return found


def key_id(key: str) -> str:
    """A short public name of a key: says which key did something, reveals nothing of it."""
    return hashlib.sha256(b"mboxii-dlr key id\x00" + key.encode()).hexdigest()[:12]


# The longest address spelling with a port: [ffff:...:255.255.255.255]:65535 (53 characters).
MAX_ADDRESS_TEXT = 64
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if len(text) > MAX_ADDRESS_TEXT:  # never an address, and kept out of the cache
        return None
    return _parse_address(text)


@lru_cache(maxsize=4096)  # callers are a handful of gateway and proxy addresses
def _parse_address(text: str) -> IPAddress | None:
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None  # a zone index means nothing beyond the proxy's own host
    return address


def _in(address: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in nets)


UNKNOWN_ADDRESS = "unknown"


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> str:
    """The caller's address: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted hop of X-Forwarded-For (read right to left, so a client cannot forge it)."""
    peer_ip = _address(peer or "")
    if peer_ip is None:
        return UNKNOWN_ADDRESS
    if not forwarded_for or not trusted_proxies or not _in(peer_ip, trusted_proxies):
        return str(peer_ip)
    hop = peer_ip
    for text in reversed(forwarded_for.split(",")):
        if not text.strip():
            continue
        parsed = _address(text)
        if parsed is None:
            # Whatever stands left of a hop our proxy could not name was written by someone
            # we do not trust; the caller is unknown (and outside every allowlist).
            return UNKNOWN_ADDRESS
        hop = parsed
        if not _in(hop, trusted_proxies):
            return str(hop)
    return str(hop)  # every hop is one of our proxies: the leftmost is the caller


def forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Every X-Forwarded-For header line joined in order, as RFC 9110 reads repeated fields."""
    values = [value.decode("latin-1") for name, value in headers if name == b"x-forwarded-for"]
    return ",".join(values) if values else None


def caller_address(scope: Scope, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The address of the request's caller, as `client_address` decides it."""
    client = scope.get("client")
    return client_address(
        client[0] if client else None, forwarded_for(scope["headers"]), trusted_proxies
    )


def address_allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    """True when no allowlist is set or the address lies in one of its networks."""
    if not networks:
        return True
    ip = _address(address)
    return ip is not None and _in(ip, networks)


def client_key(address: str) -> str:
    """Whom a refused API key is counted against: the caller's address, or for IPv6 its
    /64, the share of one subscriber, who may rotate through all of it at will."""
    ip = _address(address)
    if ip is None:
        return address[:MAX_ADDRESS_TEXT]  # "unknown": every such caller shares one count
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
