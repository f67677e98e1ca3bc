"""Wiring: build sources, targets, reconcilers and the scheduler from a Config.

Everything is constructed here and passed down; no module reaches for global state.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from . import __version__
from .config.loader import AppConfig, Config, ServiceSettings
from .coordination import Coordinator, LocalCoordinator
from .errors import ConfigError
from .hooks import client_for
from .logs import Redactor, configure_logging
from .reconcile import Reconciler
from .reporters.base import Reporter
from .reporters.commit_status import CommitStatusReporter
from .reporters.notify import NotifyReporter
from .sources.git import GitObserver, GitSource, MirrorLocks
from .sources.sharedhead import SharedHeads
from .sources.signatures import Keyrings
from .store import Store, open_store
from .store.base import default_replica_id
from .targets import TARGETS
from .targets.base import Target, TargetDeps

USER_AGENT = f"autodeployer/{__version__}"


@dataclass
class Runtime:
    config: Config
    redactor: Redactor
    store: Store
    reconcilers: dict[str, Reconciler]
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    heads: SharedHeads | None = None  # the process's shared head checks (their kept-alive sockets close here)

    @property
    def http(self) -> httpx.AsyncClient:
        """The TLS-verifying client, shared by GitHub calls and notifications."""
        return self.clients[0]

    async def aclose(self) -> None:
        for reconciler in self.reconcilers.values():
            await reconciler.health.aclose()  # health watches end first: they use the target
            await reconciler.target.aclose()
            reconciler.source.close()
        for client in self.clients:
            await client.aclose()
        if self.heads is not None:
            self.heads.connections.close()
        self.store.close()


def make_redactor(config: Config) -> Redactor:
    return Redactor(config.secrets())


def setup_logging(config: Config, redactor: Redactor, *, level: str | None = None) -> None:
    """`level` overrides LOG_LEVEL (the CLI's human verbs log warnings and errors only)."""
    configure_logging(level or config.service.log_level, config.service.log_format, redactor)


def _http_client(verify: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=verify,
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(30.0, connect=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        follow_redirects=False,
        trust_env=False,
    )


def store_for(settings: ServiceSettings, *, memory_fallback: bool = False) -> Store:
    """The configured store: PostgreSQL when STORE_URL is set, else SQLite under STATE_DIR.

    `memory_fallback` (the long-running service): a STATE_DIR where SQLite cannot open its file is
    logged and replaced by an in-memory store instead of stopping the process; one-shot commands
    keep failing loudly."""
    password = settings.store_password.get_secret_value() if settings.store_password else None
    try:
        return open_store(settings.state_dir, settings.store_url, password=password,
                          replica_id=settings.replica_id or default_replica_id(), memory_fallback=memory_fallback)
    except ImportError as exc:  # psycopg is a dependency: failing to import it means a broken installation
        raise ConfigError(f"STORE_URL: the PostgreSQL driver psycopg, installed with autodeployer, cannot be imported "
                          f"({exc}); reinstall autodeployer") from None
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        where = getattr(exc, "filename", None) or settings.state_dir
        raise ConfigError(f"STATE_DIR {settings.state_dir}: cannot open the history store ({where}: {reason})"
                          ) from None


def coordinator_for(store: Store, apps: Sequence[str], settings: ServiceSettings) -> Coordinator:
    """Who decides which apps this process reconciles: the PostgreSQL coordinator when the store is
    shared (STORE_URL), else a single replica owning every app."""
    if settings.store_url:
        # Imported here, not above: psycopg costs about 0.1 s, which every command on SQLite would pay.
        from .coordination.postgres import PostgresCoordinator
        from .store.postgres import PostgresStore

        if isinstance(store, PostgresStore):
            return PostgresCoordinator(store, apps, heartbeat=settings.heartbeat_interval)
    return LocalCoordinator(settings.replica_id or default_replica_id())


def bind_listener(host: str, port: int, what: str = "PORT") -> socket.socket:
    """The service's listening socket, bound before anything else happens.

    uvicorn binds only after the app's start-up (which starts the first sync), so a busy PORT used
    to apply a pending change and then die; binding first makes it a clean start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{what} {port}: cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def build_runtime(
    config: Config,
    *,
    redactor: Redactor | None = None,
    store: Store | None = None,
    reporters: Sequence[Reporter] = (),
    git_observer: GitObserver | None = None,
    apps: Sequence[AppConfig] | None = None,
) -> Runtime:
    redactor = redactor or make_redactor(config)
    store = store or store_for(config.service)
    store.mark_interrupted()
    clients: dict[bool, httpx.AsyncClient] = {True: _http_client(True)}
    reporters = list(reporters)
    if config.service.commit_status:
        reporters.insert(0, CommitStatusReporter(clients[True], config.service))
    if config.service.notify_url is not None:
        reporters.append(NotifyReporter(clients[True], config.service))
    locks = MirrorLocks()
    heads = SharedHeads()  # one head check per branch and credentials per poll interval, not one per app
    git_http = httpx.AsyncClient(  # like git itself: proxies from the environment, TLS verified
        headers={"User-Agent": USER_AGENT}, timeout=30.0, trust_env=True, follow_redirects=False,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=50),
    )
    reconcilers: dict[str, Reconciler] = {}
    keyrings = Keyrings(config.service.state_dir)  # VERIFY_COMMITS: trusted keys imported at start
    for app in apps if apps is not None else config.apps:
        verify = bool(getattr(app.target, "verify_tls", True))
        client = clients.get(verify) or clients.setdefault(verify, _http_client(verify))
        source = GitSource(
            app.source, config.service.state_dir, redactor=redactor, locks=locks, observer=git_observer,
            http=git_http, heads=heads,
        )
        if app.source.head_check != "git":
            source.github = client_for(app, client)
        deps = TargetDeps(http=client, redactor=redactor, state_dir=config.service.state_dir, source=source)
        target: Target = TARGETS[app.target.kind].create(app.target, deps)
        signatures = keyrings.verifier(app.policy.verify_commits, app.source.trusted_keys_file,
                                       timeout=app.source.git_timeout)
        reconcilers[app.name] = Reconciler(app, source, target, store, reporters=reporters, redactor=redactor,
                                           signatures=signatures)
    return Runtime(config, redactor, store, reconcilers, [*clients.values(), git_http], heads)

