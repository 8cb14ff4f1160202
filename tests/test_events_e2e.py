"""Outbound events with real service processes: a kill -9 while events are in flight loses
none, three replicas on one PostgreSQL send each event once, a slow receiver does not hold
up a fast one, and a send's status_callback hears of its deliveries."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import LiveServer, clean_postgres, report
from tests.fake_gateway import service
from tests.helpers import wait_for
from tests.receivers import receivers
from tests.test_events import callback, events_of, settled, subscribe

pytestmark = pytest.mark.slow

LIVE = {"DLR_WEBHOOK_ALLOW_PRIVATE": "true", "DLR_LOG_LEVEL": "warning"}


def post_reports(url: str, msgids: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for msgid in msgids:
            r = client.post("/callbacks/mboxii", data=report(msgid=msgid))
            assert r.status_code == 200, r.text


def webhook_ids_by_msgid(log: list[dict[str, Any]]) -> dict[str, set[str]]:
    import json

    found: dict[str, set[str]] = defaultdict(set)
    for request in log:
        found[json.loads(request["body"])["data"]["msgid"]].add(request["headers"]["webhook-id"])
    return found


def test_kill_9_while_events_are_in_flight_loses_none(live_server: Any) -> None:
    with receivers(1) as (receiver,):
        # Slow answers keep events in flight; a short timeout keeps the lease short.
        receiver.answer(204, delay=0.2)
        env = {**LIVE, "DLR_WEBHOOK_TIMEOUT_SECONDS": "0.5", "DLR_WEBHOOK_CONCURRENCY": "4"}
        server = live_server(**env)
        secret = httpx.post(server.url + "/v1/subscriptions", json={"url": receiver.url}).json()[
            "secret"
        ]
        msgids = [f"k{n}" for n in range(40)]
        post_reports(server.url, msgids)  # each one acknowledged
        wait_for(lambda: len(receiver.log()) >= 4, 20, "the first events")
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        before = len(receiver.log())
        assert before < len(msgids)  # some were still waiting or in flight
        live_server(**env)
        wait_for(
            lambda: set(webhook_ids_by_msgid(receiver.log())) == set(msgids), 40, "every event"
        )
        log = receiver.log()
    ids = webhook_ids_by_msgid(log)
    # At least once, and a repeat is the same event: one webhook-id per change.
    assert all(len(v) == 1 for v in ids.values()), ids
    for request in log:
        Webhook(secret).verify(request["body"], request["headers"])


@pytest.mark.postgres
def test_three_replicas_send_each_event_once(postgres_url: str) -> None:
    asyncio.run(clean_postgres(postgres_url))
    servers: list[LiveServer] = []
    with receivers(1) as (receiver,):
        try:
            servers = [LiveServer(postgres_url, LIVE).start() for _ in range(3)]
            httpx.post(servers[0].url + "/v1/subscriptions", json={"url": receiver.url})
            msgids = [f"r{n}" for n in range(150)]
            with ThreadPoolExecutor(3) as pool:
                urls = [s.url for s in servers]
                list(pool.map(post_reports, urls, [msgids[i::3] for i in range(3)]))
            wait_for(lambda: len(receiver.log()) >= len(msgids), 30, "every event")
            time.sleep(0.5)  # a duplicate would arrive now
            log = receiver.log()
        finally:
            for server in servers:
                server.stop()
                server.log_path.unlink(missing_ok=True)
    assert len(log) == len(msgids)
    assert len({r["headers"]["webhook-id"] for r in log}) == len(msgids)


async def test_a_slow_receiver_does_not_hold_up_a_fast_one(app_factory: Any) -> None:
    with receivers(2) as (slow, fast):
        slow.answer(204, delay=2)
        async with app_factory(
            webhook_allow_private=True, webhook_concurrency=2, webhook_timeout_seconds=5
        ) as (_, client):
            await subscribe(client, slow.url)
            await subscribe(client, fast.url)
            started = time.monotonic()
            for n in range(20):
                await callback(client, msgid=f"s{n}")
            while len(fast.log()) < 20:
                assert time.monotonic() - started < 5, len(fast.log())
                await asyncio.sleep(0.05)
            # the slow one has had at most its two slots' worth
            assert len(slow.log()) <= 4
            pending = await events_of(client, status="pending")
            assert len(pending) >= 16


async def test_a_status_callback_hears_of_its_sends_deliveries(database_url: str) -> None:
    from tests.test_events_units import SECRET

    with receivers(1) as (receiver,):
        async with service(database_url, webhook_allow_private=True) as (_, client, _gw):
            r = await client.post(
                "/v1/messages",
                json={"numbers": ["0912345678"], "text": "hi", "status_callback": receiver.url},
            )
            assert r.status_code == 422
            assert r.json()["errors"][0]["field"] == "status_callback"
        async with service(
            database_url, webhook_allow_private=True, status_callback_secret=SECRET
        ) as (_, client, _gateway):
            bad = await client.post(
                "/v1/messages",
                json={"numbers": ["0912345678"], "text": "hi", "status_callback": "ftp://x/"},
            )
            assert bad.status_code == 422
            r = await client.post(
                "/v1/messages",
                json={"numbers": ["0912345678"], "text": "hi", "status_callback": receiver.url},
            )
            assert r.status_code == 201, r.text
            assert r.json()["status_callback"] == receiver.url
            batch_id = r.json()["batch_id"]
            fields = {"mobile": "0912345678", "msgid": "sc1", "ID": batch_id}
            for path_report in (report(**fields), report(msgid="other", ID="elsewhere")):
                r = await client.post("/callbacks/mboxii/tok-1", data=path_report)
                assert r.status_code == 200
            items = await settled(client, 1)
            assert items[0]["subscription_id"] is None and items[0]["url"] == receiver.url
            # A later report of the delivery under another ID: the delivery keeps its
            # first ID, so its change still goes to that send's status_callback.
            later = report(**{**fields, "ID": "elsewhere", "donetime": "2003/05/22 14:00:00"})
            assert (await client.post("/callbacks/mboxii/tok-1", data=later)).status_code == 200
            await settled(client, 2)
        first, second = receiver.log()
    for event in (first, second):
        Webhook(SECRET).verify(event["body"], event["headers"])
        assert '"msgid":"sc1"' in event["body"]
    assert (
        '"version":2' in second["body"]
        and first["headers"]["webhook-id"] != second["headers"]["webhook-id"]
    )
