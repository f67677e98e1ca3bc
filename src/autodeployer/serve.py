"""`autodeployer run`: the scheduler and the HTTP server in one asyncio loop."""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from .config.loader import Config
from .hooks import WEBHOOK_PATH, hook_targets, register_with_backoff
from .logs import get_logger
from .previews import preview_jobs, preview_service
from .reporters.metrics import Metrics, MetricsReporter
from .runtime import Runtime, bind_listener, build_runtime, coordinator_for, store_for
from .scheduling import Scheduler
from .web.app import BackgroundJob, create_app
from .web.webhook import WebhookReceiver, load_or_create_secret


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown; a clean stop should exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def webhook_secret(config: Config) -> str:
    configured = config.service.webhook_secret
    if configured:
        return configured.get_secret_value()
    state_dir = config.service.state_dir
    try:
        return load_or_create_secret(state_dir)
    except OSError as exc:  # read-only or full STATE_DIR: keep serving with a secret of this process only
        get_logger().error(
            "cannot keep the webhook secret in STATE_DIR; using a secret of this process only: webhooks registered "
            "with it stop verifying after a restart (set WEBHOOK_SECRET to avoid this)",
            state_dir=str(state_dir), error=exc.strerror or str(exc), path=exc.filename)
        return secrets.token_hex(32)


def _registration_job(runtime: Runtime, secret: str, hook_url: str,
                      events: tuple[str, ...] = ("push",)) -> BackgroundJob | None:
    targets = hook_targets(runtime.config.apps, runtime.http, hook_url, secret, events=events)
    if not targets:
        get_logger().warning("PUBLIC_URL is set but no app has a repository on a Git host with an API URL and a "
                             "token (GitHub, GitLab, Gitea, Bitbucket Server); no hook registered")
        return None

    async def job() -> None:
        await register_with_backoff(targets)

    return job


async def serve(config: Config, *, hook_path: str = WEBHOOK_PATH, sock: socket.socket | None = None) -> int:
    """Serve until SIGTERM. `sock`: a listener bound by the caller (the demo checks its port early)."""
    sock = sock or bind_listener(config.service.host, config.service.port)  # before the first sync
    try:
        return await _serve(config, hook_path, sock)
    finally:
        sock.close()


async def _serve(config: Config, hook_path: str, sock: socket.socket) -> int:
    metrics = Metrics()
    runtime = build_runtime(config, store=store_for(config.service, memory_fallback=True),
                            reporters=[MetricsReporter(metrics)], git_observer=metrics.observe_git)
    secret = webhook_secret(config)
    runtime.redactor.add(secret)
    coordinator = coordinator_for(runtime.store, [a.name for a in config.apps], config.service)
    scheduler = Scheduler(runtime.reconcilers.values(), coordinator=coordinator,
                          on_poll=metrics.observe_poll_lateness)
    background: list[BackgroundJob] = []
    settings = config.service
    previews = preview_service(runtime) if settings.previews else None  # PREVIEWS=true: pull-request plans
    webhooks = bool(settings.public_url and settings.register_webhook)
    if settings.public_url and settings.register_webhook:
        events = ("push", "pull_request") if previews is not None else ("push",)
        job = _registration_job(runtime, secret, settings.public_url + hook_path, events)
        if job:
            background.append(job)
    if previews is not None:
        background += preview_jobs(previews, runtime, webhooks=webhooks)
    receiver = WebhookReceiver([secret], scheduler, observer=metrics.observe_webhook,
                               read_timeout=settings.webhook_read_timeout, previews=previews)
    app = create_app(runtime, scheduler, webhook=receiver, background=background, metrics=metrics,
                     previews=previews)
    log = get_logger()
    log.info(
        "autodeployer starting",
        apps=[a.name for a in config.apps],
        listen=f"{settings.host}:{settings.port}",
        state_dir=str(settings.state_dir),
        **({"store": settings.store_url, "replica": coordinator.replica_id} if settings.store_url else {}),
    )
    if settings.store_url and not settings.webhook_secret:
        log.warning("STORE_URL is set but WEBHOOK_SECRET is not: each replica generates its own secret, so "
                    "webhooks only verify on one of them; set the same WEBHOOK_SECRET on every replica")
    for a in config.apps:
        log.info("app configured", app=a.name, repo=a.source.url, follows=a.source.follows,
                 sync_root=a.source.sync_root or "/", target=a.target.kind,
                 endpoint=getattr(a.target, "api_url", None) or getattr(a.target, "url", None),
                 interval=a.policy.interval)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    host, port = sock.getsockname()[:2]
    # uvicorn says nothing about where it listens when it is handed a bound socket: say it ourselves
    log.info("listening", url=f"http://{host}:{port}")
    await server.serve(sockets=[sock])
    log.info("autodeployer stopped")
    return 0
