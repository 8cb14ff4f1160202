"""Who owns each transaction: the request (SessionDep), never the services it calls; and the
reconciler's few short transactions per send."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import event, func, select

from app.db.models import Rejected, Send
from app.gateway.client import SendResult
from app.gateway.rules import OutboundMessage
from app.gateway.sends import find_sends, mark_cancelled, record_send
from app.ingest.quarantine import RawRequest, quarantine
from app.state import SessionDep
from tests.fake_gateway import FakeGateway, service

NOW = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
MESSAGE = OutboundMessage(("+886911222333",), "hello", "chinese", None)


def sent(batch_id: str) -> SendResult:
    return SendResult(batch_id, "scheduled", "SendTimeSMS", f"00,{batch_id}")


async def test_services_leave_the_commit_to_their_caller(app_factory: Any) -> None:
    async with app_factory() as (app, _):
        sessions = app.app_state.sessionmaker
        async with sessions() as session:
            await record_send(session, MESSAGE, sent("R1"), created_at=NOW, next_check_at=NOW)
            raw = RawRequest("POST", "", "text/plain", "127.0.0.1", b"x")
            await quarantine(session, raw, "invalid_fields", [], NOW)
            await session.rollback()
        async with sessions() as session:
            assert await find_sends(session, "R1") == []
            assert await session.scalar(select(func.count()).select_from(Rejected)) == 0

        async with sessions.begin() as session:
            await record_send(session, MESSAGE, sent("R2"), created_at=NOW, next_check_at=NOW)
        async with sessions() as session:
            [send] = await find_sends(session, "R2")
            assert await mark_cancelled(session, send, NOW)
            await session.rollback()
        async with sessions() as session:
            [send] = await find_sends(session, "R2")
            assert send.cancelled_at is None


async def test_a_request_commits_once_it_succeeds_and_rolls_back_when_it_fails(
    app_factory: Any,
) -> None:
    async with app_factory() as (app, client):
        # Two routes of this test alone, writing through the request's session.

        async def record(batch_id: str, session: SessionDep) -> dict[str, str]:
            await record_send(session, MESSAGE, sent(batch_id), created_at=NOW, next_check_at=NOW)
            return {"recorded": batch_id}

        async def record_then_fail(batch_id: str, session: SessionDep) -> None:
            await record_send(session, MESSAGE, sent(batch_id), created_at=NOW, next_check_at=NOW)
            raise RuntimeError("the handler failed after writing")

        app.add_api_route("/test/record/{batch_id}", record, methods=["POST"])
        app.add_api_route("/test/fail/{batch_id}", record_then_fail, methods=["POST"])
        assert (await client.post("/test/record/K1")).json() == {"recorded": "K1"}
        failing = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://testserver",
        )
        async with failing:
            assert (await failing.post("/test/fail/K2")).status_code == 500
        async with app.app_state.sessionmaker() as session:
            assert [s.batch_id for s in await find_sends(session, "K1")] == ["K1"]
            assert await find_sends(session, "K2") == []


async def test_reconciling_a_send_takes_three_short_transactions(database_url: str) -> None:
    gateway = FakeGateway()
    async with service(database_url, gateway) as (app, client, _):
        batch = (
            await client.post("/v1/messages", json={"numbers": ["0912345678"], "text": "hi"})
        ).json()["batch_id"]
        gateway.checks[batch] = f"MSGID={batch}\nWAIT=1"
        async with app.app_state.sessionmaker.begin() as session:
            [send] = await find_sends(session, batch)
            send.next_check_at = NOW
        transactions: list[str] = []
        engine = app.app_state.engine.sync_engine

        def began(connection: Any) -> None:
            transactions.append("begin")

        event.listen(engine, "begin", began)
        try:
            result = await app.app_state.reconciler.run_once()
        finally:
            event.remove(engine, "begin", began)
        assert result.checked == 1
        # the pass's listing (with a look at the account's pause), then per send: the claim,
        # its slot of the account's rate (app.db.rates) and the record of the check
        assert len(transactions) == 4
        async with app.app_state.sessionmaker() as session:
            stored = await session.scalar(select(Send).where(Send.batch_id == batch))
            assert stored is not None
            assert (stored.checks, stored.last_check_result) == (1, f"MSGID={batch}\nWAIT=1")
            assert stored.next_check_at is not None and stored.next_check_at > NOW
