"""The built-in status page at /dashboard: server-rendered HTML, SVG charts, live figures."""

from __future__ import annotations

from fastapi import APIRouter

from app.dashboard import access, numbers, routes

router = APIRouter()
router.include_router(access.router)
router.include_router(routes.router)
router.include_router(numbers.router)
