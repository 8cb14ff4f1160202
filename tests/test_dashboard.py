"""The dashboard over HTTP without a browser: access, sessions, CSRF, masking, search, figures."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.conftest import report
from tests.helpers import database_gone

CB = "/callbacks/mboxii"
KEYS = "dash-key-one,dash-key-two"
# The national significant numbers of every seeded number: none may appear unmasked.
SEEDED_NUMBERS = ["922161529", "911222333", "933111222", "933111223", "955666777", "966000111"]
QUARANTINED_NUMBER = "987654321"


def taipei_ago(minutes: float) -> str:
    """The gateway's spelling of the Taiwan wall time `minutes` ago."""
    when = dt.datetime.now(ZoneInfo("Asia/Taipei")) - dt.timedelta(minutes=minutes)
    return when.strftime("%Y/%m/%d %H:%M:%S")


def seed_reports() -> list[dict[str, str]]:
    """Deliveries of the last hours: delivered (one with two reports), failed, pending, old."""
    return [
        report(ID="B1", msgid="d1", statuscode="0", statusstr="ENROUTE", donetime=taipei_ago(50)),
        report(ID="B1", msgid="d1", donetime=taipei_ago(45)),
        report(ID="B1", msgid="d2", mobile="0911222333", donetime=taipei_ago(40)),
        report(ID="B2", msgid="d3", mobile="0911222333", donetime=taipei_ago(130)),
        report(
            ID="B2",
            msgid="f1",
            mobile="0933111222",
            statuscode="0",
            statusstr="UNDELIV",
            donetime=taipei_ago(30),
        ),
        report(
            ID="B2",
            msgid="f2",
            mobile="0933111223",
            statuscode="0",
            statusstr="EXPIRED",
            donetime=taipei_ago(20),
        ),
        report(
            ID="B2",
            msgid="p1",
            mobile="0955666777",
            statuscode="0",
            statusstr="ENROUTE",
            donetime=taipei_ago(10),
        ),
        report(ID="B3", msgid="old", mobile="0966000111", donetime=taipei_ago(3 * 24 * 60)),
    ]


def quarantined_report() -> dict[str, str]:
    return report(ID="B9", msgid="q1", mobile="0" + QUARANTINED_NUMBER, donetime="yesterday")


async def seed(client: httpx.AsyncClient) -> None:
    for fields in seed_reports():  # one by one: the order makes d1's history
        r = await client.post(CB, data=fields)
        assert r.status_code == 200, r.text
    r = await client.post(CB, data=quarantined_report())
    assert r.status_code == 422


def figure(html: str, name: str) -> str:
    match = re.search(rf'data-figure="{re.escape(name)}"[^>]*>([^<]*)<', html)
    assert match, f"no figure {name!r} on the page"
    return match.group(1).strip()


def window(html: str, chart: str) -> dict[str, str]:
    match = re.search(rf'data-from="([^"]+)" data-to="([^"]+)" id="{chart}-chart"', html)
    assert match, f"no {chart} chart"
    return {"from": match.group(1), "to": match.group(2)}


def assert_masked(html: str) -> None:
    for number in [*SEEDED_NUMBERS, QUARANTINED_NUMBER]:
        assert number not in html, f"{number} shown unmasked"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def log_in(client: httpx.AsyncClient, key: str = "dash-key-two") -> httpx.Response:
    return await client.post("/dashboard/login", data={"key": key, "next": "/dashboard"})


# ---------------------------------------------------------------- open dashboard


async def test_root_redirects_to_the_dashboard_and_callbacks_do_not(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/")
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard")
    r = await client.get("/dashboard/")
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard")
    r = await client.post(CB, data=report())
    assert (r.status_code, r.text) == (200, "OK")
    assert (await client.post(CB + "/", data=report())).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if path == "/" or "dashboard" in path]


