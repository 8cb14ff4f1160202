"""Database plumbing: declarative base, UTC timestamps, engine and session factories."""

from __future__ import annotations

import datetime as dt
import uuid
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

#: The largest id a row can have (BIGINT, and SQLite's INTEGER): a larger one in a request
#: would overflow the database driver, so parameters are bounded by it.
MAX_ROW_ID = 2**63 - 1

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime: timestamptz on PostgreSQL, a sortable UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        # SQLite keeps text; a naive UTC value gives one canonical, sortable spelling.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


def shown_url(database_url: str) -> str:
    """The database URL as messages may show it: the password hidden."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # unparsable: say nothing of it rather than leak a secret
        return "(an unreadable DLR_DATABASE_URL)"


def async_url(database_url: str) -> URL:
    """Turn a plain postgresql:// or sqlite:/// URL into its asyncio driver URL."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database {backend!r}")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; FULL makes a commit survive power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(
    database_url: str, pool_size: int = 10, echo: bool = False, prepared_statements: bool = True
) -> AsyncEngine:
    """Create the async engine with durable settings for either backend. Without
    `prepared_statements`, PostgreSQL statements are prepared unnamed, or under names used
    once, so a pooler in transaction mode may hand each transaction another server session."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, echo=echo, pool_size=pool_size, pool_pre_ping=True, hide_parameters=True
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # Parameters are numbers and ids: keep them out of error messages and logs.
        hide_parameters=True,
        pool_timeout=5,
        connect_args={
            "timeout": 5,
            "command_timeout": 30,
            "server_settings": {
                "synchronous_commit": "on",
                "application_name": "mboxii-dlr",
                "timezone": "UTC",
            },
            **({} if prepared_statements else UNPREPARED),
        },
    )
    if not prepared_statements:
        _UNPREPARED_ENGINES.add(engine.sync_engine)
    return engine


# Engines made without prepared statements, for the connections opened beside their pools.
_UNPREPARED_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def prepares_statements(engine: AsyncEngine) -> bool:
    """Whether connections to `engine`'s database may keep named prepared statements (see
    create_engine): a connection opened outside its pool must follow the same rule."""
    return engine.sync_engine not in _UNPREPARED_ENGINES


# asyncpg's own cache (the ingest store's statements), SQLAlchemy's, and the names of what
# SQLAlchemy still prepares: unique, so that no two sessions' names meet on one server session.
UNPREPARED: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: f"__mboxii_dlr_{uuid.uuid4().hex}__",
}


def insert_for(dialect: Dialect, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (both backends support it)."""
    return insert_for_name(dialect.name, table)


def insert_for_name(dialect: str, table: Any) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)


def create_sync_engine(database_url: str) -> Engine:
    """A blocking SQLite engine (plain sqlite3) with the same durable pragmas, for work that
    runs whole in one thread (the ingest writer)."""
    url = make_url(database_url).set(drivername="sqlite+pysqlite")
    engine = sa_create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine
