"""The simulated gateway's state and rules: its sends and their messages, the return codes
of its three interfaces, and the callbacks it makes to each send's URL. The HTTP side (the
answers' layouts) is simulator.app."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

import httpx

from simulator.config import SimulatorConfig

log = logging.getLogger("mboxii_dlr.simulator")

SendKind = Literal["now", "scheduled"]
#: A return code, and the value after it (the ID of a send) or nothing.
Reply = tuple[str, str]

_MOBILE_RE = re.compile(r"09\d{8}")
_FAILURES = (("UNDELIV", 0), ("EXPIRED", 0), ("REJECTD", 0))
MAX_NUMBERS = 80


@dataclass
class SimMessage:
    """One message of a send: its number, carrier id and true final state."""

    mobile: str
    msgid: str
    final_at: float  # epoch seconds, whole
    status: str
    statuscode: int
    dropped: bool = False
    callbacks: int = 0  # callbacks acknowledged with 200
    planned: list[dict[str, str]] = field(default_factory=list)  # every callback, copies too


@dataclass
class SimSend:
    id: str
    type: SendKind
    text: str
    language: str
    value: str
    send_time: float  # epoch seconds: now, or T
    messages: list[SimMessage]
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Listing:
    """CheckSMS's answer: the messages of `send` as they stand at `now`."""

    send: SimSend
    now: float