async def test_overview_figures_match_the_api_and_numbers_are_masked(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    r = await client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert '<html lang="en">' in html
    assert_masked(html)
    assert "0933***222" in html  # the latest failures, masked

    hours = (
        await client.get("/v1/stats", params={**window(html, "hours"), "interval": "hour"})
    ).json()
    days = (
        await client.get("/v1/stats", params={**window(html, "days"), "interval": "day"})
    ).json()
    assert len(hours["buckets"]) == 24 and len(days["buckets"]) == 30
    totals = hours["totals"]
    assert totals["deliveries"] == 6
    assert figure(html, "deliveries") == str(totals["deliveries"])
    assert figure(html, "delivered") == str(totals["delivered"])
    assert figure(html, "failed") == str(totals["failed"]) == "2"
    assert figure(html, "delivery_rate") == f"{totals['delivery_rate'] * 100:.1f}%"
    assert figure(html, "deliveries_30d") == str(days["totals"]["deliveries"]) == "7"
    assert figure(html, "pending") == "1"
    assert figure(html, "quarantine") == "1"
    for word, count in totals["by_status"].items():
        assert figure(html, f"status-{word}") == str(count)
    # the charts speak: a title, a description and a table for each
    assert html.count("<title id=") == 2 and html.count("<desc id=") == 2
    assert "6 deliveries in 24 hours: 3 delivered, 2 failed, 1 pending" in html

    fragment = await client.get("/dashboard/fragments/figures")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert figure(fragment.text, "deliveries") == "6"
    assert_masked(fragment.text)


async def test_static_files_are_served_from_the_package(client: httpx.AsyncClient) -> None:
    html = (await client.get("/dashboard")).text
    css_url = re.search(r'href="(/dashboard/static/dashboard\.css\?v=\w+)"', html)
    assert css_url
    r = await client.get(css_url.group(1))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/css")
    assert "immutable" in r.headers["cache-control"]
    r = await client.get("/dashboard/static/dashboard.js")
    assert r.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "visibilitychange" in r.text
    assert r.headers["cache-control"] == "no-cache"
    for missing in ("nope.css", "..%2F__init__.py", "..%2F..%2Fsettings.py"):
        assert (await client.get(f"/dashboard/static/{missing}")).status_code == 404


async def test_search_leads_to_the_number_delivery_batch_or_list(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    for spelling in ("+886 922-161-529", "886922161529", "922161529", "0922.161.529"):
        r = await client.get("/dashboard/search", params={"q": spelling})
        assert r.status_code == 303, spelling
        assert r.headers["location"].startswith("/dashboard/numbers/0922***529?ref=")
        assert "922161529" not in r.headers["location"]
    number = await client.get(r.headers["location"])
    assert '<h1>Number <span class="number">0922***529</span></h1>' in number.text
    assert_masked(number.text)
    (delivery,) = re.findall(r'href="(/dashboard/deliveries/d1\?ref=[^"]+)"', number.text)
    page = await client.get(delivery.replace("&amp;", "&"))
    assert page.status_code == 200
    assert "<h1>Delivery d1</h1>" in page.text
    assert page.text.count("<tr>\n      <td><time") == 2  # two reports in the history
    assert "ENROUTE (0)" in page.text and "DELIVRD (1)" in page.text
    assert_masked(page.text)
    assert "0922***529" in page.text

    r = await client.get("/dashboard/search", params={"q": " f1 "})
    assert r.headers["location"].startswith("/dashboard/deliveries/f1?ref=")

    r = await client.get("/dashboard/search", params={"q": "B2"})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/batches/B2")
    batch = (await client.get("/v1/batches/B2")).json()
    html = (await client.get("/dashboard/batches/B2")).text
    for name in ("deliveries", "delivered", "failed", "pending"):
        assert figure(html, name) == str(batch[name])
    for word, count in batch["by_status"].items():
        assert figure(html, f"status-{word}") == str(count)
    assert_masked(html)

    # a number with two deliveries: its page lists them
    r = await client.get("/dashboard/search", params={"q": "+886911222333"})
    number = await client.get(r.headers["location"])
    assert "/dashboard/deliveries/d2?ref=" in number.text
    assert "/dashboard/deliveries/d3?ref=" in number.text
    # a number that is also a msgid: a list, which may show the number that was typed,
    # with a link to the number's page
    extra = report(ID="B7", msgid="0911222333", mobile="0955666777", donetime=taipei_ago(5))
    assert (await client.post(CB, data=extra)).status_code == 200
    r = await client.get("/dashboard/search", params={"q": "0911222333"})
    assert r.status_code == 200
    assert "Deliveries to 0911222333" in r.text
    assert "/dashboard/numbers/0911***333?ref=" in r.text

    r = await client.get("/dashboard/search", params={"q": "0900000000"})
    assert r.status_code == 404
    assert "Nothing matches" in r.text

    assert (await client.get("/dashboard/search", params={"q": "  "})).status_code == 303


async def test_a_msgid_shared_by_two_numbers_and_a_batch_named_like_a_msgid(
    client: httpx.AsyncClient,
) -> None:
    for fields in (
        report(ID="X1", msgid="shared", mobile="0922161529", donetime=taipei_ago(5)),
        report(ID="shared", msgid="shared", mobile="0911222333", donetime=taipei_ago(4)),
    ):
        assert (await client.post(CB, data=fields)).status_code == 200
    r = await client.get("/dashboard/search", params={"q": "shared"})
    assert r.status_code == 200
    assert "Batch shared" in r.text and "Deliveries with msgid shared" in r.text
    assert_masked(r.text)
    r = await client.get("/dashboard/deliveries/shared")
    assert r.status_code == 200
    refs = re.findall(r"/dashboard/deliveries/shared\?ref=([\w-]+)", r.text)
    assert len(set(refs)) == 2
    one = await client.get("/dashboard/deliveries/shared", params={"ref": refs[0]})
    assert "<h1>Delivery shared</h1>" in one.text
    r = await client.get("/dashboard/deliveries/shared", params={"ref": "forged"})
    assert r.status_code == 404
    assert (await client.get("/dashboard/batches/nope")).status_code == 404


async def test_reveal_shows_the_number_and_logs_without_it(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(client)
    location = (await client.get("/dashboard/search", params={"q": "0922161529"})).headers[
        "location"
    ]
    ref = parse_qs(urlsplit(location).query)["ref"][0]
    masked = await client.get(location)
    assert "Reveal number" in masked.text
    with caplog.at_level(logging.INFO, logger="mboxii_dlr.dashboard"):
        r = await client.get("/dashboard/deliveries/d1", params={"ref": ref, "reveal": "true"})
    assert "0922161529" in r.text and "+886922161529" in r.text
    revealed = [rec.getMessage() for rec in caplog.records if "revealed" in rec.getMessage()]
    assert revealed and "d1" in revealed[0]
    assert not any("922161529" in rec.getMessage() for rec in caplog.records)


async def test_quarantine_view_masks_bodies_and_replays_with_csrf(app_factory: Any) -> None:
    # A zone 20 hours behind Taiwan puts a Taiwan wall time 6 hours ahead 26 hours ahead: rejected.
    fields = report(msgid="late", mobile="0911222333", donetime=taipei_ago(-6 * 60))
    async with app_factory(gateway_timezone="Etc/GMT+12") as (_, client):
        assert (await client.post(CB, data=fields)).status_code == 422
    async with app_factory() as (app, client):
        assert (await client.post(CB, data=quarantined_report())).status_code == 422
        page = await client.get("/dashboard/rejected")
        assert page.status_code == 200
        assert "dlr_dashboard=" in page.headers["set-cookie"]
        assert_masked(page.text)
        assert "mobile=0987***321" in page.text and "mobile=0911***333" in page.text
        token = csrf_of(page.text)
        url = "/dashboard/rejected/1/replay"

        for form, headers in (
            ({}, {}),
            ({"csrf": "forged"}, {}),
            ({"csrf": token}, {"origin": "https://evil.example"}),
            ({"csrf": token}, {"sec-fetch-site": "cross-site"}),
        ):
            r = await client.post(url, data=form, headers=headers)
            assert r.status_code == 403, (form, headers)
            assert "Form refused" in r.text
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver")
        async with other:
            r = await other.post(url, data={"csrf": token})  # another browser, no session
            assert r.status_code == 403

        # a proxy that rewrites Host: the browser's Sec-Fetch-Site still says same-origin
        headers = {"origin": "https://dlr.example", "sec-fetch-site": "same-origin"}
        r = await client.post(url, data={"csrf": token}, headers=headers)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/dashboard/rejected?replayed=1&result=stored")
        notice = await client.get(r.headers["location"])
        assert "its report is now stored" in notice.text
        assert (await client.get("/v1/deliveries/late")).status_code == 200

        r = await client.post("/dashboard/rejected/2/replay", data={"csrf": token})
        assert "result=invalid" in r.headers["location"]
        notice = await client.get(r.headers["location"])
        assert "still fails validation" in notice.text and "donetime" in notice.text
        r = await client.post("/dashboard/rejected/99/replay", data={"csrf": token})
        assert r.status_code == 404


async def test_dashboard_says_so_when_the_database_is_gone(app_factory: Any) -> None:
    async with app_factory() as (app, client), database_gone(app):
        r = await client.get("/dashboard")
        assert r.status_code == 503
        assert "Database unreachable" in r.text


# ---------------------------------------------------------------- with API keys


async def test_keys_require_a_login_and_the_cookie_is_a_signed_session(app_factory: Any) -> None:
    async with app_factory(api_keys=KEYS) as (_, client):
        await seed(client)
        r = await client.get("/dashboard")
        assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login?next=%2Fdashboard")
        r = await client.get("/dashboard/search", params={"q": "0922161529"})
        assert r.headers["location"].startswith("/dashboard/login?next=")
        assert (await client.get("/dashboard/fragments/figures")).status_code == 401
        assert (await client.get("/dashboard/rejected")).status_code == 303
        r = await client.post("/dashboard/rejected/1/replay", data={})
        assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login?next=%2Fdashboard")

        login = await client.get("/dashboard/login", params={"next": "/dashboard/rejected"})
        assert login.status_code == 200
        assert '<label for="key">API key</label>' in login.text
        assert 'value="/dashboard/rejected"' in login.text

        r = await log_in(client, "wrong-key")
        assert r.status_code == 401
        assert "not accepted" in r.text
        assert "set-cookie" not in r.headers

        r = await client.post(
            "/dashboard/login", data={"key": "dash-key-two", "next": "/dashboard/rejected"}
        )
        assert (r.status_code, r.headers["location"]) == (303, "/dashboard/rejected")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("dlr_dashboard=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert "Secure" not in cookie
        assert "dash-key" not in cookie
        html = (await client.get("/dashboard")).text
        assert figure(html, "deliveries") == "6"
        assert_masked(html)
        # the cookie opens the dashboard only: /v1 still wants the key itself
        assert (await client.get("/v1/stats")).status_code == 401

        token = csrf_of(html)
        assert (await client.post("/dashboard/logout", data={"csrf": "x"})).status_code == 403
        r = await client.post("/dashboard/logout", data={"csrf": token})
        assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login")
        assert "Max-Age=0" in r.headers["set-cookie"]
        assert (await client.get("/dashboard")).status_code == 303


async def test_removing_a_key_ends_its_sessions(app_factory: Any) -> None:
    async with app_factory(api_keys=KEYS) as (_, client):
        r = await log_in(client, "dash-key-one")
        cookie = r.cookies["dlr_dashboard"]
    async with app_factory(api_keys="dash-key-one") as (_, client):
        client.cookies.set("dlr_dashboard", cookie, path="/dashboard")
        assert (await client.get("/dashboard")).status_code == 200
    async with app_factory(api_keys="dash-key-two,dash-key-three") as (_, client):
        client.cookies.set("dlr_dashboard", cookie, path="/dashboard")
        assert (await client.get("/dashboard")).status_code == 303
    async with app_factory() as (_, client):  # no keys any more: open, a new session
        client.cookies.set("dlr_dashboard", cookie, path="/dashboard")
        r = await client.get("/dashboard")
        assert r.status_code == 200
        assert r.cookies["dlr_dashboard"] not in ("", cookie)


async def test_cookie_is_secure_over_https_and_behind_a_trusted_proxy(app_factory: Any) -> None:
    async with app_factory(api_keys=KEYS) as (app, client):
        https = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="https://testserver")
        async with https:
            r = await log_in(https)
            assert "; Secure" in r.headers["set-cookie"]
        r = await client.post(
            "/dashboard/login",
            data={"key": "dash-key-one"},
            headers={"x-forwarded-proto": "https"},
        )
        assert "Secure" not in r.headers["set-cookie"]  # not from a trusted proxy
    async with app_factory(api_keys=KEYS, trusted_proxies="127.0.0.1/32") as (_, client):
        r = await client.post(
            "/dashboard/login",
            data={"key": "dash-key-one"},
            headers={"x-forwarded-proto": "https"},
        )
        assert "; Secure" in r.headers["set-cookie"]


async def test_login_refuses_other_sites_and_foreign_next_targets(app_factory: Any) -> None:
    async with app_factory(api_keys=KEYS) as (_, client):
        for target in ("//evil.example/x", "https://evil.example", "/dashboard/../v1", "/v1/stats"):
            r = await client.post("/dashboard/login", data={"key": "dash-key-one", "next": target})
            assert r.status_code == 303
            location = r.headers["location"]
            assert location == "/dashboard", (target, location)
        r = await client.post(
            "/dashboard/login",
            data={"key": "dash-key-one"},
            headers={"origin": "https://evil.example"},
        )
        assert r.status_code == 403
    async with app_factory() as (_, client):  # without keys there is nothing to log in to
        r = await client.get("/dashboard/login")
        assert (r.status_code, r.headers["location"]) == (303, "/dashboard")


async def test_many_wrong_keys_from_one_address_lock_its_login_for_a_while(
    app_factory: Any,
) -> None:
    async with app_factory(api_keys=KEYS, trusted_proxies="127.0.0.1/32") as (app, client):
        throttle = app.app_state.key_throttle
        now = [1000.0]
        throttle.clock = lambda: now[0]
        guesser = {"x-forwarded-for": "203.0.113.9"}
        for _ in range(throttle.allowed):
            r = await client.post("/dashboard/login", data={"key": "guess"}, headers=guesser)
            assert r.status_code == 401
            now[0] += 1
        # locked now, even with the right key: guessing would otherwise go on
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=guesser)
        assert r.status_code == 429
        assert 0 < int(r.headers["retry-after"]) <= throttle.window
        assert "Too many keys" in r.text and "from your address" in r.text
        assert "set-cookie" not in r.headers
        # /v1 counts the same refusals: the address is locked there too
        r = await client.get("/v1/stats", headers={**guesser, "x-api-key": "dash-key-one"})
        assert r.status_code == 429
        # another address is not held back
        other = {"x-forwarded-for": "198.51.100.4"}
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=other)
        assert r.status_code == 303
        # once the first failure has left the window, one more try is allowed
        now[0] = 1000.0 + throttle.window + 0.5
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=guesser)
        assert r.status_code == 303
        # and a success forgets the address's failures
        r = await client.post("/dashboard/login", data={"key": "guess"}, headers=guesser)
        assert r.status_code == 401


