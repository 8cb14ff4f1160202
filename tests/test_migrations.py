"""The schema comes from the migrations, and they match the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from app.db.engine import Base, create_engine
from app.db.migrate import current_revision, head_revision, include_name, upgrade
from tests.conftest import ROOT


def _diff(database_url: str) -> list[object]:
    async def run() -> list[object]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(
                            sync, opts={"compare_type": True, "include_name": include_name}
                        ),
                        Base.metadata,
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    assert _diff(database_url) == []


def test_downgrade_and_upgrade_again(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/roundtrip.db"
    upgrade(url)
    from alembic import command

    from app.db.migrate import alembic_config

    command.downgrade(alembic_config(url), "base")
    upgrade(url)

    async def tables_and_revision() -> tuple[set[str], str | None]:
        engine = create_engine(url, pool_size=1)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            revision = await current_revision(conn)
        await engine.dispose()
        return names, revision

    names, revision = asyncio.run(tables_and_revision())
    assert set(Base.metadata.tables) <= names
    # back at the newest migration
    assert revision is not None and revision == head_revision()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_migrate_says_in_one_line_which_database_is_missing(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "postgresql":
        live = request.getfixturevalue("postgres_url")  # skips (fails in CI) without a server
        url = (
            make_url(live)
            .set(password="hunter2-secret", database="mboxii_never_created")
            .render_as_string(hide_password=False)
        )
        expected = 'database "mboxii_never_created" does not exist'
    else:
        (tmp_path / "a-file").write_text("not a directory")
        url = f"sqlite:///{tmp_path}/a-file/dlr.db"
        expected = "a-file"
    # A process of its own, as a person runs it (the command sets up logging for good).
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env={**env, "DLR_DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,  # no stray .env file
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("mboxii-dlr: cannot migrate the database ")
    assert expected in line
    assert "hunter2-secret" not in done.stderr + done.stdout
