"""The page, liveness, readiness and metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ..deps import Reader, Svc
from ..schemas import Health, Ready, errors

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter(tags=["health"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text())


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz")
async def readyz(svc: Svc) -> Ready:
    """Readiness: the map and the model are loaded."""
    return Ready(status="ready", map_size=len(svc.map.ids), preset=svc.ext.conf["preset"], auth=svc.keys.enabled)


@router.get("/metrics", dependencies=[Reader], response_class=Response, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
    **errors(401, 403, 429)})
async def metrics(svc: Svc) -> Response:
    """Prometheus metrics (needs the read scope)."""
    svc.metrics.map_size.set(len(svc.map.ids))
    svc.metrics.streams.set(len(svc.streams))
    return Response(svc.metrics.text(), media_type="text/plain; version=0.0.4")