async def test_the_login_lock_counts_an_ipv6_client_by_its_64(app_factory: Any) -> None:
    async with app_factory(api_keys=KEYS, trusted_proxies="127.0.0.1/32") as (app, client):
        throttle = app.app_state.key_throttle
        for i in range(throttle.allowed):  # a new address of the same /64 for each guess
            rotating = {"x-forwarded-for": f"2001:db8:1:2::{i + 1:x}"}
            r = await client.post("/dashboard/login", data={"key": "guess"}, headers=rotating)
            assert r.status_code == 401
        fresh = {"x-forwarded-for": "2001:db8:1:2:ffff:ffff:ffff:ffff"}
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=fresh)
        assert r.status_code == 429
        neighbour = {"x-forwarded-for": "2001:db8:1:3::1"}  # the next /64: someone else
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=neighbour)
        assert r.status_code == 303


async def test_refused_logins_from_everywhere_pause_logins_for_everyone(
    app_factory: Any,
) -> None:
    async with app_factory(api_keys=KEYS, trusted_proxies="127.0.0.1/32") as (app, client):
        throttle = app.app_state.key_throttle
        now = [5000.0]
        throttle.clock = lambda: now[0]
        cap = throttle.login_failures_per_minute
        for i in range(cap):  # one guess each from many addresses: no address is locked
            spread = {"x-forwarded-for": f"198.18.{i // 250}.{i % 250 + 1}"}
            r = await client.post("/dashboard/login", data={"key": "guess"}, headers=spread)
            assert r.status_code == 401
        # the form checks no key now, from any address: guessing from many is as slow
        somebody = {"x-forwarded-for": "192.0.2.77"}
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=somebody)
        assert r.status_code == 429
        assert 0 < int(r.headers["retry-after"]) <= 60
        assert "logins are paused for everyone" in r.text
        # the API's keys are not typed by people: /v1 keeps answering its clients
        r = await client.get("/v1/stats", headers={**somebody, "x-api-key": "dash-key-one"})
        assert r.status_code == 200
        # a minute after the burst, logins work again
        now[0] += 61
        r = await client.post("/dashboard/login", data={"key": "dash-key-one"}, headers=somebody)
        assert r.status_code == 303


