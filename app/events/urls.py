"""Destination URLs: their accepted form, their origin, and the SSRF check of the addresses
a host resolves to (when a destination is written, and again before every connection)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache

import httpx

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadUrl(ValueError):
    """A URL this service does not send to; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go: scheme, host (ASCII, IDNA), port, the request target
    (path and query) and the Host header."""

    scheme: str
    host: str
    port: int
    target: str
    host_header: str

    @property
    def origin(self) -> str:
        return origin_text(self.scheme, self.host, self.port)


def origin_text(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def normalize_url(text: str) -> str:
    """The URL as it is stored and sent to: http or https, a host, no user info, no
    fragment, percent-encoded (httpx's parser). BadUrl says what is wrong."""
    text = text.strip()
    if not text or len(text) > MAX_URL_LENGTH:
        raise BadUrl(f"must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise BadUrl("must not contain spaces or control characters")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadUrl(f"is not a valid URL ({exc})") from None
    if url.scheme not in DEFAULT_PORTS:
        raise BadUrl("must be an http:// or https:// URL")
    if not url.raw_host:
        raise BadUrl("must name a host")
    if url.userinfo:
        raise BadUrl("must not carry a user name or password")
    if url.port is not None and not 0 < url.port <= 65535:
        raise BadUrl("must have a port from 1 to 65535")
    host = url.raw_host.decode("ascii", "replace")
    if not _is_ip(host) and not _valid_hostname(host):
        raise BadUrl("must name a host whose labels are 1 to 63 characters (253 in all)")
    url = url.copy_with(fragment=None)
    normalized = str(url)
    if len(normalized) > MAX_URL_LENGTH:
        raise BadUrl(f"must be at most {MAX_URL_LENGTH} characters once encoded")
    return normalized


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _valid_hostname(host: str) -> bool:
    """What a resolver can be asked: dot-separated labels of 1-63 characters (a final dot
    allowed), 253 in all. (Python's resolver call refuses others with a UnicodeError.)"""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(0 < len(label) <= 63 for label in labels)


@lru_cache(maxsize=4096)
def target_of(url: str) -> Target:
    """A stored (normalised) URL taken apart for sending."""
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    shown = f"[{host}]" if ":" in host else host
    host_header = (
        shown if parsed.port in (None, DEFAULT_PORTS[parsed.scheme]) else f"{shown}:{port}"
    )
    target = parsed.raw_path.decode("ascii") or "/"
    return Target(parsed.scheme, host, port, target, host_header)


def origin_of(url: str) -> str:
    return target_of(url).origin


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and reaches (mapped, 6to4, Teredo's client,
    NAT64, IPv4-compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden(address: IPAddress) -> bool:
    """Loopback, private, link-local, multicast, unspecified, or otherwise not globally
    routable (reserved, shared, documentation ranges): nothing a webhook should reach.
    An IPv6 address that carries an IPv4 one (::ffff:10.0.0.1, 6to4 2002:0a00:0001::,
    NAT64 64:ff9b::a00:1, ...) is refused when either is."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and forbidden(inner):
            return True
    return bool(address.is_multicast or not address.is_global)


class Unresolvable(OSError):
    """The host did not resolve (or not in time)."""


class Refused(Exception):
    """The host resolves to an address this service must not send to."""


async def resolve(host: str, port: int, *, allow_private: bool, seconds: float) -> list[str]:
    """The addresses to connect to for `host`, every one of them vetted: Refused when any
    is forbidden (a host with one private address is not trusted with the others),
    Unresolvable when there is none."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError, UnicodeError) as exc:
            # UnicodeError: a name the resolver call cannot even encode (an empty label)
            raise Unresolvable(f"{host} does not resolve ({exc.__class__.__name__})") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise Unresolvable(f"{host} does not resolve")
    if not allow_private:
        for text in addresses:
            # getaddrinfo may add a zone (fe80::1%eth0); it is link-local either way.
            if forbidden(ipaddress.ip_address(text.split("%", 1)[0])):
                raise Refused(
                    f"{host} resolves to {text}, a private, loopback, link-local, multicast or "
                    "unspecified address (set DLR_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
                )
    return addresses


async def check_destination(url: str, *, allow_private: bool, seconds: float) -> str:
    """Validate a destination as it is written: its form, and where its host resolves now.
    Returns the normalised URL; BadUrl for a bad one. A host that does not resolve (yet) is
    accepted: every attempt resolves and checks it again. With private addresses allowed
    there is nothing to check in the answer, so nothing is asked."""
    normalized = normalize_url(url)
    if allow_private:
        return normalized
    target = target_of(normalized)
    try:
        await resolve(target.host, target.port, allow_private=allow_private, seconds=seconds)
    except Refused as exc:
        raise BadUrl(str(exc)) from None
    except Unresolvable:
        pass
    return normalized
