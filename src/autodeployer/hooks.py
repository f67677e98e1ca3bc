"""Registering the service's webhook with the Git host: idempotent, paginated, retried with backoff.

Needs a token and a REST base URL for the app's repository (`SourceSpec.github_api_url`, set for
github.com and Enterprise hosts or by GITHUB_API_URL; for the other hosts `provider_api_url`, see
`providers/`). The host being down never stops the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from .config.loader import AppConfig
from .logs import get_logger
from .providers import ProviderClient, provider_client_for
from .providers.bitbucket import BitbucketServerClient
from .providers.gitea import GiteaClient
from .providers.gitlab import GitLabClient
from .sources.github import GitHubClient, GitHubError, HookSpec

WEBHOOK_PATH = "/webhook"


def client_for(app: AppConfig, http: httpx.AsyncClient) -> GitHubClient | None:
    """The GitHub client (the head check uses it); hooks and statuses use `provider_client`."""
    source = app.source
    if not (source.github_api_url and source.token and source.repo_full_name):
        return None
    return GitHubClient(source.github_api_url, source.token.get_secret_value(), source.repo_full_name, http)


def provider_client(app: AppConfig, http: httpx.AsyncClient) -> ProviderClient | None:
    """The API client of the app's Git host (GitHub, GitLab, Gitea, Bitbucket), if it has one."""
    return provider_client_for(app.source, http)


@dataclass(frozen=True)
class HookTarget:
    """One repository hook to manage; apps that share a repository share the hook."""

    client: ProviderClient
    spec: HookSpec

    @property
    def repo(self) -> str:
        return self.client.repo


#: The clients of the hosts whose hooks also carry pull-request events when previews are on.
PREVIEW_HOSTS = (GitHubClient, GitLabClient, GiteaClient, BitbucketServerClient)


def hook_targets(
    apps: Iterable[AppConfig], http: httpx.AsyncClient, hook_url: str, secret: str, *, set_secret: bool = True,
    events: tuple[str, ...] = ("push",),
) -> list[HookTarget]:
    """`set_secret`: replace an existing hook's secret (the service does; the CLI only with WEBHOOK_SECRET).
    `events`: also `pull_request` when previews are on (the clients of the hosts with previews:
    `PREVIEW_HOSTS`)."""
    found: dict[tuple[str, str], HookTarget] = {}
    for app in apps:
        client = provider_client(app, http)
        if client is None:
            continue
        key = (client.api_url, client.repo.lower())
        wanted = events if isinstance(client, PREVIEW_HOSTS) else ("push",)  # hosts with previews
        found.setdefault(key, HookTarget(client, HookSpec(url=hook_url, secret=secret,
                                                                  set_secret=set_secret, events=wanted)))
    return list(found.values())


async def register_with_backoff(
    targets: list[HookTarget], *, first_delay: float = 1.0, max_delay: float = 300.0, attempts: int | None = None
) -> None:
    """Keep trying until every hook is registered; the host being down must not stop the service
    (a `ProviderError` of another host is a `GitHubError`, so it is retried alike)."""
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