async def test_logging_out_revokes_the_session_in_every_process(
    app_factory: Any, database_url: str
) -> None:
    async with app_factory(api_keys=KEYS) as (_, one), app_factory(api_keys=KEYS) as (_, two):
        r = await log_in(one)
        cookie = r.cookies["dlr_dashboard"]
        two.cookies.set("dlr_dashboard", cookie, path="/dashboard")
        assert (await two.get("/dashboard")).status_code == 200  # the same session, elsewhere
        token = csrf_of((await one.get("/dashboard")).text)
        r = await one.post("/dashboard/logout", data={"csrf": token})
        assert r.status_code == 303
        # the old cookie, kept by whoever copied it, opens nothing in any process
        for client in (one, two):
            client.cookies.set("dlr_dashboard", cookie, path="/dashboard")
            r = await client.get("/dashboard")
            assert (r.status_code, r.headers["location"]) == (
                303,
                "/dashboard/login?next=%2Fdashboard",
            )
            assert (await client.get("/dashboard/fragments/figures")).status_code == 401
        # logging in again is a new session, which works
        r = await log_in(two)
        assert r.status_code == 303
        assert (await two.get("/dashboard")).status_code == 200


async def test_the_shared_figures_equal_the_stats_and_reread_closed_days(
    app_factory: Any,
) -> None:
    from app.dashboard.data import DAYS, OverviewCache, stats_window

    zone = ZoneInfo("Asia/Taipei")
    async with app_factory() as (app, client):
        await seed(client)
        cache, eager = OverviewCache(fresh=0, closed=3600), OverviewCache(fresh=0, closed=0)
        async with app.app_state.sessionmaker() as session:
            shared = await cache.get(session, zone)
            direct = await stats_window(session, zone, "day", DAYS, shared.now)
        assert shared.days == direct
        assert shared.days["totals"]["deliveries"] == 7

        two_days_ago = report(ID="B4", msgid="late", donetime=taipei_ago(2 * 24 * 60))
        today = report(ID="B4", msgid="now", donetime=taipei_ago(0))
        for fields in (two_days_ago, today):
            assert (await client.post(CB, data=fields)).status_code == 200
        async with app.app_state.sessionmaker() as session:
            # the closed days are kept for an hour here; today and the last 24 hours are not
            kept = await cache.get(session, zone)
            assert kept.days["totals"]["deliveries"] == 8
            assert kept.hours["totals"]["deliveries"] == 7
            assert (await eager.get(session, zone)).days["totals"]["deliveries"] == 9


