"""`vprkit serve`'s application: FastAPI with the routers, the guards and a lifespan around one `Service`.

Layers, outermost first: `Limits` (body bytes, stalls, time, metrics), `HostGuard` (DNS rebinding),
`OriginGuard` (CSRF), then FastAPI's routing; the caller's key and scopes are a dependency of each route.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from .middleware import HostGuard, Limits, OriginGuard, allowed_hosts
from .routers import health, localize, streams
from .routers import map as map_router
from .settings import DEFAULTS
from .state import Service

__all__ = ["DEFAULTS", "Service", "build", "create_app"]


def create_app(svc: Service, host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app over `svc` as served on `host` (the bound address decides which `Host` names pass).
    `/docs` and `/openapi.json` are public unless keys are on (setting `public_docs`: null or "auto", true,
    false)."""
    docs = svc.s["public_docs"]
    public = not svc.keys.enabled if docs in (None, "auto") else docs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """The journal is compacted and the writer's lock released on a clean shutdown."""
        yield
        svc.writer.compact()
        svc.close()

    app = FastAPI(title="vprkit localization service", version="1", lifespan=lifespan,
                  description="Where am I? Send a photo, get the matching map images and a position estimate.",
                  docs_url="/docs" if public else None, redoc_url=None, openapi_url="/openapi.json" if public else None)
    app.state.svc = svc
    for r in (health.router, localize.router, streams.router, map_router.router):
        app.include_router(r)
    app.add_middleware(OriginGuard, origins=svc.s["allowed_origins"])
    app.add_middleware(HostGuard, hosts=allowed_hosts(host, svc.s["allowed_hosts"]))
    return app


def build(index_dir: str | Path, keys: str | Path | None = None, settings: dict | None = None, device: str = "cpu",
          host: str = "127.0.0.1", token: str | None = None) -> tuple[Limits, Service]:
    """The ASGI app (with the body limit outermost) and its Service (`token`: the start-up token to use when
    there are no keys; default a random one)."""
    svc = Service(index_dir, keys, settings, device, token=token)
    return Limits(create_app(svc, host), svc), svc
