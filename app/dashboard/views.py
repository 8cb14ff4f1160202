"""Presentation helpers of the dashboard: templates, static files, times and masked numbers."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import mimetypes
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined

from app.core.mobiles import mask_mobile, mask_numbers, national
from app.core.settings import Settings
from app.read.cursors import cursor_key

# The value of a field named mobile, in a query string, form body or JSON body: masked
# whatever it holds, as it may be a number in a spelling no pattern knows.
_MOBILE_FIELD = re.compile(r"""(?i)(\bmobile\b"?\s*[=:]\s*)("[^"]*"|[^&"',}\s]+)""")


def _mask_field(match: re.Match[str]) -> str:
    name, value = match.groups()
    if value.startswith('"'):
        return f'{name}"{mask_mobile(value[1:-1])}"'
    return name + mask_mobile(unquote_plus(value))


def mask_text(text: str) -> str:
    """Raw request text with every mobile number masked (quarantined bodies and queries)."""
    return mask_numbers(_MOBILE_FIELD.sub(_mask_field, text))


def delivery_ref(settings: Settings, mobile: str) -> str:
    """An opaque handle for a number in URLs, so links never carry the number itself."""
    digest = hmac.new(cursor_key(settings), b"ref\x00" + mobile.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()[:9]).decode()


def number_url(settings: Settings, mobile: str, **params: str) -> str:
    """The dashboard page of a number (E.164): the masked number and an opaque handle."""
    query = urlencode({"ref": delivery_ref(settings, mobile), **params})
    return f"/dashboard/numbers/{quote(mask_mobile(mobile), safe='*')}?{query}"


def local_time(value: dt.datetime | None, zone: ZoneInfo) -> str:
    return "\u2013" if value is None else f"{value.astimezone(zone):%Y-%m-%d %H:%M:%S}"


def utc_iso(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    media_type: str
    version: str


@cache
def static_files() -> dict[str, StaticFile]:
    """The files under static/, read once from the installed package."""
    files = {}
    for entry in (resources.files("app.dashboard") / "static").iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            body = entry.read_bytes()
            media_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if media_type.startswith("text/") or media_type.endswith(("javascript", "+xml")):
                media_type += "; charset=utf-8"
            version = hashlib.sha256(body).hexdigest()[:10]
            files[entry.name] = StaticFile(body, media_type, version)
    return files


def static_url(name: str) -> str:
    """The URL of a static file, versioned by its content so browsers may cache it long."""
    return f"/dashboard/static/{name}?v={static_files()[name].version}"


@cache
def environment() -> Environment:
    """Jinja with autoescaping on: quarantined bodies and ids are attacker-controlled text."""
    env = Environment(
        loader=PackageLoader("app.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_url"] = static_url
    env.filters["masked"] = mask_mobile
    env.filters["mask_text"] = mask_text
    env.filters["national"] = national
    env.filters["utc_iso"] = utc_iso
    return env


def render(name: str, context: dict[str, Any]) -> str:
    return environment().get_template(name).render(context)
