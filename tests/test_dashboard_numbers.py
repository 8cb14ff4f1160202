"""The dashboard's numbers: the overview's panel of numbers that keep failing, the number page,
and suppressing and lifting there behind the same CSRF checks as a replay."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import report
from tests.test_dashboard import CB, csrf_of, figure, log_in, taipei_ago

FAILING = {"0933444001": 3, "0933444002": 1, "0933444003": 2}
UNMASKED = [n[1:] for n in FAILING]


async def seed(client: httpx.AsyncClient) -> None:
    for i, (mobile, streak) in enumerate(FAILING.items()):
        ok = report(ID="B1", msgid=f"ok{i}", mobile=mobile, donetime=taipei_ago(90))
        assert (await client.post(CB, data=ok)).status_code == 200
        for f in range(streak):
            fields = report(
                ID="B1",
                msgid=f"f{i}-{f}",
                mobile=mobile,
                statusstr="UNDELIV",
                statuscode="0",
                donetime=taipei_ago(60 - f),
            )
            assert (await client.post(CB, data=fields)).status_code == 200


def assert_masked(html: str) -> None:
    for number in UNMASKED:
        assert number not in html, f"{number} shown unmasked"


def number_links(html: str) -> list[str]:
    return [
        link.replace("&amp;", "&")
        for link in re.findall(r'href="(/dashboard/numbers/[^"]+)"', html)
    ]


async def test_the_overview_names_the_numbers_that_keep_failing(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    put = await client.put("/v1/suppressions/0933444003", json={"reason": "asked"})
    assert put.status_code == 200
    html = (await client.get("/dashboard")).text
    assert 'id="failing-heading">Numbers that keep failing</h2>' in html
    assert_masked(html)
    links = number_links(html)
    assert [urlsplit(link).path for link in links] == [
        "/dashboard/numbers/0933***001",
        "/dashboard/numbers/0933***003",
        "/dashboard/numbers/0933***002",
    ]
    assert [figure(html, f"streak-{i}") for i in (1, 2, 3)] == ["3", "2", "1"]
    assert html.count("suppressed, by hand") == 1
    # the live fragment carries the panel too
    fragment = (await client.get("/dashboard/fragments/figures")).text
    assert number_links(fragment) == links


async def test_the_overview_says_when_no_number_fails(client: httpx.AsyncClient) -> None:
    ok = report(ID="B1", msgid="ok", mobile="0933444009", donetime=taipei_ago(5))
    assert (await client.post(CB, data=ok)).status_code == 200
    html = (await client.get("/dashboard")).text
    assert "No number has failed since its last delivered message." in html


async def test_the_number_page_shows_what_the_api_says(client: httpx.AsyncClient) -> None:
    await seed(client)
    link = number_links((await client.get("/dashboard")).text)[0]
    page = await client.get(link)
    assert page.status_code == 200
    html = page.text
    assert_masked(html)
    api = (await client.get("/v1/numbers/0933444001")).json()
    for name in ("failure_streak", "deliveries", "delivered", "failed", "pending"):
        assert figure(html, name) == str(api[name])
    assert figure(html, "suppressed") == "Sends reach this number."
    assert html.count("/dashboard/deliveries/") == 4  # its deliveries, linked
    assert "Reveal number" in html
    ref = parse_qs(urlsplit(link).query)["ref"][0]
    revealed = await client.get(link.split("?")[0], params={"ref": ref, "reveal": "true"})
    assert "0933444001" in revealed.text

    # another number's handle, a forged one, a spelling that is not a masked number
    other = parse_qs(urlsplit(number_links((await client.get("/dashboard")).text)[1]).query)
    for path, params in (
        (link.split("?")[0], {"ref": other["ref"][0]}),
        (link.split("?")[0], {"ref": "forged"}),
        (link.split("?")[0], {}),
        ("/dashboard/numbers/0933444001", {"ref": ref}),
        ("/dashboard/numbers/0933***999", {"ref": ref}),
    ):
        r = await client.get(path, params=params)
        assert r.status_code == 404, (path, params)
        assert "No such number" in r.text


async def test_suppress_and_lift_from_the_number_page(client: httpx.AsyncClient) -> None:
    await seed(client)
    link = number_links((await client.get("/dashboard")).text)[0]
    path, ref = link.split("?")[0], parse_qs(urlsplit(link).query)["ref"][0]
    html = (await client.get(link)).text
    token = csrf_of(html)
    assert f'action="{path}/suppress"' in html

    for form, headers in (
        ({"ref": ref, "reason": "asked"}, {}),
        ({"ref": ref, "reason": "asked", "csrf": "forged"}, {}),
        ({"ref": ref, "reason": "asked", "csrf": token}, {"origin": "https://evil.example"}),
    ):
        r = await client.post(f"{path}/suppress", data=form, headers=headers)
        assert (r.status_code, "Form refused" in r.text) == (403, True), form
    assert (await client.get("/v1/numbers/0933444001")).json()["suppressed"] is None
    r = await client.post(f"{path}/suppress", data={"ref": ref, "reason": " ", "csrf": token})
    assert r.status_code == 422

    r = await client.post(
        f"{path}/suppress", data={"ref": ref, "reason": "customer asked", "csrf": token}
    )
    assert r.status_code == 303
    assert (
        r.headers["location"].startswith(f"{path}?ref=")
        and "done=suppressed" in r.headers["location"]
    )
    suppressed = (await client.get("/v1/numbers/0933444001")).json()["suppressed"]
    assert (suppressed["source"], suppressed["reason"]) == ("manual", "customer asked")
    html = (await client.get(r.headers["location"])).text
    assert "Suppressed: sends leave this number out" in html
    assert figure(html, "suppressed").startswith("Suppressed by hand")
    assert f'action="{path}/lift"' in html

    r = await client.post(f"{path}/lift", data={"ref": ref, "csrf": token})
    assert r.status_code == 303 and "done=lifted" in r.headers["location"]
    lifted = (await client.get("/v1/numbers/0933444001")).json()
    assert (lifted["suppressed"], lifted["failure_streak"]) == (None, 0)
    assert "Suppression lifted" in (await client.get(r.headers["location"])).text


async def test_the_number_pages_need_a_login_when_keys_are_set(app_factory: Any) -> None:
    async with app_factory(api_keys=["dash-key-one", "dash-key-two"]) as (_, client):
        await seed(client)
        r = await client.get("/dashboard/numbers/0933***001", params={"ref": "x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
        r = await client.post("/dashboard/numbers/0933***001/lift", data={"ref": "x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
        await log_in(client)
        link = number_links((await client.get("/dashboard")).text)[0]
        assert (await client.get(link)).status_code == 200


async def test_a_read_key_may_look_but_not_suppress(app_factory: Any) -> None:
    read, send = "read-key-0123456789abcdef", "send-key-0123456789abcdef"
    async with app_factory(api_keys=[read], send_api_keys=[send]) as (_, client):
        await seed(client)
        await log_in(client, read)
        link = number_links((await client.get("/dashboard")).text)[0]
        path, ref = link.split("?")[0], parse_qs(urlsplit(link).query)["ref"][0]
        html = (await client.get(link)).text
        assert "needs a key of" in html and "/suppress" not in html
        token = csrf_of(html)
        r = await client.post(f"{path}/suppress", data={"ref": ref, "reason": "x", "csrf": token})
        assert (r.status_code, "Not with this key" in r.text) == (403, True)
        r = await client.post(f"{path}/lift", data={"ref": ref, "csrf": token})
        assert r.status_code == 403
        numbers = await client.get("/v1/numbers/0933444001", headers={"x-api-key": read})
        assert numbers.json()["suppressed"] is None

        await log_in(client, send)
        html = (await client.get(link)).text
        r = await client.post(
            f"{path}/suppress", data={"ref": ref, "reason": "x", "csrf": csrf_of(html)}
        )
        assert r.status_code == 303
