"""Security headers on the read API, operations endpoints and docs, as a pure ASGI middleware."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A JSON answer loads nothing, may not be framed, and is never a base for forms or links.
JSON_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
NO_STORE = (b"cache-control", b"no-store")

_TAG_RE = re.compile(r"<(script|link)\b([^>]*)>", re.IGNORECASE)
_INLINE_RE = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_ATTR_RE = re.compile(r'(\w+)="([^"]*)"')


def page_csp(html: str) -> str:
    """A Content-Security-Policy allowing exactly what an HTML page (the Swagger UI) loads:
    its scripts, stylesheets and icon ('self' for those this service serves, else by URL),
    its inline scripts by hash, requests back to this service for the OpenAPI document, and
    the data: images its CSS embeds."""
    scripts: list[str] = []
    styles: list[str] = []
    images: list[str] = ["data:"]
    for tag, attrs_text in _TAG_RE.findall(html):
        attrs = dict(_ATTR_RE.findall(attrs_text))
        if tag.lower() == "script" and "src" in attrs:
            scripts.append(_source(attrs["src"]))
        elif tag.lower() == "link" and "href" in attrs:
            rel = attrs.get("rel", "").lower()
            (styles if rel == "stylesheet" else images).append(_source(attrs["href"]))
    for code in _INLINE_RE.findall(html):
        digest = base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode()
        scripts.append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_unique(scripts)),
            "style-src " + " ".join(_unique(styles)),
            "img-src " + " ".join(_unique(images)),
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def _source(url: str) -> str:
    # A path alone is no CSP source expression: the same origin is written 'self'.
    return "'self'" if url.startswith("/") and not url.startswith("//") else url


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


class SecurityHeadersMiddleware:
    """Adds nosniff, DENY framing, no referrer and a strict CSP to every answer that does not
    set its own CSP, and `Cache-Control: no-store` to the API and operations answers."""

    def __init__(self, app: ASGIApp, no_store_prefixes: tuple[str, ...] = ("/v1",)) -> None:
        self.app = app
        self.no_store_prefixes = no_store_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = scope["path"].startswith(self.no_store_prefixes)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in COMMON if h[0] not in present)
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", JSON_CSP.encode()))
                if no_store and b"cache-control" not in present:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
