"""Three `mboxii-dlr serve` processes on one PostgreSQL, as replicas run: callbacks and their
retries spread over them, reconciliation under one rate for the deployment, the key
throttle counted in the database."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, clean_postgres
from tests.helpers import Simulator, consistency_problems, table_counts, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

API_KEY = "replicas-api-key"
TOKEN = "replicas-token"
RATE = 10  # CheckSMS calls a second, for the whole deployment
REPLICAS = 3


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    asyncio.run(clean_postgres(postgres_url))
    return postgres_url


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    # Every callback is lost: each message is known only once a replica has asked CheckSMS.
    sim = Simulator(
        tmp_path / "simulator.log",
        *("--delay", "0.1-0.3", "--drop-rate", "1", "--fail-rate", "0.2", "--seed", "11"),
    )
    yield sim
    sim.stop()


@pytest.fixture
def replicas(pg_url: str, simulator: Simulator) -> Iterator[list[LiveServer]]:
    servers = []
    for _ in range(REPLICAS):
        server = LiveServer(
            pg_url,
            {
                "DLR_SEND_API_KEYS": API_KEY,
                "DLR_CALLBACK_TOKENS": TOKEN,
                "DLR_MBOXII_CID": "acct",
                "DLR_MBOXII_CPW": "pw",
                "DLR_MBOXII_BASE_URL": simulator.url + "/api/",
                # The simulator's final times are whole seconds, up to 1.3 s after the send:
                # by 2 s every number is final, so a send needs one check.
                "DLR_RECONCILE_AFTER": "2s",
                "DLR_RECONCILE_INTERVAL": "0.2s",
                "DLR_RECONCILE_RATE": str(RATE),
                # Each replica alone could go as fast as RATE: only the shared limit holds
                # the three of them to it.
                "DLR_RECONCILE_CONCURRENCY": "4",
            },
        )
        server.env["DLR_PUBLIC_URL"] = server.url
        servers.append(server)
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
            server.log_path.unlink(missing_ok=True)
        for server in servers:
            assert "Traceback" not in server.output, server.output


def _donetime(minutes: int) -> str:
    when = dt.datetime(2026, 11, 2, 9, 0) + dt.timedelta(minutes=minutes)
    return when.strftime("%Y/%m/%d %H:%M:%S")


def _reports() -> tuple[list[dict[str, str]], dict[str, str]]:
    """Reports of 150 messages (1 to 3 each, the last final), shuffled; and each message's
    final word."""
    rng = random.Random(5)
    reports, final = [], {}
    for i in range(150):
        msgid = f"r{i:04d}"
        words = rng.choice([["DELIVRD"], ["ENROUTE", "DELIVRD"], ["ACCEPTD", "ENROUTE", "UNDELIV"]])
        for n, word in enumerate(words):
            code = "0" if word == "UNDELIV" else "1"
            reports.append(
                {
                    "ID": f"b{i // 50}",
                    "msgid": msgid,
                    "type": "Now",
                    "mobile": "0912345678",
                    "donetime": _donetime(i + n),
                    "statuscode": code,
                    "statusstr": word,
                }
            )
        final[msgid] = words[-1]
    rng.shuffle(reports)
    return reports, final


def _scrape_sum(servers: list[LiveServer], name: str) -> float:
    total = 0.0
    for server in servers:
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith(name) and line[len(name)] in " {,":
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_callbacks_and_retries_spread_over_replicas_store_each_report_once(
    pg_url: str, replicas: list[LiveServer]
) -> None:
    reports, final = _reports()
    rng = random.Random(9)
    retried = 0

    async def post_all() -> None:
        nonlocal retried
        async with httpx.AsyncClient(timeout=30) as client:
            for start in range(0, len(reports), 40):
                posts = []
                for body in reports[start : start + 40]:
                    first, second = rng.sample(replicas, 2)
                    posts.append(client.post(f"{first.url}/callbacks/mboxii/{TOKEN}", data=body))
                    if rng.random() < 0.2:
                        # the gateway's retry, at the same moment, at another replica
                        retried += 1
                        posts.append(
                            client.post(f"{second.url}/callbacks/mboxii/{TOKEN}", data=body)
                        )
                answers = await asyncio.gather(*posts)
                refused = [(a.status_code, a.text) for a in answers if a.status_code != 200]
                # What went wrong, should anything: the answers and the replicas' own words.
                assert not refused, (refused[:3], [r.read_output()[-3000:] for r in replicas])

    asyncio.run(post_all())
    assert retried > 40
    assert table_counts(pg_url)["reports"] == len(reports)
    assert table_counts(pg_url)["deliveries"] == len(final)
    api = httpx.Client(headers={"x-api-key": API_KEY}, timeout=10)
    for i, (msgid, word) in enumerate(sorted(final.items())):
        d = api.get(f"{replicas[i % REPLICAS].url}/v1/deliveries/{msgid}").json()
        assert (d["status"], d["final"]) == (word, True), msgid
        assert d["reports"] == sum(1 for r in reports if r["msgid"] == msgid)
    # every retry was a duplicate at exactly one replica
    assert _scrape_sum(replicas, "mboxii_dlr_reports_duplicate_total") == retried
    assert _scrape_sum(replicas, "mboxii_dlr_reports_received_total") == len(reports)
    assert consistency_problems(pg_url) == []


def test_reconciliation_keeps_one_rate_for_the_deployment_and_checks_each_send_once(
    replicas: list[LiveServer], simulator: Simulator
) -> None:
    api = httpx.Client(headers={"x-api-key": API_KEY}, timeout=10)
    batches = []
    for i in range(40):
        server = replicas[i % REPLICAS]
        sent = api.post(
            f"{server.url}/v1/messages", json={"numbers": [f"09120{i:05d}"], "text": "hi"}
        )
        assert sent.status_code == 201, sent.text
        batches.append(sent.json()["batch_id"])

    def settled() -> bool:
        return all(
            api.get(f"{replicas[0].url}/v1/messages/{b}").json()["pending"] == 0 for b in batches
        )

    # 40 checks at 10 a second, after DLR_RECONCILE_AFTER
    wait_for(settled, timeout=60, what="every send reconciled")
    checks: dict[str, Any] = httpx.get(simulator.url + "/simulator/checks").json()
    times = [call["at"] for call in checks["calls"]]
    # one rate for all three, as the gateway would count it: at most RATE calls in each
    # second of the clock (one more where a request delayed on its way, by this machine's
    # load, lands beside the next slot's)
    assert checks["max_per_second"] <= RATE + 1, checks["per_second"]
    # and it is used: the checks did not trickle
    assert len(times) / (max(times) - min(times) + 1) > RATE / 3
    # each send claimed by one replica: asked about exactly once
    per_send = Counter(call["id"] for call in checks["calls"])
    assert per_send == dict.fromkeys(batches, 1)
    # the replicas shared the work
    asked = [
        _scrape_sum([s], 'mboxii_dlr_gateway_requests_total{interface="CheckSMS"') for s in replicas
    ]
    assert sum(1 for n in asked if n) >= 2, asked


def test_the_login_throttle_counts_across_replicas(replicas: list[LiveServer]) -> None:
    for i in range(10):  # the throttle's allowance, spread over the replicas
        r = httpx.post(f"{replicas[i % REPLICAS].url}/dashboard/login", data={"key": f"guess{i}"})
        assert r.status_code == 401, (i, r.status_code)
    # locked everywhere, even for the right key, once a replica's few seconds of cache are
    # over (the one that saw the last guess refuses at once)
    assert (
        httpx.post(f"{replicas[0].url}/dashboard/login", data={"key": API_KEY}).status_code == 429
    )
    time.sleep(5.1)
    for server in replicas:
        r = httpx.post(f"{server.url}/dashboard/login", data={"key": API_KEY})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