class GatewaySimulator:
    """The simulated gateway's state and its callback scheduler."""

    def __init__(
        self,
        config: SimulatorConfig,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.zone = ZoneInfo(config.timezone)
        self.random = random.Random(config.seed)
        first = config.first_id if config.first_id is not None else int(clock()) - 1_700_000_000
        # Two sequences that start together, so an immediate and a scheduled send can
        # share an ID, as the gateway's two kinds of send can.
        self.sequences: dict[SendKind, itertools.count[int]] = {
            "now": itertools.count(first),
            "scheduled": itertools.count(first),
        }
        self.msgids = itertools.count(first * 10_000)
        self.sends: dict[tuple[SendKind, str], SimSend] = {}
        self._queue: list[tuple[float, int, SimSend, SimMessage, dict[str, str], int]] = []
        self._order = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._callback_transport = callback_transport
        self._http: httpx.AsyncClient | None = None
        #: every CheckSMS request answered: (epoch seconds, the ID asked about), for tests and
        #: benchmarks that measure a deployment's rate of checks
        self.checks: list[tuple[float, str]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._http = httpx.AsyncClient(
            timeout=self.config.callback_timeout,
            transport=self._callback_transport,
            follow_redirects=False,
        )
        self._task = asyncio.create_task(self._deliver_forever(), name="simulator-callbacks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------ the interfaces

    def send_now(self, fields: dict[str, str]) -> Reply:
        """SendSMS.php: send now."""
        if (forced := self.forced("SendSMS")) is not None:
            return forced, ""
        if not self.authenticated(fields):
            return "20", ""
        if (code := self.check_message(fields, 140)) is not None:
            return code, ""
        send = self.create_send("now", fields, self.clock())
        return "00", send.id

    def send_later(self, fields: dict[str, str]) -> Reply:
        """SendTimeSMS.php: schedule (D empty), delete (D=Y) or check (D=C)."""
        if (forced := self.forced("SendTimeSMS")) is not None:
            return forced, ""
        if not self.authenticated(fields):
            return "20", ""
        action = fields.get("D", "").strip().upper()
        if action in ("Y", "C"):
            send = self.sends.get(("scheduled", fields.get("ID", "").strip()))
            if send is None or send.cancelled:
                return "25", ""
            gone = send.send_time <= self.clock()
            if action == "C":
                return ("00" if gone else "35"), ""
            if gone:
                return "25", ""
            send.cancelled = True
            log.info("scheduled send %s cancelled", send.id)
            return "00", ""
        if action:
            return "01", ""
        code, send_time = self._schedule_time(fields.get("T", "").strip())
        if code is not None:
            return code, ""
        if (code := self.check_message(fields, 160)) is not None:
            return code, ""
        send = self.create_send("scheduled", fields, send_time)
        return "00", send.id

    def check(self, fields: dict[str, str]) -> Reply | Listing:
        """CheckSMS.php: the send whose messages to list, or the return code that refuses
        the request."""
        self.checks.append((self.clock(), fields.get("ID", "").strip()))
        if (forced := self.forced("CheckSMS")) is not None:
            return forced, ""
        if not self.authenticated(fields):
            return "20", ""
        query = fields.get("T", "").strip()
        if query.lower() not in ("", "time"):
            return "22", ""
        kind: SendKind = "scheduled" if query else "now"
        send = self.sends.get((kind, fields.get("ID", "").strip()))
        if send is None or send.cancelled:
            return ("23" if kind == "scheduled" else "21"), ""
        now = self.clock()
        if send.send_time > now:
            return "24", ""
        return Listing(send, now)

    def forced(self, interface: str) -> str | None:
        return self.config.force_codes.get(interface) or None

    def _schedule_time(self, value: str) -> tuple[str | None, float]:
        if not value:
            return "21", 0.0
        if len(value) != 12 or not value.isdigit():
            return "26", 0.0
        try:
            local = dt.datetime.strptime(value, "%Y%m%d%H%M").replace(tzinfo=self.zone)
        except ValueError:
            return "27", 0.0
        if local.minute % 5:
            return "27", 0.0
        # A time in the slot already begun is sent at once; an older one is refused.
        if local.timestamp() < self.clock() - 300:
            return "27", 0.0
        return None, max(local.timestamp(), self.clock())

    # ------------------------------------------------------------ the rules

    def donetime(self, epoch: float) -> str:
        return dt.datetime.fromtimestamp(epoch, self.zone).strftime("%Y/%m/%d %H:%M:%S")

    def authenticated(self, fields: dict[str, str]) -> bool:
        cid, cpw = fields.get("CID", ""), fields.get("CPW", "")
        if not cid or not cpw:
            return False
        return self.config.accounts is None or self.config.accounts.get(cid) == cpw

    def check_message(self, fields: dict[str, str], english_limit: int) -> str | None:
        """The return code for bad L, N or M, or None when they are fine."""
        language = fields.get("L", "")
        if language not in ("", "E"):
            return "22"
        numbers = fields.get("N", "").strip()
        if not numbers:
            return "23"
        text = fields.get("M", "")
        if not text.strip():
            return "24"
        parts = [n.strip() for n in numbers.split(",")]
        if len(parts) > MAX_NUMBERS:
            return "31"
        if any(not _MOBILE_RE.fullmatch(n) for n in parts):
            return "32"
        if language == "E" and (not text.isascii() or len(text) > english_limit):
            return "24"
        if language == "" and len(text) > 70:
            return "24"
        return None

    def create_send(self, kind: SendKind, fields: dict[str, str], send_time: float) -> SimSend:
        cfg = self.config
        send_id = str(next(self.sequences[kind]))
        messages = []
        for mobile in (n.strip() for n in fields["N"].split(",")):
            # Whole seconds: donetime has no fraction, and CheckSMS must match the callback.
            final_at = float(math.ceil(send_time + self.random.uniform(*cfg.delay)))
            status, code = ("DELIVRD", 1)
            if self.random.random() < cfg.fail_rate:
                status, code = self.random.choice(_FAILURES)
            elif mobile in cfg.fail_numbers:
                # No draw here, so a seed gives every other message the fate it gives it
                # without fail_numbers.
                status, code = _FAILURES[0]
            messages.append(
                SimMessage(
                    mobile=mobile,
                    msgid=str(next(self.msgids)),
                    final_at=final_at,
                    status=status,
                    statuscode=code,
                    dropped=self.random.random() < cfg.drop_rate,
                )
            )
        send = SimSend(
            id=send_id,
            type=kind,
            text=fields["M"],
            language=fields.get("L", ""),
            value=fields.get("Value", "").strip(),
            send_time=send_time,
            messages=messages,
        )
        self.sends[(kind, send_id)] = send
        if send.value:
            for m in messages:
                self._plan_callbacks(send, m)
        log.info(
            "%s send %s to %d numbers (callbacks to %s)",
            kind,
            send_id,
            len(messages),
            "nowhere" if not send.value else "Value",
        )
        return send

    def _plan_callbacks(self, send: SimSend, m: SimMessage) -> None:
        """Queue the callbacks of one message: the final one, maybe copies and stragglers."""
        if m.dropped:
            return
        cfg = self.config
        fields = self.callback_fields(send, m, m.status, m.statuscode, m.final_at)
        self._push(m.final_at, send, m, fields)
        if self.random.random() < cfg.duplicate_rate:
            self._push(m.final_at + self.random.uniform(0.05, 0.5), send, m, fields)
        if self.random.random() < cfg.reorder_rate:
            earlier = m.final_at - self.random.randint(1, 30)
            if self.random.random() < 0.5:
                stale = self.callback_fields(send, m, "ENROUTE", 0, earlier)
            else:
                word, code = ("UNDELIV", 0) if m.statuscode == 1 else ("DELIVRD", 1)
                stale = self.callback_fields(send, m, word, code, earlier)
            # Arrives after the final report although it is dated before it.
            self._push(m.final_at + self.random.uniform(0.05, 0.5), send, m, stale)

    def callback_fields(
        self, send: SimSend, m: SimMessage, status: str, code: int, at: float
    ) -> dict[str, str]:
        return {
            "ID": send.id,
            "msgid": m.msgid,
            "type": "Now" if send.type == "now" else "dlv",
            "mobile": m.mobile,
            "donetime": self.donetime(at),
            "statuscode": str(code),
            "statusstr": status,
        }

    # ------------------------------------------------------------ callbacks

    def _push(
        self, due: float, send: SimSend, m: SimMessage, fields: dict[str, str], attempt: int = 0
    ) -> None:
        if attempt == 0:
            m.planned.append(fields)
        heapq.heappush(self._queue, (due, next(self._order), send, m, fields, attempt))
        self._wakeup.set()

    async def _deliver_forever(self) -> None:
        while True:
            self._wakeup.clear()
            now = self.clock()
            while self._queue and self._queue[0][0] <= now:
                _, _, send, m, fields, attempt = heapq.heappop(self._queue)
                if send.cancelled:
                    continue
                task = asyncio.create_task(self._deliver(send, m, fields, attempt))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            timeout = self._queue[0][0] - now if self._queue else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _deliver(
        self, send: SimSend, m: SimMessage, fields: dict[str, str], attempt: int
    ) -> None:
        assert self._http is not None
        try:
            if self.config.get_callbacks:
                response = await self._http.get(send.value, params=fields)
            else:
                response = await self._http.post(send.value, data=fields)
            ok = response.status_code == 200
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            ok, outcome = False, type(exc).__name__
        if ok:
            m.callbacks += 1
            return
        if attempt < self.config.callback_retries:
            # Like a real gateway, retry a callback that was not acknowledged.
            self._push(self.clock() + 2**attempt, send, m, fields, attempt + 1)
        log.warning(
            "callback for %s msgid %s failed (%s), attempt %d", send.id, m.msgid, outcome, attempt
        )
