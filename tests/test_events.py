"""Outbound events on both databases, sent to real receiver processes on 127.0.0.1: one event
per change and destination, signed (checked with the standardwebhooks package), retried,
disabled by 410, never redirected; the subscriptions and events API."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from app.db.engine import create_engine
from app.db.retention import cutoff_for, purge
from tests.conftest import make_settings, report, running_app
from tests.receivers import ReceiverProcess, receivers

DELIVERY_FIELDS = {
    *("msgid", "batch_id", "mobile", "type", "status", "statuscode", "outcome", "final"),
    *("inconsistent", "done_at", "first_received_at", "last_received_at", "reports"),
    *("version", "previous"),
}
FAST = {"webhook_allow_private": True, "webhook_retry_schedule": "0.2,0.2,0.2"}


@pytest.fixture
def receiver() -> Iterator[ReceiverProcess]:
    with receivers(1) as (one,):
        yield one


async def subscribe(client: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/subscriptions", json={"url": url, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def callback(client: httpx.AsyncClient, **fields: str) -> None:
    r = await client.post("/callbacks/mboxii", data=report(**fields))
    assert r.status_code == 200, r.text


async def events_of(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/events", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def settled(client: httpx.AsyncClient, count: int, status: str = "delivered") -> Any:
    async def done() -> Any:
        items = await events_of(client)
        return len(items) == count and all(i["status"] == status for i in items) and items

    deadline = asyncio.get_running_loop().time() + 20
    while True:
        items = await done()
        if items:
            return items
        assert asyncio.get_running_loop().time() < deadline, await events_of(client)
        await asyncio.sleep(0.05)


async def received(receiver: ReceiverProcess, n: int) -> list[dict[str, Any]]:
    """What the receiver got, once it got `n` (the app's dispatcher runs on this loop)."""
    deadline = asyncio.get_running_loop().time() + 20
    while len(events := receiver.events()) < n:
        assert asyncio.get_running_loop().time() < deadline, events
        await asyncio.sleep(0.05)
    return events


# ------------------------------------------------------------------ one event per change


async def test_each_change_makes_one_signed_event_per_matching_destination(
    app_factory: Any,
) -> None:
    with receivers(2) as (everything, failures):
        async with app_factory(**FAST) as (_, client):
            all_sub = await subscribe(client, everything.url)
            failed_sub = await subscribe(
                client,
                failures.url,
                events=["delivery.updated"],
                filter={"outcome": ["failed"], "status": ["undeliv"]},
            )
            await callback(client, msgid="1", statusstr="ENROUTE", statuscode="0")
            await callback(client, msgid="1", statusstr="ENROUTE", statuscode="0")  # dup
            await callback(client, msgid="1", statusstr="DELIVRD")
            # a late report that loses: a non-final one after the final
            await callback(client, msgid="1", statusstr="ENROUTE", donetime="2003/05/22 13:50:00")
            await callback(client, msgid="2", statusstr="UNDELIV", statuscode="0")
            await callback(client, msgid="3", statusstr="EXPIRED", statuscode="0")
            rows = await settled(client, 5)
            got = await received(everything, 4)
            got_failed = await received(failures, 1)

    a, f = all_sub["id"], failed_sub["id"]
    assert sorted((i["subscription_id"], i["payload"]["data"]["msgid"]) for i in rows) == sorted(
        [(a, "1"), (a, "1"), (a, "2"), (a, "3"), (f, "2")]
    )
    assert len(got) == 4 and len(got_failed) == 1
    # Signatures verify with the Standard Webhooks library and each subscription's secret.
    for request in got:
        Webhook(all_sub["secret"]).verify(request["body"], request["headers"])
    Webhook(failed_sub["secret"]).verify(got_failed[0]["body"], got_failed[0]["headers"])
    with pytest.raises(Exception, match="signature"):
        Webhook(failed_sub["secret"]).verify(got[0]["body"], got[0]["headers"])

    by_msgid: dict[str, list[dict[str, Any]]] = {}
    for request in got:
        by_msgid.setdefault(request["json"]["data"]["msgid"], []).append(request["json"]["data"])
    first, second = sorted(by_msgid["1"], key=lambda d: d["version"])
    assert (first["version"], first["status"], first["previous"]) == (1, "ENROUTE", None)
    assert second["version"] == 2 and second["status"] == "DELIVRD"
    assert second["previous"] == {"status": "ENROUTE", "outcome": "pending", "final": False}
    assert set(second) == DELIVERY_FIELDS
    # its reports when it changed: the duplicate is not one, the late one came after
    assert second["reports"] == 2 and second["mobile"] == "+886922161529"
    # One event, one id, whichever destination it goes to.
    undeliv = next(r for r in got if r["json"]["data"]["msgid"] == "2")
    assert undeliv["headers"]["webhook-id"] == got_failed[0]["headers"]["webhook-id"]
    assert undeliv["body"] == got_failed[0]["body"]
    assert undeliv["headers"]["content-type"] == "application/json"
    assert undeliv["json"]["type"] == "delivery.updated"


async def test_events_list_counts_match_the_destinations(app_factory: Any) -> None:
    """The same test from the log's side: exactly one row per change and destination."""
    with receivers(2) as (a, b):
        async with app_factory(**FAST) as (_, client):
            sub_a = await subscribe(client, a.url)
            sub_b = await subscribe(client, b.url, filter={"batch_id": "777"})
            await callback(client, msgid="10", ID="777")
            await callback(client, msgid="11", ID="778")
            await callback(client, msgid="10", ID="777")  # duplicate
            rows = await settled(client, 3)
            assert len(await events_of(client, subscription_id=sub_b["id"])) == 1
            assert len(await events_of(client, subscription_id=sub_a["id"])) == 2
            assert await events_of(client, status="failed") == []
            assert len(await events_of(client, type="delivery.updated")) == 3
            assert await events_of(client, type="callback.rejected") == []
    ids = {r["event_id"] for r in rows if r["payload"]["data"]["msgid"] == "10"}
    assert len(ids) == 1


async def test_a_first_quarantine_is_a_callback_rejected_event(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    async with app_factory(**FAST) as (_, client):
        sub = await subscribe(client, receiver.url, events=["callback.rejected"])
        for _ in range(2):  # the gateway retrying the same bad request: one event
            r = await client.post("/callbacks/mboxii", data=report(mobile="12"))
            assert r.status_code == 422
        rejected_id = r.json()["rejected_id"]
        await callback(client)  # a delivery: not wanted by this subscription
        await settled(client, 1)
        (event,) = await received(receiver, 1)
    Webhook(sub["secret"]).verify(event["body"], event["headers"])
    assert event["json"]["type"] == "callback.rejected"
    data = event["json"]["data"]
    assert data["rejected_id"] == rejected_id and data["reason"] == "invalid_fields"
    assert data["errors"][0]["field"] == "mobile"
    assert set(data) == {"rejected_id", "reason", "errors", "received_at"}


# ------------------------------------------------------------------ delivery of events


async def test_a_receiver_that_fails_for_a_while_gets_every_event(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    receiver.answer(500, body="not now")
    async with app_factory(
        webhook_allow_private=True, webhook_retry_schedule="0.3,0.3,0.3,0.3,0.3,0.3,0.3"
    ) as (_, client):
        await subscribe(client, receiver.url)
        for n in range(5):
            await callback(client, msgid=f"r{n}")

        async def retried() -> bool:
            items = await events_of(client)
            return len(items) == 5 and all(i["attempts"] >= 2 for i in items)

        await async_wait_for_async(retried)
        item = (await events_of(client))[0]
        assert item["status"] == "pending" and item["last_status_code"] == 500
        assert item["last_error"] == "HTTP 500: not now"
        receiver.answer(204)
        rows = await settled(client, 5)
    log = receiver.events()
    ids = {r["headers"]["webhook-id"] for r in log}
    assert len(ids) == 5  # every event, each retried under its own id
    assert all(r["status"] == "delivered" and r["last_status_code"] == 204 for r in rows)
    # The schedule was followed: the attempts of one event are at least ~0.24 s apart.
    one = sorted(
        r["at"] for r in log if r["headers"]["webhook-id"] == log[0]["headers"]["webhook-id"]
    )
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(one))


async def async_wait_for_async(condition: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_schedule_ends_in_failed_and_retry_starts_over(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    receiver.answer(503)
    async with app_factory(**FAST) as (_, client):
        await subscribe(client, receiver.url)
        await callback(client)
        (item,) = await settled(client, 1, status="failed")
        assert item["attempts"] == 4  # the first, then the schedule's three
        assert len(receiver.log()) == 4
        receiver.answer(200)
        r = await client.post(f"/v1/events/{item['id']}/retry")
        assert r.status_code == 202 and r.json()["status"] == "pending"
        assert r.json()["attempts"] == 0
        (item,) = await settled(client, 1)
        assert item["attempts"] == 1
        for unknown in (999999, 0, -1):
            assert (await client.post(f"/v1/events/{unknown}/retry")).status_code == 404
    assert len({r["headers"]["webhook-id"] for r in receiver.log()}) == 1


async def test_410_gone_disables_the_subscription(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    receiver.answer(410)
    async with app_factory(**FAST) as (_, client):
        sub = await subscribe(client, receiver.url)
        await callback(client)
        (item,) = await settled(client, 1, status="failed")
        assert item["last_status_code"] == 410 and item["attempts"] == 1
        shown = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
        assert shown["enabled"] is False and "410" in shown["disabled_reason"]
        await callback(client, msgid="later")
        await asyncio.sleep(0.3)
        assert len(await events_of(client)) == 1  # a disabled subscription gets no new events
        # nothing would be sent: a retry says so instead of answering 202 for nothing
        r = await client.post(f"/v1/events/{item['id']}/retry")
        assert (r.status_code, r.json()["error"]) == (409, "subscription_disabled")
        assert "PATCH" in r.json()["message"]
        r = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": True})
        assert r.json()["enabled"] is True and r.json()["disabled_reason"] is None
        receiver.answer(204)
        assert (await client.post(f"/v1/events/{item['id']}/retry")).status_code == 202
        await settled(client, 1)
    assert len(receiver.log()) == 2


async def test_a_slow_answer_does_not_hold_back_the_next_event_to_its_receiver(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    receiver.answer(204, delay=3)
    async with app_factory(**FAST) as (_, client):
        await subscribe(client, receiver.url)
        await callback(client, msgid="slow")
        await received(receiver, 1)  # being answered, slowly
        await callback(client, msgid="next")
        await received(receiver, 2)
        await settled(client, 2)
    first, second = (r["at"] for r in receiver.log())
    assert second - first < 2.5  # sent beside the first, not after its answer


async def test_a_redirect_is_a_failure_and_is_not_followed(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    receiver.answer(307, location=receiver.base + "/elsewhere")
    async with app_factory(**FAST) as (_, client):
        await subscribe(client, receiver.url)
        await callback(client)
        (item,) = await settled(client, 1, status="failed")
    assert item["last_status_code"] == 307
    assert "redirect" in item["last_error"] and "not followed" in item["last_error"]
    assert {r["path"] for r in receiver.log()} == {"/hook"}  # never /elsewhere


async def test_retry_after_is_honoured(app_factory: Any, receiver: ReceiverProcess) -> None:
    receiver.answer(429, retry_after="2")
    async with app_factory(**FAST) as (_, client):
        await subscribe(client, receiver.url)
        await callback(client)
        await async_wait_for_async(lambda: _attempts_at_least(client, 1), timeout=10)
        receiver.answer(204)
        await settled(client, 1)
    first, second = (r["at"] for r in receiver.log())
    assert second - first >= 1.9  # not the schedule's 0.2 s


async def _attempts_at_least(client: httpx.AsyncClient, n: int) -> bool:
    items = await events_of(client)
    return bool(items) and items[0]["attempts"] >= n


# ------------------------------------------------------------------ destinations


async def test_private_addresses_are_refused_without_the_setting(app_factory: Any) -> None:
    async with app_factory() as (_, client):
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://[::1]/x",
            "http://10.1.2.3/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:192.168.0.1]/x",
            "http://0.0.0.0/x",
            "http://224.0.0.1/x",
            # IPv6 addresses that carry a loopback or private IPv4 one
            "http://[64:ff9b::7f00:1]/x",  # NAT64
            "http://[2002:7f00:1::]/x",  # 6to4
            "http://[::127.0.0.1]/x",  # IPv4-compatible
        ):
            r = await client.post("/v1/subscriptions", json={"url": url})
            assert r.status_code == 422, url
            assert r.json()["errors"][0]["field"] == "url"
        for url in (
            *("ftp://example.com/x", "http://user:pw@example.com/", "not a url", "http://"),
            *("http://8.8.8.8:99999/x", "http://8.8.8.8:65536/", "http://8.8.8.8:0/"),
            *("http://ex_ample..com/x", f"http://{'a' * 64}.example.com/"),
        ):
            r = await client.post("/v1/subscriptions", json={"url": url})
            assert r.status_code == 422, url
            assert r.json()["errors"][0]["field"] == "url", url
        r = await client.post(
            "/v1/subscriptions", json={"url": "https://203.0.113.9/", "events": ["nope"]}
        )
        assert r.status_code == 422


async def test_a_private_address_is_refused_again_at_each_attempt(
    database_url: str, app_factory: Any, receiver: ReceiverProcess
) -> None:
    """A subscription written while private addresses were allowed: once they are not,
    its attempts fail before any connection."""
    async with app_factory(**FAST) as (_, client):
        await subscribe(client, receiver.url)
    async with app_factory(webhook_retry_schedule="0.2") as (_, client):
        await callback(client)
        (item,) = await settled(client, 1, status="failed")
    assert item["last_status_code"] is None
    assert "127.0.0.1" in item["last_error"] and "DLR_WEBHOOK_ALLOW_PRIVATE" in item["last_error"]
    assert receiver.log() == []


async def test_subscriptions_api(app_factory: Any, receiver: ReceiverProcess) -> None:
    async with app_factory(**FAST) as (_, client):
        created = await subscribe(
            client, receiver.url, description="crm", filter={"outcome": ["failed", "failed"]}
        )
        assert created["secret"].startswith("whsec_") and created["enabled"] is True
        assert created["events"] == ["delivery.updated", "callback.rejected"]
        assert created["filter"] == {"outcome": ["failed"]}
        sub_id = created["id"]
        listed = (await client.get("/v1/subscriptions")).json()
        assert [s["id"] for s in listed["items"]] == [sub_id]
        assert "secret" not in listed["items"][0] and listed["next_cursor"] is None
        shown = (await client.get(f"/v1/subscriptions/{sub_id}")).json()
        assert "secret" not in shown and shown["description"] == "crm"
        secret = (await client.get(f"/v1/subscriptions/{sub_id}/secret")).json()["secret"]
        assert secret == created["secret"]
        r = await client.patch(
            f"/v1/subscriptions/{sub_id}", json={"description": None, "filter": None}
        )
        assert r.status_code == 200
        assert r.json()["description"] is None and r.json()["filter"] is None
        assert (
            await client.patch(f"/v1/subscriptions/{sub_id}", json={"url": None})
        ).status_code == 422
        r = await client.patch(
            f"/v1/subscriptions/{sub_id}", json={"url": "http://127.0.0.1:1/other"}
        )
        assert r.json()["url"] == "http://127.0.0.1:1/other"
        # unknown, whether or not it has the form of an id
        for missing in ("sub_" + "0" * 24, "sub_x", "nope"):
            for method, path in (
                ("GET", f"/v1/subscriptions/{missing}"),
                ("GET", f"/v1/subscriptions/{missing}/secret"),
                ("POST", f"/v1/subscriptions/{missing}/secret/rotate"),
                ("PATCH", f"/v1/subscriptions/{missing}"),
                ("DELETE", f"/v1/subscriptions/{missing}"),
            ):
                r = await client.request(method, path, json={} if method == "PATCH" else None)
                assert (r.status_code, r.json()["error"]) == (404, "not_found"), (method, path)
        for n in range(3):
            await subscribe(client, receiver.url, description=str(n))
        page = (await client.get("/v1/subscriptions", params={"limit": 2})).json()
        rest = (
            await client.get(
                "/v1/subscriptions", params={"limit": 2, "cursor": page["next_cursor"]}
            )
        ).json()
        assert len({s["id"] for s in page["items"] + rest["items"]}) == 4
        assert (await client.delete(f"/v1/subscriptions/{sub_id}")).status_code == 204
        assert (await client.get(f"/v1/subscriptions/{sub_id}")).status_code == 404


async def test_a_rotated_secret_signs_beside_the_new_one(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    async with app_factory(**FAST) as (_, client):
        sub = await subscribe(client, receiver.url)
        rotated = (await client.post(f"/v1/subscriptions/{sub['id']}/secret/rotate")).json()
        assert rotated["secret"] != sub["secret"] and rotated["secret"].startswith("whsec_")
        assert (await client.get(f"/v1/subscriptions/{sub['id']}/secret")).json() == rotated
        await callback(client)
        (event,) = await received(receiver, 1)
    signatures = event["headers"]["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (sub["secret"], rotated["secret"]):
        Webhook(secret).verify(event["body"], event["headers"])


async def test_deleting_a_subscription_drops_its_undelivered_events(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    receiver.answer(500)
    async with app_factory(webhook_allow_private=True, webhook_retry_schedule="60") as (
        _,
        client,
    ):
        sub = await subscribe(client, receiver.url)
        await callback(client)
        await async_wait_for_async(lambda: _attempts_at_least(client, 1))
        assert (await client.delete(f"/v1/subscriptions/{sub['id']}")).status_code == 204
        assert await events_of(client) == []


async def test_events_list_pages_by_cursor(app_factory: Any, receiver: ReceiverProcess) -> None:
    async with app_factory(**FAST) as (_, client):
        await subscribe(client, receiver.url)
        for n in range(5):
            await callback(client, msgid=f"p{n}")
        await settled(client, 5)
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, "status": "delivered"}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/v1/events", params=params)).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and len(set(seen)) == 5
        r = await client.get("/v1/events", params={"limit": 2, "cursor": cursor or "x"})
        assert r.status_code == 422
        first = (await client.get("/v1/events", params={"limit": 2})).json()["next_cursor"]
        other = await client.get("/v1/events", params={"cursor": first, "status": "failed"})
        assert other.status_code == 422  # a cursor of other filters


async def test_metrics_and_retention_of_delivered_events(
    database_url: str, app_factory: Any, receiver: ReceiverProcess
) -> None:
    async with app_factory(**FAST) as (app, client):
        await subscribe(client, receiver.url)
        await callback(client, msgid="m1")
        await callback(client, msgid="m2")
        await settled(client, 2)
        metrics = (await client.get("/metrics")).text
        assert 'mboxii_dlr_events_created_total{type="delivery.updated"} 2.0' in metrics
        assert 'mboxii_dlr_event_attempts_total{result="delivered"} 2.0' in metrics
        assert "mboxii_dlr_event_delivery_latency_seconds_count 2.0" in metrics
        assert "mboxii_dlr_events_waiting " in metrics
        assert "mboxii_dlr_events_oldest_waiting_seconds " in metrics
        receiver.answer(500)
        await callback(client, msgid="m3")
        await async_wait_for_async(lambda: _any_attempted_pending(client))
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
                await conn.execute(text("UPDATE events SET created_at = :old"), {"old": old})
        finally:
            await engine.dispose()
        result = await purge(app.app_state.engine, cutoff_for(30))
        assert result.events == 2
        left = await events_of(client)
        assert [i["payload"]["data"]["msgid"] for i in left] == ["m3"]


async def _any_attempted_pending(client: httpx.AsyncClient) -> bool:
    return any(i["status"] == "pending" and i["attempts"] >= 1 for i in await events_of(client))


async def test_the_dashboard_shows_waiting_and_failed_events_and_retries_one(
    app_factory: Any, receiver: ReceiverProcess
) -> None:
    from tests.test_dashboard import csrf_of

    receiver.answer(500, body="down for maintenance")
    async with app_factory(webhook_allow_private=True, webhook_retry_schedule="0.1") as (
        _,
        client,
    ):
        await subscribe(client, receiver.url)
        await callback(client, msgid="d1")
        (item,) = await settled(client, 1, status="failed")
        page = await client.get("/dashboard/events")
        assert page.status_code == 200
        assert 'data-figure="events-failed">1<' in page.text
        assert "down for maintenance" in page.text and "HTTP 500" in page.text
        url = f"/dashboard/events/{item['id']}/retry"
        assert (await client.post(url, data={"csrf": "forged"})).status_code == 403
        receiver.answer(204)
        token = csrf_of(page.text)
        r = await client.post(url, data={"csrf": token})
        assert r.status_code == 303 and r.headers["location"].endswith(f"retried={item['id']}")
        await settled(client, 1)
        page = await client.get(r.headers["location"])
        assert "will be sent again now" in page.text
        assert 'data-figure="events-failed">0<' in page.text
        missing = await client.post("/dashboard/events/99/retry", data={"csrf": token})
        assert missing.status_code == 404
        # a disabled subscription's event: the page says why nothing is sent
        await client.patch(f"/v1/subscriptions/{item['subscription_id']}", json={"enabled": False})
        r = await client.post(url, data={"csrf": token})
        assert r.status_code == 409 and "disabled" in r.text


async def test_a_read_key_lists_subscriptions_but_may_not_manage_them(
    app_factory: Any,
) -> None:
    read, send = {"x-api-key": "read-only-key-0123456789"}, {"x-api-key": "send-key-0123456789ab"}
    async with app_factory(
        webhook_allow_private=True,
        api_keys=["read-only-key-0123456789"],
        send_api_keys=["send-key-0123456789ab"],
    ) as (_, client):
        body = {"url": "http://127.0.0.1:9/hook"}
        r = await client.post("/v1/subscriptions", json=body, headers=read)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        created = await client.post("/v1/subscriptions", json=body, headers=send)
        assert created.status_code == 201
        path = f"/v1/subscriptions/{created.json()['id']}"
        for headers in (read, send):
            assert (await client.get("/v1/subscriptions", headers=headers)).status_code == 200
            assert (await client.get(path, headers=headers)).status_code == 200
            assert (await client.get("/v1/events", headers=headers)).status_code == 200
        # Its secret, and any change, need a send key: a subscription hears every delivery.
        for method, target in (
            ("GET", path + "/secret"),
            ("POST", path + "/secret/rotate"),
            ("PATCH", path),
            ("DELETE", path),
        ):
            r = await client.request(
                method, target, headers=read, json={} if method == "PATCH" else None
            )
            assert r.status_code == 403, (method, target)
        assert (await client.get(path + "/secret", headers=send)).status_code == 200
        assert (await client.delete(path, headers=send)).status_code == 204
        assert (
            await client.get("/v1/subscriptions", headers={"x-api-key": "no"})
        ).status_code == 401


async def test_with_no_send_keys_every_key_manages_subscriptions(app_factory: Any) -> None:
    """DLR_API_KEYS alone: there is no other key to manage subscriptions with, so any of
    them does (sending still needs a send key)."""
    key = {"authorization": "Bearer only-key-0123456789abcdef"}
    async with app_factory(webhook_allow_private=True, api_keys=["only-key-0123456789abcdef"]) as (
        _,
        client,
    ):
        created = await client.post(
            "/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"}, headers=key
        )
        assert created.status_code == 201
        path = f"/v1/subscriptions/{created.json()['id']}"
        assert (await client.get(path + "/secret", headers=key)).status_code == 200
        assert (await client.post(path + "/secret/rotate", headers=key)).status_code == 200
        r = await client.patch(path, json={"enabled": False}, headers=key)
        assert r.json()["enabled"] is False
        assert (await client.delete(path, headers=key)).status_code == 204
        assert (await client.post("/v1/subscriptions", json={})).status_code == 401
        r = await client.post(
            "/v1/messages", json={"numbers": ["0912345678"], "text": "hi"}, headers=key
        )
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")


@pytest.mark.postgres
async def test_a_service_clock_ahead_of_the_database_does_not_hold_events_back(
    migrated: str, receiver: ReceiverProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's dispatchers claim by the database's clock; an event made by a service
    whose clock runs ahead of it is due at once all the same. (On SQLite one process's clock
    does both.)"""
    from app.events import outbox

    class Ahead(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Ahead:
            return super().now(tz) + dt.timedelta(minutes=10)

    # the outbox's clock only (its `dt` module), not the process's
    monkeypatch.setattr(outbox, "dt", SimpleNamespace(datetime=Ahead, UTC=dt.UTC))
    async with running_app(make_settings(migrated, **FAST)) as (_, client):
        await subscribe(client, receiver.url)
        await callback(client)
        await received(receiver, 1)
