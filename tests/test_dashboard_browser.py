"""The dashboard in a real headless Chromium over a real server: figures, search, login, refresh."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, ROOT, LiveServer, report, require_tool
from tests.test_dashboard import (
    QUARANTINED_NUMBER,
    SEEDED_NUMBERS,
    quarantined_report,
    seed_reports,
    taipei_ago,
)

# One database is enough here: tests/test_dashboard.py runs the same pages on both.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "browser-key-1"
TIMEOUT_MS = 15_000


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Chromium context with a fresh profile, driven by Playwright (no browser download)."""
    require_tool("chromium", "the dashboard's browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - a dev dependency
        message = "playwright is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            env={**os.environ, "HOME": str(tmp_path)},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def seed_over_http(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        for fields in seed_reports():
            assert client.post("/callbacks/mboxii", data=fields).status_code == 200
        assert client.post("/callbacks/mboxii", data=quarantined_report()).status_code == 422


def api(server: LiveServer, path: str, **params: str) -> Any:
    headers = {"X-API-Key": KEY}
    r = httpx.get(server.url + path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def text_of(page: Any, name: str) -> str:
    return str(page.locator(f'[data-figure="{name}"]').first.inner_text()).strip()


def assert_masked(page: Any) -> None:
    html = page.content()
    for number in [*SEEDED_NUMBERS, QUARANTINED_NUMBER]:
        assert number not in html, f"{number} shown unmasked"


def test_overview_search_and_live_refresh(
    live_server: Callable[..., LiveServer], browser: Any
) -> None:
    server = live_server()
    seed_over_http(server)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    page.goto(server.url + "/")
    assert page.url == server.url + "/dashboard"
    assert page.locator("html").get_attribute("lang") == "en"
    page.get_by_role("heading", name="Delivery reports").wait_for()
    # keyboard: the first Tab reaches the skip link, visibly focused
    page.keyboard.press("Tab")
    focused = page.evaluate(
        "el => [el.textContent, getComputedStyle(el).outlineStyle]",
        page.evaluate_handle("document.activeElement"),
    )
    assert focused == ["Skip to content", "solid"]
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    # the figures on the page are the API's
    chart = page.locator("#hours-chart")
    hours = api(
        server,
        "/v1/stats",
        interval="hour",
        **{"from": chart.get_attribute("data-from"), "to": chart.get_attribute("data-to")},
    )
    chart = page.locator("#days-chart")
    days = api(
        server,
        "/v1/stats",
        interval="day",
        **{"from": chart.get_attribute("data-from"), "to": chart.get_attribute("data-to")},
    )
    totals = hours["totals"]
    assert text_of(page, "deliveries") == str(totals["deliveries"]) == "6"
    assert text_of(page, "failed") == str(totals["failed"])
    assert text_of(page, "delivered") == str(totals["delivered"])
    assert text_of(page, "delivery_rate") == f"{totals['delivery_rate'] * 100:.1f}%"
    assert text_of(page, "pending") == str(totals["pending"])
    assert text_of(page, "deliveries_30d") == str(days["totals"]["deliveries"])
    for word, count in totals["by_status"].items():
        assert text_of(page, f"status-{word}") == str(count)
    assert text_of(page, "quarantine") == "1"
    assert page.locator("#failures tbody tr").count() == 2
    # screenshots as test artifacts, and the phone width: no horizontal scrolling
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # the charts have a name, a description and a table for those who cannot see them
    svg = page.get_by_role("img", name="Deliveries per hour, last 24 hours")
    assert "6 deliveries in 24 hours" in svg.locator("desc").text_content()
    page.get_by_text("Deliveries per hour, last 24 hours as a table").click()
    assert page.locator("#hours-table tbody tr").count() == 24
    assert_masked(page)

    # search a number written another way, by keyboard: its page, then its delivery with
    # the history
    search = page.get_by_label("Number, msgid or batch ID")
    search.fill("+886 922-161-529")
    search.press("Enter")
    page.get_by_role("heading", name="Number 0922***529").wait_for()
    assert_masked(page)
    page.get_by_role("link", name="d1").click()
    page.get_by_role("heading", name="Delivery d1").wait_for()
    assert page.locator("table.history tbody tr").count() == 2
    assert page.locator("[data-number]").inner_text() == "0922***529"
    page.get_by_role("button", name="Reveal number").click()
    page.get_by_role("link", name="Hide the number").wait_for()
    assert page.locator("[data-number]").inner_text() == "0922161529"

    # a batch: the same counts as the API
    search = page.get_by_label("Number, msgid or batch ID")
    search.fill("B2")
    search.press("Enter")
    page.get_by_role("heading", name="Batch B2").wait_for()
    batch = api(server, "/v1/batches/B2")
    for name in ("deliveries", "delivered", "failed", "pending"):
        assert text_of(page, name) == str(batch[name])

    # the quarantine: listed with the number masked; a replay that still fails says why
    page.goto(server.url + "/dashboard")
    page.get_by_role("link", name="Review and replay").click()
    page.get_by_role("heading", name="Request #1").wait_for()
    assert_masked(page)
    page.get_by_role("button", name="Replay request #1").click()
    page.get_by_text("Request #1 still fails validation").wait_for()

    # live refresh: a new callback shows up without reloading the page
    page.goto(server.url + "/dashboard?refresh=2")
    page.evaluate("window.__notReloaded = true")
    before = int(text_of(page, "deliveries"))
    fields = report(ID="B5", msgid="live1", mobile="0944555666", donetime=taipei_ago(1))
    assert httpx.post(server.url + "/callbacks/mboxii", data=fields).status_code == 200
    page.wait_for_function(
        "n => document.querySelector('[data-figure=\"deliveries\"]').textContent.trim() == n",
        arg=str(before + 1),
    )
    assert page.evaluate("window.__notReloaded") is True
    assert "Updated" in page.locator("#refresh-status").inner_text()

    # a hidden tab asks nothing; shown again, it catches up at once
    set_hidden = """hidden => {
        Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    page.evaluate(set_hidden, True)
    page.wait_for_timeout(500)  # lets an update already under way land first
    fields = report(ID="B5", msgid="live-hidden", mobile="0944555668", donetime=taipei_ago(1))
    assert httpx.post(server.url + "/callbacks/mboxii", data=fields).status_code == 200
    page.wait_for_timeout(3000)  # longer than the refresh period
    assert text_of(page, "deliveries") == str(before + 1)
    page.evaluate(set_hidden, False)
    page.wait_for_function(
        "n => document.querySelector('[data-figure=\"deliveries\"]').textContent.trim() == n",
        arg=str(before + 2),
    )
    before += 1

    # paused, the figures stay; resumed, they catch up at once
    page.get_by_role("button", name="Pause live updates").click()
    page.wait_for_timeout(500)  # lets an update already under way land first
    fields = report(ID="B5", msgid="live2", mobile="0944555667", donetime=taipei_ago(1))
    assert httpx.post(server.url + "/callbacks/mboxii", data=fields).status_code == 200
    page.wait_for_timeout(3000)  # longer than the refresh period
    assert text_of(page, "deliveries") == str(before + 1)
    page.get_by_role("button", name="Resume live updates").click()
    page.wait_for_function(
        "n => document.querySelector('[data-figure=\"deliveries\"]').textContent.trim() == n",
        arg=str(before + 2),
    )
    assert page.evaluate("window.__notReloaded") is True
    assert errors == []


def test_login_and_logout_with_api_keys(
    live_server: Callable[..., LiveServer], browser: Any
) -> None:
    server = live_server(DLR_API_KEYS=f"{KEY},another-key")
    seed_over_http(server)
    page = browser.new_page()
    page.goto(server.url + "/dashboard/batches/B1")
    assert "/dashboard/login" in page.url
    key = page.get_by_label("API key")
    key.fill("not-a-key")
    key.press("Enter")
    page.get_by_role("alert").wait_for()
    assert "not accepted" in page.get_by_role("alert").inner_text()

    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Batch B1").wait_for()
    assert page.url == server.url + "/dashboard/batches/B1"
    (cookie,) = [c for c in browser.cookies() if c["name"] == "dlr_dashboard"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert KEY not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # out of the scripts' reach

    page.goto(server.url + "/dashboard")
    assert text_of(page, "deliveries") == "6"
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("heading", name="Log in").wait_for()
    page.goto(server.url + "/dashboard")
    assert "/dashboard/login" in page.url


def test_numbers_that_keep_failing_suppressed_and_lifted(
    live_server: Callable[..., LiveServer], browser: Any
) -> None:
    server = live_server(DLR_SUPPRESS_AFTER_FAILURES="3")
    seed_over_http(server)
    with httpx.Client(base_url=server.url) as client:
        for i in range(3):
            fields = report(
                ID="B8",
                msgid=f"nf{i}",
                mobile="0933111222",
                statuscode="0",
                statusstr="UNDELIV",
                donetime=taipei_ago(15 - i),
            )
            assert client.post("/callbacks/mboxii", data=fields).status_code == 200
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/dashboard")
    panel = page.locator("#failing-numbers")
    panel.get_by_role("heading", name="Numbers that keep failing").wait_for()
    assert panel.locator("tbody tr").count() == 2  # 0933***222 (4 failures), 0933***223 (1)
    assert "suppressed, automatically" in panel.locator("tbody tr").first.inner_text()
    assert_masked(page)

    panel.get_by_role("link", name="0933***222").click()
    page.get_by_role("heading", name="Number 0933***222").wait_for()
    number = api(server, "/v1/numbers/0933111222")
    assert text_of(page, "failure_streak") == str(number["failure_streak"]) == "4"
    assert "Suppressed automatically" in text_of(page, "suppressed")
    assert_masked(page)

    page.get_by_role("button", name="Lift the suppression").click()
    page.get_by_text("Suppression lifted").wait_for()
    assert text_of(page, "failure_streak") == "0"
    assert api(server, "/v1/numbers/0933111222")["suppressed"] is None

    page.get_by_label("Reason for suppressing it").fill("the customer asked us to stop")
    page.get_by_role("button", name="Suppress this number").click()
    page.get_by_text("Suppressed: sends leave this number out").wait_for()
    suppressed = api(server, "/v1/numbers/0933111222")["suppressed"]
    assert (suppressed["source"], suppressed["reason"]) == (
        "manual",
        "the customer asked us to stop",
    )
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-number-phone.png"), full_page=True)
    assert errors == []
