"""The Starlette application served by `autodeployer run`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..scheduling import Scheduler
from ..service import Runtime


@dataclass
class WebContext:
    runtime: Runtime
    scheduler: Scheduler


def create_app(runtime: Runtime, scheduler: Scheduler) -> Starlette:
    ctx = WebContext(runtime, scheduler)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        ready = scheduler.all_attempted()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()
            await runtime.aclose()

    app = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    return app
