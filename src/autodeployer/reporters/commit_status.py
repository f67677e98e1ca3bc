"""Commit statuses: `pending` when a sync of a commit starts; success, failure or error when it ends.

The states are GitHub's words; each host's client maps them (GitLab running/success/failed,
Bitbucket INPROGRESS/SUCCESSFUL/FAILED, Gitea as GitHub). Failures to post are logged and never
fail a sync.
"""

from __future__ import annotations

import httpx

from ..config.loader import AppConfig, ServiceSettings
from ..hooks import provider_client
from ..logs import get_logger
from ..model import CommitInfo, HealthNotice, Reason, Result, SyncResult, Trigger
from ..providers import ProviderClient
from ..sources.github import GitHubError


class CommitStatusReporter:
    """pending when a sync of a commit starts; success, failure or error when it ends."""

    def __init__(self, http: httpx.AsyncClient, settings: ServiceSettings) -> None:
        self._http = http
        self._public_url = settings.public_url
        self._clients: dict[str, ProviderClient | None] = {}
        self._log = get_logger(component="commit-status")

    def _client(self, app: AppConfig) -> ProviderClient | None:
        if app.name not in self._clients:
            self._clients[app.name] = provider_client(app, self._http)
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
        if not result.revision or COMMIT_STATES[result.result] is None:
            return
        state, description = status_for(result)
        await self._post(app, result.revision, state, description)

    async def health(self, app: AppConfig, notice: HealthNotice) -> None:
        """The degraded revision's status says so: failure, "rolled back: <evidence>" (GitHub keeps 140
        characters of a description)."""
        description = notice.description
        if len(description) > 140:
            description = description[:139] + "…"
        await self._post(app, notice.revision, "failure", description)


#: The GitHub state each result posts (None: none is posted, e.g. a dry run changes nothing).
COMMIT_STATES: dict[Result, str | None] = {
    Result.RUNNING: "pending", Result.SYNCED: "success", Result.NO_CHANGE: "success", Result.PLANNED: None,
    Result.REFUSED: "failure", Result.FAILED: "error", Result.INTERRUPTED: "error", Result.HELD: "pending",
}


def status_for(result: SyncResult) -> tuple[str, str]:
    """GitHub state and a one-line description for a sync result.

    A configuration the target rejected is the commit's fault ("failure"), like a refusal; any other
    failure (Git or the target out of reach, drift, a bug) is the deployment's ("error")."""
    first_line = (result.error or "").split("\n")[0]
    state = COMMIT_STATES[result.result] or "error"
    if result.result is Result.SYNCED:
        return state, f"deployed: {result.summary}"
    if result.result is Result.NO_CHANGE:
        return state, "in sync (nothing to change)"
    if result.result is Result.HELD:  # "held until Mon 08:00 CET" (GitHub cuts descriptions at 140)
        return state, first_line[:140]
    if result.reason is Reason.REJECTED:
        return "failure", f"rejected: {first_line}"
    return state, f"{result.result.value}: {first_line}"
