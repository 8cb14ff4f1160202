"""A scripted stand-in for the gateway (httpx.MockTransport) and an app configured to use it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx

from app.main import create_app
from tests.conftest import make_settings

API_KEY = "test-api-key"
PUBLIC_URL = "https://dlr.example.com"
ACCOUNT = {
    "mboxii_cid": "acct",
    "mboxii_cpw": "gw-secret-pw",
    "public_url": PUBLIC_URL,
    "send_api_keys": [API_KEY],
    "callback_tokens": ["tok-1", "tok-2"],
    # tests ask many times in a row; the default spacing would only make them slow
    "reconcile_rate": 1000,
}


class FakeGateway:
    """Answers SendSMS and SendTimeSMS with `00,<next ID>` and CheckSMS from `checks`
    (ID -> answer text), unless `answers` (interface -> text or exception) says otherwise.
    Every request is kept in `requests` with its form fields."""

    def __init__(self, first_id: int = 500) -> None:
        self.ids = itertools.count(first_id)
        self.answers: dict[str, str | Exception | Callable[[dict[str, str]], str]] = {}
        self.checks: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def calls(self, interface: str) -> list[dict[str, str]]:
        return [fields for name, fields in self.requests if name == interface]

    def handler(self, request: httpx.Request) -> httpx.Response:
        interface = request.url.path.rsplit("/", 1)[-1].removesuffix(".php")
        fields = {k: v[0] for k, v in parse_qs(request.content.decode(), True).items()}
        self.requests.append((interface, fields))
        answer = self.answers.get(interface)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return httpx.Response(200, text=answer(fields))
        if answer is not None:
            return httpx.Response(200, text=answer)
        if interface == "CheckSMS":
            return httpx.Response(200, text=self.checks.get(fields["ID"], "21"))
        if fields.get("D") in ("Y", "C"):
            return httpx.Response(200, text="00")
        return httpx.Response(200, text=f"00,{next(self.ids)}")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


@asynccontextmanager
async def service(
    database_url: str,
    gateway: FakeGateway | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, FakeGateway]]:
    """The app with a gateway account whose requests go to `gateway` (or to `transport`,
    which may wrap it); the client sends the API key. The background reconciler is stopped
    so tests drive reconciliation."""
    gateway = gateway or FakeGateway()
    settings = make_settings(database_url, **{**ACCOUNT, **overrides})
    app = create_app(settings, gateway_transport=transport or gateway.transport())
    async with app.router.lifespan_context(app):
        await app.app_state.reconciler.stop()
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers={"x-api-key": API_KEY}
        ) as client:
            yield app, client, gateway
