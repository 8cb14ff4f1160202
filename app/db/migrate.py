"""Schema versions: run the Alembic migrations and tell whether a database is at head."""

from __future__ import annotations

import asyncio
import re
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent

# The partitions of reports (reports_2026_11, reports_default; pg_partman's reports_p2026_11):
# made and dropped as time passes (app.db.partitions), so no model describes them.
_PARTITION = re.compile(r"reports_(default|p?\d{4}(_\w+)?)")


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Whether schema comparison (alembic check, the drift test) looks at this object."""
    return not (type_ == "table" and name is not None and _PARTITION.fullmatch(name))


def alembic_config(database_url: str, prepared_statements: bool = True) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    config.attributes["prepared_statements"] = prepared_statements
    return config


def upgrade(database_url: str, revision: str = "head", *, prepared_statements: bool = True) -> None:
    """Migrate the database to `revision` (blocking; call it outside the event loop)."""
    command.upgrade(alembic_config(database_url, prepared_statements), revision)


@lru_cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def schema_problem(engine: AsyncEngine) -> str | None:
    """What keeps the database from serving (unreachable, not migrated), or None."""
    try:
        async with asyncio.timeout(3), engine.connect() as connection:
            try:
                revision = await current_revision(connection)
            except DBAPIError:  # no alembic_version table: never migrated
                revision = None
    except Exception as exc:
        return f"unreachable ({describe_error(exc)})"
    if revision != head_revision():
        return f"not migrated (at {revision or 'no revision'}): run `mboxii-dlr migrate`"
    return None


def describe_error(exc: BaseException) -> str:
    """A database error in one line: the driver's own message, without SQL or parameters."""
    cause = getattr(exc, "orig", None) or exc
    name = type(cause).__name__
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if not text:
        return name
    # The drivers' generic classes say nothing their message does not.
    return text if name in _GENERIC_ERRORS else f"{name}: {text}"


_GENERIC_ERRORS = frozenset(
    {"Error", "DatabaseError", "OperationalError", "InterfaceError", "ProgrammingError"}
)


async def current_revision(connection: AsyncConnection) -> str | None:
    result = await connection.execute(text("SELECT version_num FROM alembic_version"))
    return result.scalar_one_or_none()
