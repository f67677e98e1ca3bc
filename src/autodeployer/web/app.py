"""The Starlette application served by `autodeployer run`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..previews import PreviewService
from ..reporters.metrics import CONTENT_TYPE, Metrics, StateCollector
from ..runtime import Runtime
from ..scheduling import Scheduler
from .api import Api
from .pages import page_routes
from .webhook import WebhookReceiver

# a coroutine function, not any awaitable: asyncio.create_task() runs each one as a task
BackgroundJob = Callable[[], Coroutine[Any, Any, None]]


def create_app(
    runtime: Runtime,
    scheduler: Scheduler,
    *,
    webhook: WebhookReceiver | None = None,
    background: Sequence[BackgroundJob] = (),
    metrics: Metrics | None = None,
    previews: PreviewService | None = None,
) -> Starlette:
    api = Api(runtime, scheduler, previews=previews)
    metrics = metrics or Metrics()
    coordinator = scheduler.coordinator
    metrics.add_collector(StateCollector(metrics, api.rows, lambda: scheduler.pending_count,
                                         lambda: (coordinator.owned_counts(), coordinator.live_replicas())))

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> JSONResponse:
        reason = coordinator.reason  # e.g. PostgreSQL unreachable: alive, serving status, not applying
        reason = reason or runtime.store.warning  # STATE_DIR unwritable: state in memory
        return JSONResponse({"status": "ok"} if reason is None else {"status": "degraded", "reason": reason})

    async def readyz(request: Request) -> JSONResponse:
        ready = scheduler.all_attempted()
        reason = None if ready else coordinator.reason
        return JSONResponse({"ready": ready, **({"reason": reason} if reason else {})},
                            status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await scheduler.start()
        jobs = [asyncio.ensure_future(job()) for job in background]
        try:
            yield
        finally:
            for job in jobs:
                job.cancel()
            await scheduler.stop()
            await runtime.aclose()

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *api.routes(),
        *page_routes(api),
    ]
    if webhook is not None:
        routes += [
            Route("/webhook", webhook.handle, methods=["POST"]),
            Route("/dploy", webhook.handle, methods=["POST"]),  # the dploy observer's path
            Route("/webhook/bitbucket/{token}", webhook.handle, methods=["POST"]),  # Bitbucket Cloud
            Route("/webhook/{provider}", webhook.handle, methods=["POST"]),  # the host named, not recognised
        ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.scheduler = scheduler
    app.state.api = api
    return app
