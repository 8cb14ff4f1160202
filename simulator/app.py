"""A simulator of the MboxII gateway: its three interfaces, and callbacks to each send's URL."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("mboxii_dlr.simulator")

AnswerFormat = Literal["comma", "space", "newline", "equals", "colon", "html"]
ANSWER_FORMATS: tuple[AnswerFormat, ...] = ("comma", "space", "newline", "equals", "colon", "html")
SendKind = Literal["now", "scheduled"]

_MOBILE_RE = re.compile(r"09\d{8}")
_FAILURES = (("UNDELIV", 0), ("EXPIRED", 0), ("REJECTD", 0))
MAX_NUMBERS = 80


@dataclass
class SimulatorConfig:
    """How the simulated gateway behaves; every rate is a probability per message."""

    #: accepted CID -> CPW; None accepts any non-empty account
    accounts: dict[str, str] | None = None
    #: seconds from the send (or its schedule time) to each message's final state
    delay: tuple[float, float] = (1.0, 3.0)
    fail_rate: float = 0.1
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    get_callbacks: bool = False
    answer_format: AnswerFormat = "comma"
    timezone: str = "Asia/Taipei"
    #: first ID of both sequences (immediate and scheduled); None: from the clock, so a
    #: restarted simulator does not hand out IDs it gave before
    first_id: int | None = None
    seed: int | None = None
    callback_retries: int = 3
    callback_timeout: float = 5.0
    #: interface -> return code to answer every request with (to try error handling)
    force_codes: dict[str, str] = field(default_factory=dict)
    #: numbers (as the gateway writes them, 0912345678) whose every message fails
    fail_numbers: frozenset[str] = frozenset()


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

    # ------------------------------------------------------------ answers

    def answer(self, code: str, value: str = "") -> PlainTextResponse:
        """`00,<ID>` and its siblings, in the configured layout."""
        if value:
            sep = {"comma": ",", "space": " ", "newline": "\n", "equals": "=", "colon": ":"}
            text = code + sep.get(self.config.answer_format, ",") + value
        else:
            text = code
        if self.config.answer_format == "html":
            text = f"<html><body>{text}</body></html>"
        return PlainTextResponse(text, media_type="text/html; charset=utf-8")

    def check_answer(self, send: SimSend, now: float) -> PlainTextResponse:
        fmt = self.config.answer_format
        sep = ":" if fmt == "colon" else "="
        lines = [f"MSGID{sep}{send.id}"]
        ok = fail = wait = 0
        for m in send.messages:
            if m.final_at > now:
                wait += 1
                continue
            state = 0 if m.statuscode == 1 else -1
            lines.append(
                f"STATUS{sep}{m.mobile},{m.msgid},{self.donetime(m.final_at)},{state},{m.status}"
            )
            ok, fail = (ok + 1, fail) if state == 0 else (ok, fail + 1)
        lines += [f"OK{sep}{ok}", f"FAIL{sep}{fail}", f"WAIT{sep}{wait}"]
        if fmt == "html":
            return PlainTextResponse(
                "<html><body>" + "<br>\n".join(lines) + "</body></html>",
                media_type="text/html; charset=utf-8",
            )
        return PlainTextResponse("\n".join(lines), media_type="text/html; charset=utf-8")

    def donetime(self, epoch: float) -> str:
        return dt.datetime.fromtimestamp(epoch, self.zone).strftime("%Y/%m/%d %H:%M:%S")

    # ------------------------------------------------------------ the rules

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

    # ------------------------------------------------------------ the interfaces

    async def fields_of(self, request: Request) -> dict[str, str]:
        fields = {k: v for k, v in request.query_params.items()}
        if request.method == "POST":
            form = await request.form()
            fields.update({k: v for k, v in form.items() if isinstance(v, str)})
        return fields

    def forced(self, interface: str) -> PlainTextResponse | None:
        code = self.config.force_codes.get(interface)
        return self.answer(code) if code else None

    async def send_sms(self, request: Request) -> Response:
        """SendSMS.php: send now."""
        fields = await self.fields_of(request)
        if (forced := self.forced("SendSMS")) is not None:
            return forced
        if not self.authenticated(fields):
            return self.answer("20")
        if (code := self.check_message(fields, 140)) is not None:
            return self.answer(code)
        send = self.create_send("now", fields, self.clock())
        return self.answer("00", send.id)

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

    async def send_time_sms(self, request: Request) -> Response:
        """SendTimeSMS.php: schedule (D empty), delete (D=Y) or check (D=C)."""
        fields = await self.fields_of(request)
        if (forced := self.forced("SendTimeSMS")) is not None:
            return forced
        if not self.authenticated(fields):
            return self.answer("20")
        action = fields.get("D", "").strip().upper()
        if action in ("Y", "C"):
            send = self.sends.get(("scheduled", fields.get("ID", "").strip()))
            if send is None or send.cancelled:
                return self.answer("25")
            gone = send.send_time <= self.clock()
            if action == "C":
                return self.answer("00" if gone else "35")
            if gone:
                return self.answer("25")
            send.cancelled = True
            log.info("scheduled send %s cancelled", send.id)
            return self.answer("00")
        if action:
            return self.answer("01")
        code, send_time = self._schedule_time(fields.get("T", "").strip())
        if code is not None:
            return self.answer(code)
        if (code := self.check_message(fields, 160)) is not None:
            return self.answer(code)
        send = self.create_send("scheduled", fields, send_time)
        return self.answer("00", send.id)

    async def check_sms(self, request: Request) -> Response:
        """CheckSMS.php: the state of every number of a send."""
        fields = await self.fields_of(request)
        self.checks.append((self.clock(), fields.get("ID", "").strip()))
        if (forced := self.forced("CheckSMS")) is not None:
            return forced
        if not self.authenticated(fields):
            return self.answer("20")
        query = fields.get("T", "").strip()
        if query.lower() not in ("", "time"):
            return self.answer("22")
        kind: SendKind = "scheduled" if query else "now"
        send = self.sends.get((kind, fields.get("ID", "").strip()))
        if send is None or send.cancelled:
            return self.answer("23" if kind == "scheduled" else "21")
        now = self.clock()
        if send.send_time > now:
            return self.answer("24")
        return self.check_answer(send, now)

    async def show_checks(self, request: Request) -> Response:
        """CheckSMS requests counted per whole second (epoch), the most in any second, and
        each request's time and ID: what a rate limit in front of the gateway let through."""
        per_second = collections.Counter(int(at) for at, _ in self.checks)
        return JSONResponse(
            {
                "total": len(self.checks),
                "per_second": {str(second): n for second, n in sorted(per_second.items())},
                "max_per_second": max(per_second.values(), default=0),
                "calls": [{"at": at, "id": batch_id} for at, batch_id in self.checks],
            }
        )

    async def show_sends(self, request: Request) -> Response:
        """The simulator's truth, for tests and the curious: every send and message."""
        return JSONResponse(
            [
                {
                    "id": s.id,
                    "type": s.type,
                    "cancelled": s.cancelled,
                    "send_time": s.send_time,
                    "messages": [
                        {
                            "mobile": m.mobile,
                            "msgid": m.msgid,
                            "status": m.status,
                            "statuscode": m.statuscode,
                            "donetime": self.donetime(m.final_at),
                            "final_at": m.final_at,
                            "dropped": m.dropped,
                            "callbacks": m.callbacks,
                            "planned": m.planned,
                        }
                        for m in s.messages
                    ],
                }
                for s in self.sends.values()
            ]
        )