async def test_a_recorded_send_without_reports_has_a_batch_view(app_factory: Any) -> None:
    from app.dashboard.data import OverviewCache
    from app.gateway.client import SendResult
    from app.gateway.rules import OutboundMessage
    from app.gateway.sends import record_send

    now = dt.datetime.now(dt.UTC)
    message = OutboundMessage(("+886911222333", "+886922161529"), "hello", "chinese", None)
    result = SendResult("S77", "now", "SendSMS", "00\nS77")
    async with app_factory() as (app, client):
        app.app_state.dashboard_cache = OverviewCache(fresh=0)  # every page reads afresh
        async with app.app_state.sessionmaker.begin() as session:
            await record_send(session, message, result, created_at=now, next_check_at=now)
        r = await client.get("/dashboard/search", params={"q": "S77"})
        assert r.headers["location"] == "/dashboard/batches/S77"
        html = (await client.get("/dashboard/batches/S77")).text
        assert figure(html, "pending") == "2" and figure(html, "deliveries") == "0"
        assert "2 of the numbers this service sent to in this batch have no report yet" in html
        assert "No report for this batch yet." in html
        overview = (await client.get("/dashboard")).text
        assert (figure(overview, "pending"), figure(overview, "unreported")) == ("0", "2")
        fields = report(ID="S77", msgid="s1", mobile="0911222333", donetime=taipei_ago(1))
        assert (await client.post(CB, data=fields)).status_code == 200
        html = (await client.get("/dashboard/batches/S77")).text
        batch = (await client.get("/v1/batches/S77")).json()
        for name in ("deliveries", "delivered", "failed", "pending"):
            assert figure(html, name) == str(batch[name])
        assert "1 of the numbers" in html
        assert figure((await client.get("/dashboard")).text, "unreported") == "1"
        assert_masked(html)
