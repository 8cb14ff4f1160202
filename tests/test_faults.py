"""Faults against real `mboxii-dlr serve` processes over real sockets: the database going
away under load, kill -9, a poison report, a flood beyond capacity, and SIGTERM."""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import sqlite3
import threading
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import create_engine
from tests.conftest import LiveServer, clean_postgres, report
from tests.helpers import (
    RawResponse,
    async_raw_request,
    async_wait_for,
    form_post,
    metric,
    rss_kib,
    stored_msgids,
    table_counts,
    wait_for,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

CB = "/callbacks/mboxii"
CLIENT_TIMEOUT = 30.0  # seconds; well above DLR_INGEST_TIMEOUT_SECONDS of these servers


class Posters:
    """Clients posting distinct reports without pause; they keep the acknowledged set."""

    def __init__(self, url: Callable[[], str], prefix: str, count: int = 8) -> None:
        self.url = url
        self.prefix = prefix
        self.count = count
        self.acked: set[str] = set()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.missing_retry_after = 0
        self.timeouts = 0
        self.transport_errors = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = 0

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._post()) for _ in range(self.count)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _post(self, stop_on_error: bool = False) -> None:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            while not self._stop.is_set():
                self._n += 1
                msgid = f"{self.prefix}{self._n}"
                try:
                    r = await client.post(self.url() + CB, data=report(msgid=msgid))
                except httpx.TimeoutException:
                    self.timeouts += 1
                    continue
                except httpx.TransportError:
                    self.transport_errors += 1
                    await asyncio.sleep(0.05)
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.acked.add(msgid)
                elif r.status_code == 503:
                    if not r.headers.get("retry-after", "").isdigit():
                        self.missing_retry_after += 1
                    await asyncio.sleep(0.02)


@pytest.mark.postgres
def test_database_outage_under_load(postgres_url: str) -> None:
    asyncio.run(clean_postgres(postgres_url))
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = LiveServer(
        proxied,
        {
            "DLR_INGEST_TIMEOUT_SECONDS": "5",
            "DLR_RETRY_AFTER_SECONDS": "2",
            "DLR_LOG_LEVEL": "info",
        },
    )
    try:
        server.start()
        asyncio.run(_outage(server, proxy, postgres_url))
    finally:
        code = server.stop(signal.SIGTERM)
        proxy.close()
    assert code in (0, -signal.SIGTERM)
    assert "storage unreachable" in server.output
    assert "storage reachable again" in server.output


async def _outage(server: LiveServer, proxy: TcpProxy, direct_url: str) -> None:
    posters = Posters(lambda: server.url, "outage-")
    posters.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:

        async def ready() -> int:
            return (await client.get("/readyz")).status_code

        await async_wait_for(lambda: len(posters.acked) >= 50, what="acknowledgements")
        assert await ready() == 200

        await asyncio.to_thread(proxy.cut)
        refused_before = posters.statuses[503]
        await async_wait_for(lambda: posters.statuses[503] >= refused_before + 20, what="503s")
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "not ready"
        # reads are refused the same way, not with a 500
        r = await client.get("/v1/deliveries/outage-1")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"

        await asyncio.to_thread(proxy.restore)
        acked_before = len(posters.acked)
        await async_wait_for(
            lambda: len(posters.acked) >= acked_before + 50, what="recovery without a restart"
        )
        assert await ready() == 200
    await posters.stop()
    print("outage:", len(posters.acked), posters.statuses)
    assert posters.timeouts == 0, "a callback hung past the client's timeout"
    assert posters.transport_errors == 0
    assert set(posters.statuses) == {200, 503}
    assert posters.missing_retry_after == 0
    stored = await asyncio.to_thread(stored_msgids, direct_url)
    assert posters.acked <= stored, sorted(posters.acked - stored)[:10]


def test_kill_9_loses_no_acknowledged_report(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    current: dict[str, LiveServer] = {}
    posters_by_round = []

    async def one_round(n: int) -> None:
        posters = Posters(lambda: current["server"].url, f"kill{n}-", count=12)
        posters_by_round.append(posters)
        posters.start()
        await async_wait_for(lambda: len(posters.acked) >= 100, what="acknowledgements")
        current["server"].proc.kill()  # type: ignore[union-attr]  # SIGKILL, mid-stream
        await async_wait_for(lambda: posters.transport_errors >= 1, what="cut connections")
        await posters.stop()

    for n in range(3):
        current["server"] = live_server()
        asyncio.run(one_round(n))
        assert current["server"].stop() == -signal.SIGKILL
    # Restart once more: the database opens cleanly and serves what was acknowledged.
    server = live_server()
    acked = set().union(*(p.acked for p in posters_by_round))
    stored = stored_msgids(database_url)
    assert acked <= stored, sorted(acked - stored)[:10]
    assert len(acked) >= 300
    some = sorted(acked)[0]
    assert httpx.get(f"{server.url}/v1/deliveries/{some}").status_code == 200


def test_poison_report_fails_alone(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    postgres = database_url.startswith("postgresql")

    async def ddl(statement: str) -> None:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    # A rule the database enforces and validation does not know of.
    asyncio.run(
        ddl(
            "ALTER TABLE reports ADD CONSTRAINT no_poison CHECK (msgid <> 'poison')"
            if postgres
            else "CREATE TRIGGER no_poison BEFORE INSERT ON reports "
            "WHEN NEW.msgid = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END"
        )
    )
    try:
        # A long batch delay gathers all the posts into one batch.
        server = live_server(DLR_INGEST_BATCH_DELAY_MS="500")
        msgids = [f"good{i}" for i in range(30)]
        msgids.insert(11, "poison")

        async def post_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
                posts = [client.post(CB, data=report(msgid=m)) for m in msgids]
                return list(await asyncio.gather(*posts))

        results = dict(zip(msgids, asyncio.run(post_all()), strict=True))
        poison = results.pop("poison")
        assert poison.status_code == 500
        assert poison.json()["error"] == "storage_refused"
        assert {r.status_code for r in results.values()} == {200}
        assert stored_msgids(database_url) == set(results)
        assert table_counts(database_url)["rejected"] == 1
        server.stop(signal.SIGTERM)
        # the poison shared a batch with others, and only it was refused
        failed = [line for line in server.output.splitlines() if "a batch of" in line]
        assert failed and all(int(line.split("a batch of ")[1].split()[0]) > 1 for line in failed)
        assert server.output.count("the database refused report") == 1
    finally:
        asyncio.run(
            ddl(
                "ALTER TABLE reports DROP CONSTRAINT no_poison"
                if postgres
                else "DROP TRIGGER no_poison"
            )
        )


def test_flood_is_answered_and_memory_stays_bounded(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    server = live_server(
        DLR_INGEST_QUEUE_SIZE="10",
        DLR_INGEST_BATCH_DELAY_MS="200",
        DLR_LIMIT_CONCURRENCY="400",
        DLR_RETRY_AFTER_SECONDS="3",
    )
    baseline = rss_kib(server.pid)
    peak = [baseline]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak.append(rss_kib(server.pid))
            sampling.wait(0.02)

    async def one(i: int) -> RawResponse | BaseException:
        try:
            return await async_raw_request(
                server.port, form_post(CB, report(msgid=f"flood{i}")), CLIENT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            return exc

    async def flood() -> list[RawResponse | BaseException]:
        # First more callbacks than the ingest queue holds, then more connections at once
        # than the server serves.
        first = await asyncio.gather(*(one(i) for i in range(300)))
        second = await asyncio.gather(*(one(i) for i in range(300, 3300)))
        return [*first, *second]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = asyncio.run(flood())
    finally:
        sampling.set()
        sampler.join()
    failures = [r for r in results if not isinstance(r, RawResponse)]
    assert failures == [], collections.Counter(repr(f) for f in failures)
    answers = [r for r in results if isinstance(r, RawResponse)]
    assert set(r.status for r in answers) <= {200, 503}
    refused = [r for r in answers if r.status == 503]
    for r in refused:
        assert r.headers.get("retry-after") == "3", r.headers
        assert r.json()["error"] == "unavailable"
    reasons = collections.Counter(r.json()["message"] for r in refused)
    # both limits answered: the ingest queue, and the connection limit (uvicorn's own answer)
    assert "storage unavailable (saturated); retry later" in reasons, reasons
    assert "too many requests at once; retry later" in reasons, reasons
    assert any(r.status == 200 for r in answers[:300])
    # Bounded: a fixed allowance over an idle server, whatever the flood's size.
    assert max(peak) < baseline + 100 * 1024, (baseline, max(peak))
    acked = {f"flood{i}" for i, r in enumerate(results) if getattr(r, "status", 0) == 200}
    assert acked <= stored_msgids(database_url)
    # still serving afterwards
    assert httpx.post(server.url + CB, data=report(msgid="after")).status_code == 200
    print(f"flood: {len(acked)} acknowledged, {reasons}, rss {baseline} -> {max(peak)} KiB")


class DatabaseLock:
    """Holds the database's write lock from outside, so commits wait until release."""

    def __init__(self, database_url: str) -> None:
        self.url = make_url(database_url)
        self._release: Callable[[], None] | None = None

    def acquire(self) -> None:
        if self.url.get_backend_name() == "sqlite":
            conn = sqlite3.connect(self.url.database or "", isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")

            def release() -> None:
                conn.execute("ROLLBACK")
                conn.close()

            self._release = release
            return
        ready = threading.Event()
        done = threading.Event()

        async def hold() -> None:
            engine = create_engine(self.url.render_as_string(hide_password=False), pool_size=1)
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("LOCK TABLE reports IN SHARE ROW EXCLUSIVE MODE"))
                    ready.set()
                    await asyncio.to_thread(done.wait)
                    await conn.rollback()
            finally:
                await engine.dispose()

        thread = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
        thread.start()
        assert ready.wait(30)

        def release_pg() -> None:
            done.set()
            thread.join(30)

        self._release = release_pg

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_answers_in_flight_requests_and_loses_nothing(
    live_server: Callable[..., LiveServer], database_url: str
) -> None:
    server = live_server(
        DLR_INGEST_TIMEOUT_SECONDS="120",
        DLR_SHUTDOWN_TIMEOUT_SECONDS="120",
        DLR_LOG_LEVEL="info",
    )
    lock = DatabaseLock(database_url)
    in_flight = 150

    async def run() -> list[RawResponse | BaseException]:
        async def one(i: int) -> RawResponse | BaseException:
            try:
                return await async_raw_request(
                    server.port, form_post(CB, report(msgid=f"term{i}")), 120
                )
            except (OSError, TimeoutError) as exc:
                return exc

        lock.acquire()
        try:
            posts = [asyncio.create_task(one(i)) for i in range(in_flight)]
            async with httpx.AsyncClient(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:

                async def waiting() -> float:
                    return metric(
                        (await client.get("/metrics")).text, "mboxii_dlr_ingest_in_flight"
                    )

                # Every request has reached the writer and waits for its commit (on SQLite,
                # a lock held past busy_timeout answers some with 503 first: count those).
                deadline = asyncio.get_running_loop().time() + 60
                while await waiting() + sum(p.done() for p in posts) < in_flight:
                    assert asyncio.get_running_loop().time() < deadline, await waiting()
                    await asyncio.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            # the server is shutting down (no longer accepting) with all of them in flight
            await asyncio.to_thread(
                wait_for, lambda: _refuses_connections(server.port), 60, "the listener to close"
            )
        finally:
            lock.release()
        return list(await asyncio.gather(*posts))

    results = asyncio.run(run())
    failures = [r for r in results if not isinstance(r, RawResponse)]
    assert failures == [], failures[:3]
    statuses = collections.Counter(r.status for r in results if isinstance(r, RawResponse))
    assert set(statuses) <= {200, 503}, statuses
    print("sigterm:", statuses)
    assert server.stop(timeout=120) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.output
    acked = {
        f"term{i}" for i, r in enumerate(results) if isinstance(r, RawResponse) and r.status == 200
    }
    assert acked <= stored_msgids(database_url)
    assert statuses[200] > 0
