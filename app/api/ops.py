"""Operations endpoints: liveness, readiness against the schema head, Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.errors import error_responses
from app.api.schemas.ops import HealthRead, ReadyRead
from app.db.migrate import current_revision, head_revision
from app.state import StateDep

router = APIRouter(tags=["operations"])
# Mounted behind the API keys unless DLR_METRICS_PUBLIC (the volumes are business figures).
metrics_router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthRead, summary="Liveness")
async def get_health() -> dict[str, str]:
    """Answer 200 while the process runs."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyRead,
    summary="Readiness",
    responses={503: {"model": ReadyRead, "description": "Database unreachable or not migrated"}},
)
async def get_readiness(state: StateDep) -> JSONResponse:
    """Answer 200 when the database answers and its schema is at the newest migration."""
    expected = head_revision()
    revision = None
    try:
        async with asyncio.timeout(3):
            async with state.engine.connect() as connection:
                revision = await current_revision(connection)
        database = "ok"
    except Exception as exc:  # any failure means not ready; say which kind
        database = f"unreachable ({exc.__class__.__name__})"
    ready = database == "ok" and revision == expected
    if database == "ok" and not ready:
        database = "not migrated: run `mboxii-dlr migrate`"
    body = ReadyRead(
        status="ready" if ready else "not ready",
        database=database,
        schema_revision=revision,
        expected_revision=expected,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **error_responses(401),
    },
)
async def get_metrics(state: StateDep) -> Response:
    """Expose the service's metrics in the Prometheus text format."""
    data = generate_latest(state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