def create_simulator(
    config: SimulatorConfig | None = None,
    callback_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The simulator as an ASGI app; its lifespan runs the callback scheduler. `clock`
    (epoch seconds) lets tests move time."""
    sim = GatewaySimulator(config or SimulatorConfig(), callback_transport, clock)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    methods = ["GET", "POST"]
    app = Starlette(
        routes=[
            Route("/api/SendSMS.php", sim.send_sms, methods=methods),
            Route("/api/SendTimeSMS.php", sim.send_time_sms, methods=methods),
            Route("/api/CheckSMS.php", sim.check_sms, methods=methods),
            Route("/simulator/sends", sim.show_sends, methods=["GET"]),
            Route("/simulator/checks", sim.show_checks, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app


def parse_accounts(value: str) -> dict[str, str] | None:
    """`cid:pw,cid2:pw2` -> {cid: pw}; empty accepts any account."""
    if not value.strip():
        return None
    accounts = {}
    for part in value.split(","):
        cid, sep, cpw = part.strip().partition(":")
        if not sep or not cid or not cpw:
            raise ValueError(f"{part!r} is not cid:password")
        accounts[cid] = cpw
    return accounts


def parse_delay(value: str) -> tuple[float, float]:
    """`2` or `1-3` (seconds) -> (low, high)."""
    low, _, high = value.partition("-")
    pair = (float(low), float(high or low))
    if pair[0] < 0 or pair[1] < pair[0]:
        raise ValueError("the delay must be N or LOW-HIGH seconds, LOW <= HIGH")
    return pair


def describe(config: SimulatorConfig) -> dict[str, Any]:
    return {
        "accounts": "any" if config.accounts is None else sorted(config.accounts),
        "delay": config.delay,
        "fail_rate": config.fail_rate,
        "fail_numbers": len(config.fail_numbers),
        "drop_rate": config.drop_rate,
        "duplicate_rate": config.duplicate_rate,
        "reorder_rate": config.reorder_rate,
        "get_callbacks": config.get_callbacks,
        "answer_format": config.answer_format,
    }
