"""What makes a configured secret weak or a network too wide: the checks production applies
to the settings at start (a development setup is only warned)."""

from __future__ import annotations

import base64
import binascii
import ipaddress

# Keys, tokens and secrets shorter than this can be guessed.
MIN_SECRET_LENGTH = 24
# The stand-ins of the deployment examples (deploy/example.env,
# deploy/kubernetes/secret.example.yaml) and the usual ones people type: production refuses a
# secret that is one of them, whatever its length. tests/test_security.py checks that every
# example value is caught.
PLACEHOLDER_PREFIXES = ("replace-me", "replace-with", "changeme", "change-me", "your-")
PLACEHOLDERS = frozenset(
    {"secret", "password", "changeit", "example", "demo", "demo-key", "test", "token", "key"}
)
GENERATE_HINT = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret

_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def is_placeholder(value: str) -> bool:
    """True for the stand-in values of the examples (`replace-me...`, `changeme`, ...)."""
    lowered = value.strip().lower()
    return lowered in PLACEHOLDERS or lowered.startswith(PLACEHOLDER_PREFIXES)


def webhook_key(secret: str) -> bytes | None:
    """The signing key of a `whsec_` secret (24 to 64 bytes), or None if it is not one."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if 24 <= len(key) <= 64 else None


def covers_everything(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """True for a network holding every address of its family (0.0.0.0/0, ::/0), or, for
    IPv6, every global unicast address (2000::/3): every client on the internet."""
    if network.prefixlen == 0:
        return True
    return isinstance(network, ipaddress.IPv6Network) and network.supernet_of(_GLOBAL_UNICAST)


def database_password(url: str) -> str | None:
    """The password a database URL carries, if any."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # the settings have refused such a URL already
        return None


def hide_password(url: str) -> str:
    """A database URL fit to show: its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "***"
