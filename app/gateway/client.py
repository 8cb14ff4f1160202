"""A typed async client for SendSMS, SendTimeSMS and CheckSMS, on httpx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from app import __version__
from app.core.settings import Settings
from app.gateway.answers import (
    CheckResult,
    parse_check_answer,
    parse_plain_answer,
    parse_send_answer,
)
from app.gateway.errors import (
    GatewayError,
    GatewayTimeout,
    GatewayUnavailable,
    Interface,
    NotSentYet,
    UnreadableAnswer,
)
from app.gateway.rules import OutboundMessage, SendType

log = logging.getLogger("mboxii_dlr.gateway")
T = TypeVar("T")

#: The longest answer read from the gateway. Real answers are a few dozen bytes (CheckSMS: a
#: line per number, 80 at most); beyond this the rest is not read at all.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the gateway said to a send: its ID (`batch_id` here) and the raw answer."""

    batch_id: str
    type: SendType
    interface: Interface
    raw: str


@dataclass(frozen=True, slots=True)
class ScheduledState:
    """SendTimeSMS D=C: whether a scheduled send has gone out, and the raw answer."""

    sent: bool
    raw: str


class MboxiiClient:
    """One gateway account. Every call is a form POST (UTF-8), so the password never sits in
    a URL; it is also kept out of logs, reprs, errors and the raw answers this returns."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: Callable[[Interface, str], None] | None = None,
    ) -> MboxiiClient:
        """The client of the configured account (DLR_MBOXII_*)."""
        return cls(
            settings.mboxii_base_url,
            settings.mboxii_cid,
            settings.mboxii_cpw,
            zone=settings.zone,
            timeout=settings.mboxii_timeout_seconds,
            transport=transport,
            observe=observe,
        )

    def __init__(
        self,
        base_url: str,
        cid: str,
        cpw: SecretStr,
        *,
        zone: ZoneInfo,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: Callable[[Interface, str], None] | None = None,
    ) -> None:
        """`observe(interface, result)` hears of every call: `ok` or the error's name."""
        self.observe = observe
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.cid = cid
        self._cpw = cpw
        self.zone = zone
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            # Uncompressed answers: the size cap then bounds memory too.
            headers={"user-agent": f"mboxii-dlr/{__version__}", "accept-encoding": "identity"},
        )

    def __repr__(self) -> str:
        return f"MboxiiClient(base_url={self.base_url!r}, cid={self.cid!r}, cpw='**********')"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> MboxiiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def _scrub(self, text: str) -> str:
        secret = self._cpw.get_secret_value()
        return text.replace(secret, "**********") if secret else text

    async def _request(
        self, interface: Interface, fields: dict[str, str], read: Callable[[str], T]
    ) -> T:
        """POST, read the answer with `read`, and tell `observe` how it went."""
        try:
            result = read(await self._post(interface, fields))
        except GatewayError as exc:
            if self.observe is not None:
                self.observe(interface, type(exc).__name__)
            raise
        if self.observe is not None:
            self.observe(interface, "ok")
        return result

    async def _post(self, interface: Interface, fields: dict[str, str]) -> str:
        data = {"CID": self.cid, "CPW": self._cpw.get_secret_value(), **fields}
        try:
            # One deadline for the whole exchange: httpx's own applies to each read, which a
            # gateway dribbling bytes would renew for ever.
            async with asyncio.timeout(self.timeout):
                status, body, encoding = await self._exchange(interface, data)
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise GatewayTimeout(
                f"{interface} did not answer in time ({type(exc).__name__})", interface=interface
            ) from None
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(
                f"{interface} is unreachable ({type(exc).__name__})", interface=interface
            ) from None
        if body is None:
            raise UnreadableAnswer(
                f"{interface} answered more than {MAX_ANSWER_BYTES // 1024} KiB; the rest was "
                "not read",
                interface=interface,
            )
        raw = self._scrub(body.decode(encoding, errors="replace"))
        if status != 200:
            raise GatewayUnavailable(
                f"{interface} answered HTTP {status}", interface=interface, raw=raw
            )
        log.debug("%s answered %r", interface, raw[:200])
        return raw

    async def _exchange(
        self, interface: Interface, data: dict[str, str]
    ) -> tuple[int, bytes | None, str]:
        """POST and read the answer: its status, its body (None when it passes
        MAX_ANSWER_BYTES, which stops the reading) and its text encoding."""
        async with self._http.stream("POST", f"{interface}.php", data=data) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    return response.status_code, None, ""
            return response.status_code, bytes(body), response.encoding or "utf-8"

    async def send(self, message: OutboundMessage, callback_url: str = "") -> SendResult:
        """Send now (SendSMS) or schedule (SendTimeSMS, when `send_at` is set)."""
        fields = {
            "L": message.gateway_language(),
            "N": message.gateway_numbers(),
            "M": message.text,
            "Value": callback_url,
        }
        interface: Interface = "SendSMS"
        if message.send_at is not None:
            interface = "SendTimeSMS"
            fields = {"T": message.gateway_time(self.zone), "D": "", **fields}

        def read(raw: str) -> SendResult:
            batch_id = parse_send_answer(interface, raw)
            return SendResult(batch_id=batch_id, type=message.type, interface=interface, raw=raw)

        return await self._request(interface, fields, read)

    async def cancel(self, batch_id: str) -> str:
        """Delete a scheduled send (SendTimeSMS D=Y); the raw answer on success."""

        def read(raw: str) -> str:
            parse_plain_answer("SendTimeSMS", raw)
            return raw

        return await self._request("SendTimeSMS", {"D": "Y", "ID": batch_id}, read)

    async def scheduled_sent(self, batch_id: str) -> ScheduledState:
        """Whether a scheduled send has gone out (SendTimeSMS D=C): 00 yes, 35 not yet."""

        def read(raw: str) -> ScheduledState:
            try:
                parse_plain_answer("SendTimeSMS", raw)
            except NotSentYet:
                return ScheduledState(sent=False, raw=raw)
            return ScheduledState(sent=True, raw=raw)

        return await self._request("SendTimeSMS", {"D": "C", "ID": batch_id}, read)

    async def check(self, batch_id: str, *, scheduled: bool) -> CheckResult:
        """The per-number states of a send (CheckSMS; `T=Time` for a scheduled one)."""
        fields = {"T": "Time" if scheduled else "", "ID": batch_id}
        return await self._request("CheckSMS", fields, parse_check_answer)
