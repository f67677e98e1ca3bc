"""`autodeployer run`: the scheduler and the HTTP server in one asyncio loop."""

from __future__ import annotations

import uvicorn

from .config import Config
from .logs import get_logger
from .scheduling import Scheduler
from .service import build_runtime
from .web.app import create_app


async def serve(config: Config) -> int:
    runtime = build_runtime(config)
    scheduler = Scheduler(runtime.reconcilers.values())
    app = create_app(runtime, scheduler)
    log = get_logger()
    log.info(
        "autodeployer starting",
        apps=[a.name for a in config.apps],
        listen=f"{config.service.host}:{config.service.port}",
        state_dir=str(config.service.state_dir),
    )
    for a in config.apps:
        log.info("app configured", app=a.name, repo=a.source.url, branch=a.source.branch,
                 sync_root=a.source.sync_root or "/", target=a.target.kind,
                 endpoint=getattr(a.target, "api_url", None) or getattr(a.target, "url", None),
                 interval=a.policy.interval)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.service.host,
            port=config.service.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    await server.serve()
    log.info("autodeployer stopped")
    return 0
