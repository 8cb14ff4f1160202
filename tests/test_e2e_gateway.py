"""End to end with real processes: the gateway simulator and `mboxii-dlr serve`."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.conftest import LiveServer
from tests.helpers import Simulator

pytestmark = pytest.mark.slow

API_KEY = "e2e-key"
TOKEN = "e2e-token"
TAIPEI = ZoneInfo("Asia/Taipei")


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    sim = Simulator(
        tmp_path / "simulator.log",
        "--delay",
        "0.3-1.5",
        "--drop-rate",
        "0.2",
        "--duplicate-rate",
        "0.3",
        "--reorder-rate",
        "0.3",
        "--fail-rate",
        "0.2",
        "--seed",
        "7",
    )
    yield sim
    sim.stop()


def test_dropped_callbacks_are_recovered_and_each_message_ends_right(
    database_url: str, simulator: Simulator
) -> None:
    server = LiveServer(
        database_url,
        {
            "DLR_MBOXII_CID": "acct",
            "DLR_MBOXII_CPW": "pw",
            "DLR_MBOXII_BASE_URL": simulator.url + "/api/",
            "DLR_SEND_API_KEYS": API_KEY,
            "DLR_CALLBACK_TOKENS": TOKEN,
            "DLR_RECONCILE_AFTER": "2s",
            "DLR_RECONCILE_INTERVAL": "0.5s",
        },
    )
    server.env["DLR_PUBLIC_URL"] = server.url
    server.start()
    try:
        api = httpx.Client(base_url=server.url, headers={"x-api-key": API_KEY}, timeout=10)
        five = api.post(
            "/v1/messages",
            json={"numbers": [f"09120000{i:02d}" for i in range(5)], "text": "hello five"},
        )
        assert five.status_code == 201, five.text
        twenty = api.post(
            "/v1/messages",
            json={"numbers": [f"09330000{i:02d}" for i in range(20)], "text": "你好"},
        )
        assert twenty.status_code == 201, twenty.text
        batches = [five.json()["batch_id"], twenty.json()["batch_id"]]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = [api.get(f"/v1/messages/{b}").json()["pending"] for b in batches]
            truth = {s["id"]: s for s in simulator.sends() if s["type"] == "now"}
            messages = [m for b in batches for m in truth[b]["messages"]]
            # every callback the simulator meant to make (copies, stragglers) has landed
            called = all(m["callbacks"] == len(m["planned"]) for m in messages)
            if pending == [0, 0] and called:
                break
            time.sleep(0.25)
        assert pending == [0, 0], "reports still missing after 30 s"
        assert called, "callbacks still under way after 30 s"
        # the promise: five numbers, five final deliveries, nothing pending
        summary = api.get(f"/v1/batches/{batches[0]}", params={"type": "now"}).json()
        assert (summary["deliveries"], summary["pending"]) == (5, 0)
        assert summary["delivered"] + summary["failed"] == 5

        assert len(messages) == 25
        dropped = [m for m in messages if m["dropped"]]
        assert dropped, "the seed should drop some callbacks"
        assert any(len(m["planned"]) > 1 for m in messages), "the seed should duplicate some"
        for m in messages:
            d = api.get(f"/v1/deliveries/{m['msgid']}", params={"mobile": m["mobile"]}).json()
            done = dt.datetime.strptime(m["donetime"], "%Y/%m/%d %H:%M:%S").replace(tzinfo=TAIPEI)
            # exactly one correct final state: the simulator's truth
            assert (d["status"], d["statuscode"], d["final"]) == (
                m["status"],
                m["statuscode"],
                True,
            )
            assert d["done_at"] == done.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            sources = {h["source"] for h in d["history"]}
            if m["dropped"]:
                assert sources == {"poll"}
                assert d["reports"] == 1
            else:
                # copies are one report; a stale report dated earlier is kept in the history
                distinct = {(p["statusstr"], p["donetime"]) for p in m["planned"]}
                assert d["reports"] == len(distinct)
                assert "callback" in sources
    finally:
        server.stop()
        assert "Traceback" not in getattr(server, "output", ""), server.output


def test_a_number_that_always_fails_is_suppressed_and_left_out(
    database_url: str, tmp_path: Path
) -> None:
    """The issue's promise, end to end: after N failed sends to a number, the next send
    skips it (and costs nothing for it)."""
    failing, fine = "0912999001", "0912999002"
    sim = Simulator(
        tmp_path / "simulator.log",
        *("--delay", "0.2-0.6", "--fail-rate", "0", "--fail-numbers", failing, "--seed", "3"),
    )
    server = LiveServer(
        database_url,
        {
            "DLR_MBOXII_CID": "acct",
            "DLR_MBOXII_CPW": "pw",
            "DLR_MBOXII_BASE_URL": sim.url + "/api/",
            "DLR_SEND_API_KEYS": API_KEY,
            "DLR_CALLBACK_TOKENS": TOKEN,
            "DLR_SUPPRESS_AFTER_FAILURES": "3",
        },
    )
    server.env["DLR_PUBLIC_URL"] = server.url
    server.start()
    try:
        api = httpx.Client(base_url=server.url, headers={"x-api-key": API_KEY}, timeout=10)

        def send() -> dict[str, Any]:
            sent = api.post("/v1/messages", json={"numbers": [failing, fine], "text": "hi"})
            assert sent.status_code == 201, sent.text
            body: dict[str, Any] = sent.json()
            deadline = time.monotonic() + 20
            while api.get(f"/v1/messages/{body['batch_id']}").json()["pending"]:
                assert time.monotonic() < deadline, "reports still missing after 20 s"
                time.sleep(0.1)
            return body

        for _ in range(3):
            assert send()["suppressed"] == []
        number = api.get(f"/v1/numbers/{failing}").json()
        assert (number["deliveries"], number["failed"], number["failure_streak"]) == (3, 3, 3)
        assert number["suppressed"]["source"] == "automatic"
        assert api.get(f"/v1/numbers/{fine}").json()["suppressed"] is None
        listed = api.get("/v1/numbers", params={"suppressed": "true"}).json()["items"]
        assert [n["mobile"] for n in listed] == ["+886912999001"]

        fourth = send()
        assert (fourth["numbers"], fourth["suppressed"]) == (["+886912999002"], ["+886912999001"])
        sent_to = [m["mobile"] for s in sim.sends() for m in s["messages"]]
        assert (sent_to.count(failing), sent_to.count(fine)) == (3, 4)
        alone = api.post("/v1/messages", json={"numbers": [failing], "text": "hi"})
        assert alone.status_code == 422
        assert alone.json()["error"] == "all_numbers_suppressed"
        assert len(sim.sends()) == 4
        masked = "0912***001"
        output = server.read_output()
        assert f"number {masked} suppressed automatically: 3 failed deliveries" in output
        assert "912999001" not in output
    finally:
        server.stop()
        sim.stop()
        assert "Traceback" not in getattr(server, "output", ""), server.output
