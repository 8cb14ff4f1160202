"""Access control through HTTP: tokens, source networks behind trusted proxies, the body
limit while streaming, production refusal, and the security headers."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.main import create_app
from tests.conftest import ROOT, SEED_REPORT, LiveServer, make_settings, report
from tests.helpers import (
    async_table_counts,
    build_request,
    grown_by,
    parse_response,
    raw_request,
    read_until_closed,
    table_counts,
)

CB = "/callbacks/mboxii"
NOTHING = {"reports": 0, "deliveries": 0, "rejected": 0}


async def test_token_rotation_list(database_url: str, app_factory: Any) -> None:
    # Rotation: add the new token beside the old one, move the sends, drop the old one.
    async with app_factory(callback_tokens="old-Token_1") as (_, client):
        assert (await client.post(CB + "/old-Token_1", data=report(msgid="a"))).status_code == 200
        assert (await client.post(CB + "/new-token.2", data=report(msgid="b"))).status_code == 404
    async with app_factory(callback_tokens="old-Token_1, new-token.2") as (_, client):
        for token, msgid in (("old-Token_1", "c"), ("new-token.2", "d")):
            r = await client.post(f"{CB}/{token}", data=report(msgid=msgid))
            assert (r.status_code, r.text) == (200, "OK")
    async with app_factory(callback_tokens="new-token.2") as (_, client):
        assert (await client.post(CB + "/old-Token_1", data=report(msgid="e"))).status_code == 404
        assert (await client.post(CB + "/new-token.2", data=report(msgid="f"))).status_code == 200
    assert (await async_table_counts(database_url))["reports"] == 4


async def test_wrong_token_is_404_and_stores_nothing(database_url: str, app_factory: Any) -> None:
    async with app_factory(callback_tokens="the-right-token") as (_, client):
        attempts = [
            ("post", CB + "/the-right-tokeN", {"data": SEED_REPORT}),
            ("post", CB + "/the-right-token-", {"data": SEED_REPORT}),
            ("post", CB + "/the-right-toke", {"data": SEED_REPORT}),
            ("post", CB, {"data": SEED_REPORT}),
            ("post", CB + "/", {"data": SEED_REPORT}),
            ("post", CB + "/the-right-token/extra", {"data": SEED_REPORT}),
            ("get", CB + "/wrong", {"params": SEED_REPORT}),
            # bodies that would be quarantined with the right token
            ("post", CB + "/wrong", {"content": b"\xff\xfe", "headers": {"content-type": "x/y"}}),
            ("post", CB + "/wrong", {"data": {"mobile": "0922161529"}}),
        ]
        for method, path, kwargs in attempts:
            r = await getattr(client, method)(path, **kwargs)
            assert r.status_code == 404, path
            assert r.json()["error"] == "not_found"
    assert (await async_table_counts(database_url)) == NOTHING


def _client(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_source_networks_ipv4_and_ipv6(database_url: str) -> None:
    settings = make_settings(database_url, callback_networks="203.0.113.0/24, 2001:db8::/32")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        allowed = ["203.0.113.7", "2001:db8::5", "2001:db8:ffff::1", "::ffff:203.0.113.9"]
        refused = ["198.51.100.1", "203.0.114.1", "2001:db9::1", "::1", "127.0.0.1"]
        for i, address in enumerate(allowed):
            async with _client(app, address) as client:
                r = await client.post(CB, data=report(msgid=f"ok{i}"))
                assert r.status_code == 200, address
        for address in refused:
            async with _client(app, address) as client:
                r = await client.post(CB, data=report(msgid="refused"))
                assert r.status_code == 403, address
                assert r.json()["error"] == "forbidden"
                # refused before the body is looked at: nothing quarantined either
                r = await client.post(CB, content=b"junk", headers={"content-type": "x/y"})
                assert r.status_code == 403
    assert (await async_table_counts(database_url)) == {
        "reports": 4,
        "deliveries": 4,
        "rejected": 0,
    }


FORWARDED_CASES = [
    # the peer is not a trusted proxy: its header is ignored, whatever it says
    ("198.51.100.1", ["203.0.113.7"], 403),
    ("203.0.113.7", ["198.51.100.1"], 200),
    # one trusted proxy in front
    ("10.0.0.1", ["203.0.113.7"], 200),
    ("10.0.0.1", ["198.51.100.1"], 403),
    # two trusted proxies: the chain resolves to the client
    ("10.0.0.1", ["203.0.113.7, 10.0.0.2"], 200),
    ("10.0.0.1", ["203.0.113.7,10.0.0.2 , 10.9.9.9"], 200),
    # a client forging hops left of its own address gains nothing
    ("10.0.0.1", ["203.0.113.7, 198.51.100.9, 10.0.0.2"], 403),
    ("10.0.0.1", ["10.0.0.5, 198.51.100.9"], 403),
    # repeated header lines are one list, read right to left
    ("10.0.0.1", ["203.0.113.7", "198.51.100.9"], 403),
    ("10.0.0.1", ["198.51.100.9", "203.0.113.7"], 200),
    # what our own proxy wrote cannot be read: nobody left of it is believed
    ("10.0.0.1", ["203.0.113.7, garbage"], 403),
    ("10.0.0.1", ["203.0.113.7, fe80::1%eth0"], 403),
    # IPv6 clients and hops with ports
    ("10.0.0.1", ["[2001:db8::7]:4711"], 200),
    ("10.0.0.1", ["203.0.113.7:4711, 10.0.0.2:80"], 200),
    ("fd00::1", ["2001:db8::7, fd00::2"], 200),
    ("fd00::1", ["2001:db9::7, fd00::2"], 403),
    # nothing but trusted hops: the leftmost is the caller
    ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], 403),
]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(database_url: str) -> None:
    settings = make_settings(
        database_url,
        callback_networks="203.0.113.0/24,2001:db8::/32",
        trusted_proxies="10.0.0.0/8, fd00::/8",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        for peer, forwarded, expected in FORWARDED_CASES:
            async with _client(app, peer) as client:
                headers = [("x-forwarded-for", value) for value in forwarded]
                r = await client.post(CB, data=SEED_REPORT, headers=headers)
                assert r.status_code == expected, (peer, forwarded)
    # the quarantine records the resolved caller, not the proxy
    async with app.router.lifespan_context(app), _client(app, "10.0.0.1") as client:
        chain = {"x-forwarded-for": "2001:db8::7, 10.0.0.2"}
        assert (await client.post(CB, data=report(mobile="x"), headers=chain)).status_code == 422
        async with app.app_state.engine.connect() as conn:
            sources = (await conn.execute(text("SELECT source_address FROM rejected"))).all()
    assert [s[0] for s in sources] == ["2001:db8::7"]


@pytest.mark.slow
def test_server_rewrites_no_proxy_headers(live_server: Callable[..., LiveServer]) -> None:
    """uvicorn's own X-Forwarded-For handling stays off: from 127.0.0.1 (which uvicorn would
    trust by default) the header is ignored until DLR_TRUSTED_PROXIES names the peer."""
    forged = {"x-forwarded-for": "203.0.113.7", "forwarded": "for=203.0.113.7"}
    server = live_server(DLR_CALLBACK_NETWORKS="203.0.113.0/24")
    r = httpx.post(server.url + CB, data=SEED_REPORT, headers=forged)
    assert r.status_code == 403
    trusting = live_server(
        DLR_CALLBACK_NETWORKS="203.0.113.0/24", DLR_TRUSTED_PROXIES="127.0.0.1/32"
    )
    r = httpx.post(trusting.url + CB, data=SEED_REPORT, headers=forged)
    assert r.status_code == 200
    chained = {"x-forwarded-for": "203.0.113.7, 127.0.0.1"}
    assert httpx.post(trusting.url + CB, data=SEED_REPORT, headers=chained).status_code == 200
    forged_left = {"x-forwarded-for": "203.0.113.7, 198.51.100.2"}
    r = httpx.post(trusting.url + CB, data=SEED_REPORT, headers=forged_left)
    assert r.status_code == 403


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.slow
def test_body_limit_refuses_a_streaming_body_before_it_ends(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    server = live_server(DLR_MAX_BODY_BYTES="1024", DLR_CALLBACK_TOKENS="tok")
    head = build_request(
        "POST",
        CB + "/tok",
        [
            ("content-type", "application/x-www-form-urlencoded"),
            ("transfer-encoding", "chunked"),
        ],
        content_length=False,
    )
    total = 8 * 1024 * 1024  # what the client would send if nobody stopped it
    piece = b"a=" + b"x" * 4094
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            while sent < total:
                sock.sendall(_chunk(piece))
                sent += len(piece)
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: read what it said
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    response = parse_response(answer)
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"
    assert response.headers["connection"] == "close"
    # refused long before the client would have finished
    assert sent < total // 4, sent

    # A declared length over the limit is refused before a byte of the body is sent.
    big = build_request("POST", CB + "/tok", [("content-length", str(total))], content_length=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(big)
        response = parse_response(read_until_closed(sock))
    assert response.status == 413

    # At the limit it is fine.
    fields = report()
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    body += b"&pad=" + b"x" * (1024 - len(body) - 5)
    assert len(body) == 1024
    ok = raw_request(
        server.port,
        build_request(
            "POST", CB + "/tok", [("content-type", "application/x-www-form-urlencoded")], body
        ),
    )
    assert ok.status == 200
    assert table_counts(database_url) == {"reports": 1, "deliveries": 1, "rejected": 0}


@pytest.mark.slow
@pytest.mark.slow
def test_refused_bodies_get_their_answer_not_a_reset(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    """A client that sends the whole body before it reads the answer (most HTTP clients do)
    must see our 4xx: closing with its body unread would reset the connection instead."""
    server = live_server(DLR_MAX_BODY_BYTES="1024", DLR_CALLBACK_TOKENS="tok")
    big = b"ID=1&pad=" + b"x" * 500_000
    form = [("content-type", "application/x-www-form-urlencoded")]
    small = "&".join(f"{k}={v}" for k, v in SEED_REPORT.items()).encode() + b"&pad=" + b"y" * 200
    requests = {
        (413, "declared"): build_request("POST", CB + "/tok", form, big),
        (413, "chunked"): build_request(
            "POST", CB + "/tok", [*form, ("transfer-encoding", "chunked")], content_length=False
        )
        + _chunk(big)
        + b"0\r\n\r\n",
        (404, "wrong token"): build_request("POST", CB + "/nope", form, small * 500),
        (405, "PUT"): build_request("PUT", CB + "/tok", form, small * 500),
    }
    for (status, name), request in requests.items():
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(request)
                answer = parse_response(read_until_closed(sock))
            assert answer.status == status, name

    # The answer does not wait for the body: it comes while the client is still sending,
    # and the connection ends cleanly once the rest has arrived.
    request = requests[(413, "declared")]
    half = len(request) // 2
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request[:half])
        sock.settimeout(2)
        early = sock.recv(65536)
        assert early.startswith(b"HTTP/1.1 413 "), early[:100]
        sock.settimeout(30)
        sock.sendall(request[half:])
        answer = parse_response(early + read_until_closed(sock))
    assert answer.json()["error"] == "payload_too_large"

    # Told to wait for a 100-continue, the client sends nothing: the 413 comes at once.
    waiting = build_request("POST", CB + "/tok", [*form, ("expect", "100-continue")], big)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(waiting[: waiting.index(b"\r\n\r\n") + 4])
        response = parse_response(read_until_closed(sock))
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"
    assert table_counts(database_url) == NOTHING


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "mboxii-dlr"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
    return subprocess.run(
        [*command, "serve", "--port", "1"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_production_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/never.db"
    done = _serve({"DLR_ENV": "production", "DLR_DATABASE_URL": url})
    assert done.returncode != 0
    assert "DLR_CALLBACK_TOKENS" in done.stderr
    assert "DLR_API_KEYS" in done.stderr
    assert "production" in done.stderr
    done = _serve({"DLR_ENV": "production", "DLR_DATABASE_URL": url, "DLR_CALLBACK_TOKENS": " , "})
    assert done.returncode != 0
    assert "DLR_CALLBACK_TOKENS" in done.stderr
    done = _serve({"DLR_ENV": "production", "DLR_DATABASE_URL": url, "DLR_CALLBACK_TOKENS": "t"})
    assert done.returncode != 0
    assert "DLR_API_KEYS" in done.stderr
    assert "DLR_CALLBACK_TOKENS" not in done.stderr
    assert not (tmp_path / "never.db").exists()


@pytest.mark.slow
def test_production_starts_with_secrets(live_server: Callable[..., LiveServer]) -> None:
    token, key = "production-token-" + "t" * 16, "production-key-" + "k" * 16
    server = live_server(DLR_ENV="production", DLR_CALLBACK_TOKENS=token, DLR_API_KEYS=key)
    assert httpx.post(server.url + CB + "/" + token, data=SEED_REPORT).status_code == 200
    assert httpx.post(server.url + CB, data=SEED_REPORT).status_code == 404
    assert httpx.get(server.url + "/v1/deliveries/208217564").status_code == 401
    r = httpx.get(server.url + "/v1/deliveries/208217564", headers={"x-api-key": key})
    assert r.status_code == 200


HARDENING = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _directives(csp: str) -> dict[str, list[str]]:
    parts = (d.split() for d in csp.split(";") if d.strip())
    return {p[0]: p[1:] for p in parts}


async def test_security_headers_on_api_and_operations(app_factory: Any) -> None:
    async with app_factory(api_keys="key") as (_, client):
        await client.post(CB, data=SEED_REPORT)
        key = {"x-api-key": "key"}
        answers = {
            "/v1/deliveries/208217564": await client.get("/v1/deliveries/208217564", headers=key),
            "/v1 404": await client.get("/v1/deliveries/nope", headers=key),
            "/v1 401": await client.get("/v1/deliveries/208217564"),
            "/v1 422": await client.get("/v1/deliveries/1?mobile=x", headers=key),
            "/healthz": await client.get("/healthz"),
            "/readyz": await client.get("/readyz"),
            "/metrics": await client.get("/metrics"),
            "/openapi.json": await client.get("/openapi.json"),
            "unknown path": await client.get("/nothing-here"),
        }
        assert [r.status_code for r in answers.values()] == [
            200, 404, 401, 422, 200, 200, 200, 200, 404,
        ]  # fmt: skip
        for name, r in answers.items():
            for header, value in HARDENING.items():
                assert r.headers.get(header) == value, (name, header)
            csp = _directives(r.headers["content-security-policy"])
            assert csp["default-src"] == ["'none'"], name
            assert csp["frame-ancestors"] == ["'none'"], name
            if name.startswith("/v1") or name in ("/healthz", "/readyz", "/metrics"):
                assert r.headers["cache-control"] == "no-store", name


async def test_docs_csp_allows_exactly_what_the_page_loads(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    html = r.text
    csp = _directives(r.headers["content-security-policy"])
    scripts = re.findall(r'<script src="([^"]+)"', html)
    styles = re.findall(r'<link type="text/css" rel="stylesheet" href="([^"]+)"', html)
    icons = re.findall(r'<link rel="shortcut icon" href="([^"]+)"', html)
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert scripts and styles and icons and inline
    # Everything the page loads comes from this service (it works offline), and is there.
    for url in scripts + styles + icons:
        assert url.startswith("/docs/assets/"), url
        asset = await client.get(url)
        assert asset.status_code == 200 and asset.content, url
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
        for code in inline
    ]
    assert sorted(csp["script-src"]) == sorted(["'self'", *hashes])
    assert csp["style-src"] == ["'self'"]
    assert csp["img-src"] == ["data:", "'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["default-src"] == ["'none'"]
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert "'unsafe-eval'" not in r.headers["content-security-policy"]
    for header, value in HARDENING.items():
        assert r.headers[header] == value
    # the page fetches the OpenAPI document from this service ('self')
    assert "url: '/openapi.json'" in html
    assert (await client.get("/redoc")).status_code == 404


async def test_callback_answers_stay_minimal(client: httpx.AsyncClient) -> None:
    answers = [
        await client.post(CB, data=SEED_REPORT),
        await client.post(CB + "/x", data=SEED_REPORT),
        await client.post(CB, data=report(mobile="x")),
    ]
    assert [r.status_code for r in answers] == [200, 404, 422]
    for r in answers:
        assert set(r.headers) <= {"content-type", "content-length", "x-request-id"}, r.headers


async def test_pages_keep_their_own_csp(client: httpx.AsyncClient) -> None:
    """An HTML page that sets its own policy (the dashboard) keeps it; the other headers
    are added."""
    r = await client.get("/dashboard", follow_redirects=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = _directives(r.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_api_and_dashboard_bodies_are_limited(app_factory: Any) -> None:
    """The unauthenticated login form must not read a body of any size into memory."""
    async with app_factory(api_keys=["k" * 32]) as (_, client):
        huge = {"key": "x" * 100_000, "next": "/dashboard"}
        r = await client.post("/dashboard/login", data=huge)
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"

        async def pieces() -> Any:
            yield b"next=%2Fdashboard&key="
            for _ in range(100):
                yield b"x" * 1000

        form = {"content-type": "application/x-www-form-urlencoded"}
        r = await client.post("/dashboard/login", content=pieces(), headers=form)
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"
        r = await client.post(
            "/v1/rejected/1/replay",
            content=b"{}" + b" " * 100_000,
            headers={"authorization": "Bearer " + "k" * 32},
        )
        assert r.status_code == 413
        # an ordinary login form still gets through (a wrong key here: 401)
        r = await client.post("/dashboard/login", data={"key": "wrong", "next": "/dashboard"})
        assert r.status_code == 401


async def test_short_secrets_are_warned_about_without_being_shown(
    app_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="mboxii_dlr"):
        async with app_factory(api_keys=["k" * 32, "letmein"], callback_tokens=["t" * 30]):
            pass
    warnings = [r.getMessage() for r in caplog.records if "shorter than 24" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "DLR_API_KEYS" in warnings[0]
    assert "letmein" not in caplog.text


# ---------------------------------------------------------------- settings in production

STRONG = "s" * 8 + "-strong-secret-0123456789"
PRODUCTION = {"env": "production", "callback_tokens": STRONG + "t", "api_keys": STRONG + "k"}


def production_settings(**overrides: Any) -> Any:
    from app.core.settings import load_settings

    return load_settings(_env_file=None, **{**PRODUCTION, **overrides})


def refusal(**overrides: Any) -> str:
    from app.core.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        production_settings(**overrides)
    return str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"callback_tokens": STRONG + "t,short-token"}, "DLR_CALLBACK_TOKENS"),
        ({"api_keys": "k" * 23}, "DLR_API_KEYS"),
        ({"cursor_secret": "cursor-secret-22-chars"}, "DLR_CURSOR_SECRET"),
        ({"api_keys": "changeme"}, "DLR_API_KEYS"),
        ({"cursor_secret": "CHANGEME-but-long-enough-to-pass"}, "DLR_CURSOR_SECRET"),
        (
            {
                "mboxii_cid": "acct",
                "mboxii_cpw": "replace-me",
                "public_url": "https://x.example",
                "send_api_keys": STRONG + "s",
            },
            "DLR_MBOXII_CPW",
        ),
    ],
)
def test_production_refuses_short_and_placeholder_secrets_naming_them(
    overrides: dict[str, Any], variable: str
) -> None:
    message = refusal(**overrides)
    assert variable in message and "production" in message
    for value in overrides.values():  # named, never shown
        for part in str(value).split(","):
            if part not in (STRONG + "t", STRONG + "s", "acct", "https://x.example"):
                assert part not in message
    # outside production the same values only draw a warning at start
    production_settings(**overrides, env="development")


def example_secrets() -> dict[str, str]:
    """Every DLR_* value of the deployment examples that production must refuse."""
    found: dict[str, str] = {}
    env_lines = (ROOT / "deploy" / "example.env").read_text().splitlines()
    yaml_lines = (ROOT / "deploy" / "kubernetes" / "secret.example.yaml").read_text().splitlines()
    for line in env_lines:
        name, _, value = line.partition("=")
        if name.startswith("DLR_") and value:
            found[f"example.env {name}"] = value
    for line in yaml_lines:
        name, _, value = line.strip().partition(": ")
        if name.startswith("DLR_"):
            found[f"secret.example.yaml {name}"] = value
    return found


@pytest.mark.parametrize(("where", "value"), sorted(example_secrets().items()))
def test_production_refuses_every_placeholder_of_the_examples(where: str, value: str) -> None:
    name = where.split()[-1]
    field = name.removeprefix("DLR_").lower()
    message = refusal(**{field: value})
    assert name in message, message
    assert value not in message


@pytest.mark.parametrize(
    "proxies", ["0.0.0.0/0", "::/0", "10.0.0.0/8, 0.0.0.0/0", "2000::/3", "::/1"]
)
def test_production_refuses_trusted_proxies_that_hold_every_address(proxies: str) -> None:
    message = refusal(trusted_proxies=proxies)
    assert "DLR_TRUSTED_PROXIES" in message and "X-Forwarded-For" in message
    production_settings(trusted_proxies=proxies, env="development")


def test_production_starts_with_long_secrets_and_narrow_proxies() -> None:
    settings = production_settings(
        trusted_proxies="10.0.0.0/8,fd00::/8", cursor_secret=STRONG + "c"
    )
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]


def test_no_secret_in_the_settings_repr_or_str() -> None:
    from app.core.settings import Settings

    secrets = {
        "callback_tokens": ["callback-token-aaaaaaaaaaaaaaaa", "callback-token-bbbbbbbbbbbbbbb"],
        "api_keys": ["api-key-cccccccccccccccccccccccc"],
        "send_api_keys": ["send-key-gggggggggggggggggggggg"],
        "cursor_secret": "cursor-secret-dddddddddddddddd",
        "mboxii_cpw": "gateway-password-eeeeeeeeeeeee",
    }
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="postgresql://dlr:db-password-fffffffffff@db.example:5432/dlr",
        mboxii_cid="acct",
        public_url="https://dlr.example.com",
        **secrets,
    )
    shown = repr(settings) + str(settings) + repr(settings.api_keys) + f"{settings}"
    values = [*secrets["callback_tokens"], *secrets["api_keys"], "db-password-fffffffffff"]
    values += secrets["send_api_keys"]
    values += [secrets["cursor_secret"], secrets["mboxii_cpw"]]
    assert [v for v in values if v in shown] == []
    assert "db.example:5432/dlr" in shown  # where the database is stays visible
    assert set(settings.secret_values) == set(values)


def test_networks_are_checked_as_networks() -> None:
    from app.core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, callback_networks="203.0.113.0/24, 10.0.0.300/8")
    assert "DLR_CALLBACK_NETWORKS" in str(refused.value)
    assert "10.0.0.300/8" in str(refused.value)


# ---------------------------------------------------------------- bounded caches


def test_long_caller_addresses_are_not_cached() -> None:
    from app.web.security import client_address

    def forwarded() -> None:
        for i in range(1500):
            hop = f"{i:06d}" + "9" * 20_000  # not an address, and never remembered
            client_address("10.0.0.1", hop, [ipaddress.ip_network("10.0.0.0/8")])

    assert grown_by(forwarded) < 2_000_000


async def test_over_long_numbers_are_refused_with_a_field_error(app_factory: Any) -> None:
    long_number = "+886 " + "0" * 40 + "912345678"
    async with app_factory() as (_, client):
        r = await client.post(CB, data=report(mobile=long_number))
        assert r.status_code == 422
        assert {"field": "mobile", "message": "is longer than 32 characters"} in r.json()["errors"]
        r = await client.get("/v1/deliveries", params={"mobile": long_number})
        assert r.status_code == 422
        assert r.json()["errors"] == [
            {"field": "mobile", "message": "is longer than 32 characters"}
        ]


async def test_over_long_numbers_to_send_are_refused(database_url: str) -> None:
    from tests.fake_gateway import service

    long_number = "0" * 33 + "912345678"
    async with service(database_url) as (_, client, gateway):
        r = await client.post(
            "/v1/messages", json={"numbers": ["0912345678", long_number], "text": "hi"}
        )
        assert r.status_code == 422
        assert r.json()["errors"] == [
            {"field": "numbers.1", "message": "is longer than 32 characters"}
        ]
    assert gateway.requests == []
