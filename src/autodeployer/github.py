"""GitHub integration of the service: webhook registration and commit statuses.

Both need a token and a REST base URL for the app's repository (`SourceSpec.github_api_url`, set for
github.com and Enterprise hosts or by GITHUB_API_URL). Failures are logged and never fail a sync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from .config import AppConfig, ServiceSettings
from .logs import get_logger
from .model import CommitInfo, Result, SyncResult, Trigger
from .sources.github import GitHubClient, GitHubError, HookSpec

WEBHOOK_PATH = "/webhook"


def client_for(app: AppConfig, http: httpx.AsyncClient) -> GitHubClient | None:
    source = app.source
    if not (source.github_api_url and source.token and source.repo_full_name):
        return None
    return GitHubClient(source.github_api_url, source.token.get_secret_value(), source.repo_full_name, http)


@dataclass(frozen=True)
class HookTarget:
    """One repository hook to manage; apps that share a repository share the hook."""

    client: GitHubClient
    spec: HookSpec

    @property
    def repo(self) -> str:
        return self.client.repo


def hook_targets(
    apps: Iterable[AppConfig], http: httpx.AsyncClient, hook_url: str, secret: str, *, set_secret: bool = True
) -> list[HookTarget]:
    """`set_secret`: replace an existing hook's secret (the service does; the CLI only with WEBHOOK_SECRET)."""
    found: dict[tuple[str, str], HookTarget] = {}
    for app in apps:
        client = client_for(app, http)
        if client is None:
            continue
        key = (client.api_url, client.repo.lower())
        found.setdefault(key, HookTarget(client, HookSpec(url=hook_url, secret=secret, set_secret=set_secret)))
    return list(found.values())


async def register_with_backoff(
    targets: list[HookTarget], *, first_delay: float = 1.0, max_delay: float = 300.0, attempts: int | None = None
) -> None:
    """Keep trying until every hook is registered; GitHub being down must not stop the service."""
    log = get_logger(component="hooks")
    pending = list(targets)
    delay = first_delay
    tries = 0
    while pending:
        tries += 1
        still: list[HookTarget] = []
        for target in pending:
            try:
                outcome = await target.client.ensure_hook(target.spec)
                log.info("webhook registered", repo=target.repo, action=outcome.describe(),
                         hook_id=outcome.hook.get("id"), url=target.spec.url)
            except GitHubError as exc:
                wait = exc.retry_after
                log.warning("webhook registration failed; will retry", repo=target.repo, error=str(exc),
                            retry_in=round(max(delay, wait or 0), 1))
                still.append(target)
        pending = still
        if not pending or (attempts is not None and tries >= attempts):
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


class CommitStatusReporter:
    """pending when a sync of a commit starts; success, failure or error when it ends."""

    def __init__(self, http: httpx.AsyncClient, settings: ServiceSettings) -> None:
        self._http = http
        self._public_url = settings.public_url
        self._clients: dict[str, GitHubClient | None] = {}
        self._log = get_logger(component="commit-status")

    def _client(self, app: AppConfig) -> GitHubClient | None:
        if app.name not in self._clients:
            self._clients[app.name] = client_for(app, self._http)
        return self._clients[app.name]

    def _target_url(self, app: AppConfig) -> str | None:
        return f"{self._public_url}/apps/{app.name}" if self._public_url else None

    async def _post(self, app: AppConfig, sha: str, state: str, description: str) -> None:
        client = self._client(app)
        if client is None or len(sha) != 40:
            return
        try:
            await client.create_status(sha, state, f"autodeployer/{app.name}", description, self._target_url(app))
        except GitHubError as exc:
            self._log.warning("commit status not posted", app=app.name, state=state, error=str(exc))

    async def started(self, app: AppConfig, revision: str, trigger: Trigger) -> None:
        await self._post(app, revision, "pending", f"deploying to {app.target.kind}")

    async def finished(self, app: AppConfig, result: SyncResult, commit: CommitInfo | None) -> None:
        if not result.revision or result.result is Result.PLANNED:
            return
        state, description = status_for(result)
        await self._post(app, result.revision, state, description)


def status_for(result: SyncResult) -> tuple[str, str]:
    """GitHub state and a one-line description for a sync result."""
    first_line = (result.error or "").split("\n")[0]
    if result.result is Result.SYNCED:
        return "success", f"deployed: {result.summary}"
    if result.result is Result.NO_CHANGE:
        return "success", "in sync (nothing to change)"
    if result.result is Result.REFUSED:
        return "failure", f"refused: {first_line}"
    if result.problems:  # the target rejected the configuration
        return "failure", f"rejected: {first_line}"
    return "error", f"failed: {first_line}"
