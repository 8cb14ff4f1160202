"""The simulated gateway over HTTP: its three interfaces as MboxII lays out their answers, and
two pages of its truth for tests (/simulator/sends, /simulator/checks)."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from simulator.config import AnswerFormat, SimulatorConfig
from simulator.gateway import GatewaySimulator, Listing, Reply

_SEPARATORS = {"comma": ",", "space": " ", "newline": "\n", "equals": "=", "colon": ":"}


def answer(reply: Reply, fmt: AnswerFormat) -> PlainTextResponse:
    """`00,<ID>` and its siblings, in the configured layout."""
    code, value = reply
    text = code + _SEPARATORS.get(fmt, ",") + value if value else code
    if fmt == "html":
        text = f"<html><body>{text}</body></html>"
    return PlainTextResponse(text, media_type="text/html; charset=utf-8")


def check_answer(sim: GatewaySimulator, listing: Listing, fmt: AnswerFormat) -> PlainTextResponse:
    """CheckSMS's lines: the send's ID, one STATUS line per message done, and the counts."""
    send, now = listing.send, listing.now
    sep = ":" if fmt == "colon" else "="
    lines = [f"MSGID{sep}{send.id}"]
    ok = fail = wait = 0
    for m in send.messages:
        if m.final_at > now:
            wait += 1
            continue
        state = 0 if m.statuscode == 1 else -1
        lines.append(
            f"STATUS{sep}{m.mobile},{m.msgid},{sim.donetime(m.final_at)},{state},{m.status}"
        )
        ok, fail = (ok + 1, fail) if state == 0 else (ok, fail + 1)
    lines += [f"OK{sep}{ok}", f"FAIL{sep}{fail}", f"WAIT{sep}{wait}"]
    if fmt == "html":
        return PlainTextResponse(
            "<html><body>" + "<br>\n".join(lines) + "</body></html>",
            media_type="text/html; charset=utf-8",
        )
    return PlainTextResponse("\n".join(lines), media_type="text/html; charset=utf-8")


async def fields_of(request: Request) -> dict[str, str]:
    """The request's fields, from its query string and (POST) its form."""
    fields = {k: v for k, v in request.query_params.items()}
    if request.method == "POST":
        form = await request.form()
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    return fields


def create_simulator(
    config: SimulatorConfig | None = None,
    callback_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The simulator as an ASGI app; its lifespan runs the callback scheduler. `clock`
    (epoch seconds) lets tests move time."""
    sim = GatewaySimulator(config or SimulatorConfig(), callback_transport, clock)
    fmt = sim.config.answer_format

    async def send_sms(request: Request) -> Response:
        return answer(sim.send_now(await fields_of(request)), fmt)

    async def send_time_sms(request: Request) -> Response:
        return answer(sim.send_later(await fields_of(request)), fmt)

    async def check_sms(request: Request) -> Response:
        result = sim.check(await fields_of(request))
        if isinstance(result, Listing):
            return check_answer(sim, result, fmt)
        return answer(result, fmt)

    async def show_checks(request: Request) -> Response:
        """CheckSMS requests counted per whole second (epoch), the most in any second, and
        each request's time and ID: what a rate limit in front of the gateway let through."""
        per_second = collections.Counter(int(at) for at, _ in sim.checks)
        return JSONResponse(
            {
                "total": len(sim.checks),
                "per_second": {str(second): n for second, n in sorted(per_second.items())},
                "max_per_second": max(per_second.values(), default=0),
                "calls": [{"at": at, "id": batch_id} for at, batch_id in sim.checks],
            }
        )

    async def show_sends(request: Request) -> Response:
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
                            "donetime": sim.donetime(m.final_at),
                            "final_at": m.final_at,
                            "dropped": m.dropped,
                            "callbacks": m.callbacks,
                            "planned": m.planned,
                        }
                        for m in s.messages
                    ],
                }
                for s in sim.sends.values()
            ]
        )

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
            Route("/api/SendSMS.php", send_sms, methods=methods),
            Route("/api/SendTimeSMS.php", send_time_sms, methods=methods),
            Route("/api/CheckSMS.php", check_sms, methods=methods),
            Route("/simulator/sends", show_sends, methods=["GET"]),
            Route("/simulator/checks", show_checks, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app
