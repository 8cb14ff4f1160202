"""End to end against a real `mboxii-dlr serve` process over real sockets."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import SEED_REPORT, LiveServer, report

pytestmark = pytest.mark.slow


def test_seed_example_through_a_real_server(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(DLR_CALLBACK_TOKENS="s3cret-token")
    url = server.url + "/callbacks/mboxii/s3cret-token"
    for target in (url, url + "/"):
        r = httpx.post(
            target,
            content=urlencode(SEED_REPORT),
            follow_redirects=False,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert (r.status_code, r.text) == (200, "OK")
    assert httpx.get(url, params=report(msgid="via-get")).status_code == 200
    assert httpx.post(url, json=report(msgid="via-json")).status_code == 200
    r = httpx.post(url, files={k: (None, v) for k, v in report(msgid="via-multipart").items()})
    assert r.status_code == 200
    assert httpx.post(server.url + "/callbacks/mboxii/wrong", data=SEED_REPORT).status_code == 404
    d = httpx.get(server.url + "/v1/deliveries/208217564").json()
    assert d["done_at"] == "2003-05-22T05:48:50Z"
    assert d["mobile"] == "+886922161529"
    assert d["reports"] == 1
    for msgid in ("via-get", "via-json", "via-multipart"):
        assert httpx.get(f"{server.url}/v1/deliveries/{msgid}").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_concurrent_copies_and_sigterm_keeps_acknowledged(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server()

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            copies = [client.post("/callbacks/mboxii", data=SEED_REPORT) for _ in range(50)]
            others = [
                client.post("/callbacks/mboxii", data=report(msgid=f"m{i}")) for i in range(200)
            ]
            return [r.status_code for r in await asyncio.gather(*copies, *others)]

    assert set(asyncio.run(post_all())) == {200}
    # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.output
    again = live_server()
    d = httpx.get(again.url + "/v1/deliveries/208217564").json()
    assert d["reports"] == 1
    for i in (0, 99, 199):
        assert httpx.get(f"{again.url}/v1/deliveries/m{i}").status_code == 200
