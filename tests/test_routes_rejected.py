"""The quarantine through HTTP and the CLI: list, replay, replay-rejected."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select

from app.cli import main
from app.db.models import Report
from tests.conftest import make_settings, report, running_app

CB = "/callbacks/mboxii"
# A zone 20 hours behind Taiwan: Taiwan wall times read in it land far in the future.
WRONG_ZONE = "Etc/GMT+12"


def taipei_in(hours: float) -> str:
    """The gateway's spelling of a Taiwan wall time `hours` from now."""
    when = dt.datetime.now(ZoneInfo("Asia/Taipei")) + dt.timedelta(hours=hours)
    return when.strftime("%Y/%m/%d %H:%M:%S")


async def reject(client: httpx.AsyncClient, **kwargs: Any) -> int:
    r = await client.post(CB, **kwargs)
    assert r.status_code in (415, 422), r.text
    return int(r.json()["rejected_id"])


async def count_reports(app: Any) -> int:
    async with app.app_state.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(Report))).scalar_one())


async def test_list_newest_first_with_cursor_and_base64(client: httpx.AsyncClient) -> None:
    ids = [await reject(client, data=report(msgid=f"m{i}", mobile="12345")) for i in range(3)]
    raw = b"ID=1&msgid=\xff\xfe&mobile=0922161529"
    ids.append(
        await reject(
            client, content=raw, headers={"content-type": "application/x-www-form-urlencoded"}
        )
    )
    ids.append(await reject(client, content=b"hello", headers={"content-type": "text/plain"}))

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/rejected", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [item["id"] for item in seen] == sorted(ids, reverse=True)

    text_plain, binary, first = seen[0], seen[1], seen[-1]
    assert text_plain["reason"] == "unsupported_media_type"
    assert (text_plain["body"], text_plain["body_encoding"]) == ("hello", "utf-8")
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == raw
    assert first["reason"] == "invalid_fields"
    assert first["errors"][0]["field"] == "mobile"
    assert first["method"] == "POST"
    assert first["content_type"] == "application/x-www-form-urlencoded"
    assert first["count"] == 1
    assert first["replayed_at"] is None
    assert first["received_at"].endswith("Z")
    assert first["source_address"] == "127.0.0.1"

    only = (await client.get("/v1/rejected", params={"reason": "unsupported_media_type"})).json()
    assert [item["id"] for item in only["items"]] == [ids[-1]]
    assert only["next_cursor"] is None


