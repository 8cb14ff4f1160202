"""Application state: what create_app and its lifespan build, and the typed dependencies that
hand it to routes (settings, database session, gateway client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.metrics import Metrics
from app.core.settings import Settings
from app.db.engine import create_engine
from app.db.throttle import KeyThrottle
from app.events.dispatcher import Dispatcher
from app.events.outbox import EventOutbox
from app.gateway.budget import SendBudget
from app.gateway.client import MboxiiClient
from app.gateway.reconcile import Reconciler
from app.ingest.numbers import NumberSummaries
from app.ingest.writer import Writer

if TYPE_CHECKING:
    # A type name only: the dashboard package imports this module.
    from app.dashboard.data import OverviewCache


@dataclass(slots=True)
class Storage:
    """The database engine, its sessions and the ingest writer, with the outbox its batches
    write events to: opened and closed together."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    writer: Writer
    outbox: EventOutbox


@asynccontextmanager
async def open_storage(
    settings: Settings,
    metrics: Metrics,
    *,
    pool_size: int | None = None,
    batch_delay: float | None = None,
) -> AsyncIterator[Storage]:
    """The engine and a running writer for `settings`, for the server and the CLI alike;
    on leaving, the writer commits what it holds and the engine closes its connections.
    Every batch records its outbound events (the outbox is the writer's effect), whichever
    path stores it: callbacks, replays, reconciliation."""
    engine = create_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        prepared_statements=settings.db_prepared_statements,
    )
    outbox = EventOutbox(metrics)
    try:
        writer = Writer(
            engine,
            metrics,
            batch_size=settings.ingest_batch_size,
            batch_delay=(
                settings.ingest_batch_delay_ms / 1000 if batch_delay is None else batch_delay
            ),
            queue_size=settings.ingest_queue_size,
            timeout=settings.ingest_timeout_seconds,
            effects=[NumberSummaries(metrics, settings.suppress_after_failures), outbox],
        )
        writer.start()
        try:
            yield Storage(
                engine, async_sessionmaker(engine, expire_on_commit=False), writer, outbox
            )
        finally:
            await writer.stop()
    finally:
        await engine.dispose()


@dataclass(slots=True)
class AppState:
    """Everything one application instance shares between requests. Settings, metrics and
    the dashboard's cache exist from create_app on; the storage, the key throttle and the
    gateway only while the lifespan runs (reading them before start-up raises
    AttributeError)."""

    settings: Settings
    metrics: Metrics
    dashboard_cache: OverviewCache
    #: the callback's acknowledgement, encoded once
    ack_body: bytes
    #: messages each send key may still send this minute (DLR_SEND_RATE)
    send_budget: SendBudget
    storage: Storage = field(init=False)
    #: refused API keys per client, in the database (the dashboard's login and /v1 share it)
    key_throttle: KeyThrottle = field(init=False)
    gateway: MboxiiClient | None = None
    reconciler: Reconciler | None = None
    #: sends the outbox's events (built even where DLR_WEBHOOK_DISPATCH=false, not started)
    dispatcher: Dispatcher = field(init=False)

    @property
    def engine(self) -> AsyncEngine:
        return self.storage.engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.storage.sessionmaker

    @property
    def writer(self) -> Writer:
        return self.storage.writer

    @property
    def outbox(self) -> EventOutbox:
        return self.storage.outbox


def get_state(request: Request) -> AppState:
    """The state of the application serving this request (see app.main.DlrApp)."""
    return cast(AppState, request.app.app_state)


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings_of(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_of)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """The request's session, and its one transaction: committed once the handler has
    returned, rolled back when it raised. Services only execute and flush."""
    async with state.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


# scope="function": the commit happens before the answer is sent, so a client never hears
# of a change that then failed to commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def get_gateway(state: StateDep) -> MboxiiClient:
    """The gateway client; its routes exist only when an account is configured."""
    if state.gateway is None:
        raise RuntimeError("a gateway route was called without a gateway account")
    return state.gateway


GatewayDep = Annotated[MboxiiClient, Depends(get_gateway)]
