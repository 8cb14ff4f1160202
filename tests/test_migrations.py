"""The schema comes from the migrations, and they match the models."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db.engine import Base, create_engine
from app.db.migrate import current_revision, head_revision, upgrade


def _diff(database_url: str) -> list[object]:
    async def run() -> list[object]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}),
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