async def test_rejected_list_bad_parameters(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await reject(client, data=report(msgid=f"m{i}", mobile="12345"))
    cursor = (await client.get("/v1/rejected", params={"limit": 1})).json()["next_cursor"]
    assert cursor
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"reason": "bored"},
        {"cursor": "garbage"},
        {"cursor": cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")},
        {"cursor": cursor, "reason": "invalid_fields"},  # made for other filters
    ):
        r = await client.get("/v1/rejected", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"] == "invalid_parameters"


async def test_replay_after_fixing_the_gateway_zone(app_factory: Any) -> None:
    donetime = taipei_in(5)
    async with app_factory(gateway_timezone=WRONG_ZONE) as (_, client):
        r = await client.post(CB, data=report(donetime=donetime))
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "donetime"
        rejected_id = r.json()["rejected_id"]
        still = await client.post(f"/v1/rejected/{rejected_id}/replay")
        assert still.status_code == 422
        assert still.json()["error"] == "invalid_callback"
        assert still.json()["errors"][0]["field"] == "donetime"

    async with app_factory() as (app, client):  # the corrected zone: Asia/Taipei
        r = await client.post(f"/v1/rejected/{rejected_id}/replay")
        assert r.status_code == 200, r.text
        delivery = r.json()
        expected = dt.datetime.strptime(donetime, "%Y/%m/%d %H:%M:%S") - dt.timedelta(hours=8)
        assert delivery["done_at"] == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert (delivery["msgid"], delivery["mobile"]) == ("208217564", "+886922161529")
        assert (delivery["outcome"], delivery["reports"]) == ("delivered", 1)

        listed = (await client.get("/v1/rejected")).json()["items"][0]
        assert listed["id"] == rejected_id
        assert listed["replayed_at"] is not None
        # The report counts as received when the gateway sent it, not when it was replayed.
        assert delivery["first_received_at"] == listed["received_at"]

        again = await client.post(f"/v1/rejected/{rejected_id}/replay")
        assert again.status_code == 200
        assert again.json()["reports"] == 1
        assert await count_reports(app) == 1
        # The gateway's own retry of the same report is now a duplicate too.
        assert (await client.post(CB, data=report(donetime=donetime))).status_code == 200
        assert await count_reports(app) == 1


async def test_replay_still_invalid_and_unknown_ids(app_factory: Any) -> None:
    async with app_factory() as (app, client):
        missing = await reject(client, data=report(statusstr=None))
        media = await reject(client, content=b"ID=1", headers={"content-type": "text/plain"})
        too_late = await reject(client, data=report(donetime=taipei_in(30)))

        r = await client.post(f"/v1/rejected/{missing}/replay")
        assert r.status_code == 422
        assert r.json() == {
            "error": "invalid_callback",
            "errors": [{"field": "statusstr", "message": "is required"}],
        }
        r = await client.post(f"/v1/rejected/{media}/replay")
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "content-type"

        unknown = await client.post("/v1/rejected/999999/replay")
        assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
        assert (await client.post("/v1/rejected/abc/replay")).status_code == 422
        assert (await client.post("/v1/rejected/99999999999999999999/replay")).status_code == 422

        r = await client.post(f"/v1/rejected/{too_late}/replay")
        assert r.status_code == 422
        assert r.json()["errors"] == [
            {"field": "donetime", "message": "is more than 24 hours after receipt"}
        ]
        items = (await client.get("/v1/rejected")).json()["items"]
        assert [item["replayed_at"] for item in items] == [None, None, None]
        assert await count_reports(app) == 0


async def test_replay_is_503_when_the_writer_cannot_store(app_factory: Any) -> None:
    donetime = taipei_in(5)
    async with app_factory(gateway_timezone=WRONG_ZONE) as (_, client):
        rejected_id = await reject(client, data=report(donetime=donetime))
    async with app_factory() as (app, client):
        await app.app_state.writer.stop()
        r = await client.post(f"/v1/rejected/{rejected_id}/replay")
        assert r.status_code == 503
        assert r.json()["error"] == "unavailable"
        assert r.headers["retry-after"] == "5"
        assert await count_reports(app) == 0
        items = (await client.get("/v1/rejected")).json()["items"]
        assert items[0]["replayed_at"] is None


async def test_replay_needs_an_api_key(app_factory: Any) -> None:
    async with app_factory(api_keys="k1") as (_, client):
        assert (await client.get("/v1/rejected")).status_code == 401
        assert (await client.post("/v1/rejected/1/replay")).status_code == 401
        assert (await client.get("/v1/stats")).status_code == 401
        assert (await client.get("/v1/batches/1")).status_code == 401
        ok = await client.get("/v1/rejected", headers={"X-API-Key": "k1"})
        assert ok.status_code == 200


# ---------------------------------------------------------------- the CLI


async def _quarantine_for_cli(database_url: str) -> tuple[list[int], int]:
    settings = make_settings(database_url, gateway_timezone=WRONG_ZONE)
    async with running_app(settings) as (_, client):
        fixable = [
            await reject(client, data=report(msgid=f"cli-{i}", donetime=taipei_in(5)))
            for i in range(2)
        ]
        broken = await reject(client, data=report(msgid="cli-broken", mobile="12345"))
    return fixable, broken


async def _deliveries(database_url: str) -> list[Any]:
    async with running_app(make_settings(database_url)) as (app, client):
        found = [
            (await client.get(f"/v1/deliveries/cli-{i}")).json().get("reports") for i in range(2)
        ]
        return [*found, await count_reports(app)]


def test_cli_replays_every_row_not_yet_replayed(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    fixable, broken = asyncio.run(_quarantine_for_cli(database_url))
    monkeypatch.setenv("DLR_DATABASE_URL", database_url)
    monkeypatch.setenv("DLR_GATEWAY_TIMEZONE", "Asia/Taipei")
    monkeypatch.chdir(tmp_path)  # no stray .env file

    assert main(["replay-rejected"]) == 0
    out = capsys.readouterr().out
    assert f"#{fixable[0]}: stored msgid cli-0" in out
    assert f"#{broken}: still invalid: mobile" in out
    assert "replayed 2 (2 new, 0 already stored), still invalid 1" in out
    assert asyncio.run(_deliveries(database_url)) == [1, 1, 2]

    assert main(["replay-rejected"]) == 0
    assert "replayed 0 (0 new, 0 already stored), still invalid 1" in capsys.readouterr().out

    assert main(["replay-rejected", "--all"]) == 0
    assert "replayed 2 (0 new, 2 already stored), still invalid 1" in capsys.readouterr().out
    assert asyncio.run(_deliveries(database_url)) == [1, 1, 2]


def test_cli_fails_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLR_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    assert main(["replay-rejected"]) != 0
    assert "unreachable" in capsys.readouterr().err
