"""The two ways a report can fail to be stored, and which of them a database error is."""

from __future__ import annotations

import sqlite3

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError


class IngestUnavailable(Exception):
    """Storage is unreachable or the writer is saturated: answer 503, acknowledge nothing."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class IngestRefused(Exception):
    """The database refused this one report (it passed validation): it is not stored."""


def _sqlstate_class(exc: asyncpg.PostgresError) -> str:
    """The first two characters of the error's SQLSTATE ("" when it has none)."""
    return str(getattr(exc, "sqlstate", "") or "")[:2]


def is_connectivity_error(exc: BaseException) -> bool:
    """True when the failure is the database being away, not the data being refused."""
    if isinstance(exc, asyncpg.PostgresError):  # the PostgreSQL store uses asyncpg directly
        # Connection trouble (08), resources (53), shutdown (57), system (58), and
        # serialization or deadlock (40) pass with time; anything else is this data.
        return _sqlstate_class(exc) in ("08", "40", "53", "57", "58")
    if isinstance(exc, sqlite3.Error):  # the SQLite store uses the driver directly
        return not isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError
        )
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    # A StatementError is a value that could not be bound: this report's problem.
    # Anything else (a socket error, a pool timeout, a driver surprise) counts as an
    # outage: answering 503 makes the gateway retry, which is always safe.
    return not isinstance(exc, StatementError)


def is_conflict(exc: BaseException) -> bool:
    """True for a deadlock or serialization failure (SQLSTATE class 40) on PostgreSQL: two
    writers took the same rows in different orders, the database rolled one transaction
    back whole, and running it again is safe. (Statement-level triggers lock the rollup's
    and the numbers' rows in the order their INSERT and UPDATE triggers fire, so batches of
    several replicas can meet that way.)"""
    return isinstance(exc, asyncpg.PostgresError) and _sqlstate_class(exc) == "40"


class CallbackRejected(Exception):
    """The request cannot become a report; `reason` is one of the quarantine reasons."""

    def __init__(self, reason: str, errors: list[dict[str, str]]) -> None:
        super().__init__(reason, errors)
        self.reason = reason
        self.errors = errors
