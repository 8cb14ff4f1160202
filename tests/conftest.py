"""Shared fixtures: one database per backend, apps built from Settings, live servers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

# Tests build their own Settings; the developer's DLR_* environment must not leak in.
for _name in [n for n in os.environ if n.startswith("DLR_")]:
    del os.environ[_name]

from app.core.settings import Settings  # noqa: E402
from app.db.engine import Base, create_engine  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.main import create_app  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get(
    "MBOXII_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parent.parent
TABLES = [t.name for t in reversed(Base.metadata.sorted_tables)]


def require_tool(name: str, why: str) -> str:
    """The path of a system tool; skip (or fail, in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({why}); .ci/run installs it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _postgres_reachable() -> str | None:
    url = make_url(PG_ADMIN_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable at {url.host}:{url.port} ({exc})"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    url = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    problem = _postgres_reachable()
    if problem:
        if IN_CI:
            pytest.fail(problem + " (mandatory in CI)")
        pytest.skip(problem)
    name = f"mboxii_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of the test's own, empty (for tests that change more than rows:
    partitions, migrations)."""
    name = f"mboxii_own_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def migrated(fresh_postgres: str) -> str:
    """A PostgreSQL database of the test's own, migrated."""
    upgrade(fresh_postgres)
    return fresh_postgres


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies, so migrations run once."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


async def clean_postgres(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: the same test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "dlr.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(clean_postgres(url))
    return url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(_env_file=None, database_url=database_url, **overrides)  # type: ignore[call-arg]


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app with its lifespan running, and an in-process client speaking to it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(database_url)) as (_, c):
        yield c


@pytest.fixture
def app_factory(database_url: str) -> Callable[..., Any]:
    """`async with app_factory(**settings) as (app, client)` for tests with own settings."""

    def factory(**overrides: Any) -> Any:
        return running_app(make_settings(database_url, **overrides))

    return factory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """`mboxii-dlr serve` in a subprocess on a free port; its output goes to a file (a pipe
    nobody reads would fill up and stall a server that logs at debug level)."""

    def __init__(self, database_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DLR_")},
            "DLR_DATABASE_URL": database_url,
            "DLR_HOST": "127.0.0.1",
            "DLR_PORT": str(self.port),
            "DLR_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = ""
        fd, name = tempfile.mkstemp(prefix="mboxii-dlr-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)

    def read_output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_bytes().decode(errors="replace")

    def start(self, timeout: float = 30) -> LiveServer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.read_output()}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not answer /healthz in time")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int | None = None, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.output = self.read_output()
        self.proc = None
        return code


@pytest.fixture
def live_server(database_url: str) -> Iterator[Callable[..., LiveServer]]:
    """Start real servers on the test's database; all are stopped at the end."""
    servers: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = LiveServer(database_url, env).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.log_path.unlink(missing_ok=True)


SEED_REPORT = {
    "ID": "123456",
    "msgid": "208217564",
    "type": "Now",
    "mobile": "0922161529",
    "donetime": "2003/05/22 13:48:50",
    "statuscode": "1",
    "statusstr": "DELIVRD",
}


def report(**changes: str) -> dict[str, str]:
    """The seed's example report with some fields changed (None removes a field)."""
    fields = {**SEED_REPORT, **changes}
    return {k: v for k, v in fields.items() if v is not None}
