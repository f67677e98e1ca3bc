"""Where each app stands, as plain dicts: the one view shared by the API, the page, metrics and CLI.

Nothing here ever includes a secret: only names, URLs without credentials, revisions and results.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .config.loader import AppConfig
from .model import Status
from .rollout.view import rollout_view
from .scheduling import AppWorker
from .store import AppState, HistoryRow, Store


def sync_status(state: AppState) -> Status:
    """Where the app stands: suspended, never attempted (pending), else what its last result says."""
    if state.suspended:
        return Status.SUSPENDED
    return state.last_result.status if state.last_result is not None else Status.PENDING


def web_url(app: AppConfig) -> str | None:
    """Browser URL of the repository when it lives on GitHub (or GitHub Enterprise)."""
    source = app.source
    if not source.github_api_url or not source.repo_full_name:
        return None
    url = source.url
    match = re.match(r"^[\w.-]+@([\w.-]+):", url)
    host = match.group(1) if match else re.sub(r"^\w+://", "", url).split("/")[0].split("@")[-1]
    return f"https://{host}/{source.repo_full_name}"


def commit_url(app: AppConfig, sha: str | None) -> str | None:
    base = web_url(app)
    return f"{base}/commit/{sha}" if base and sha else None


def endpoint(app: AppConfig) -> str | None:
    return getattr(app.target, "api_url", None) or getattr(app.target, "url", None)


def app_row(app: AppConfig, store: Store, worker: AppWorker | None, *, owner: str | None = None,
            owner_heartbeat_at: float | None = None, state: AppState | None = None) -> dict[str, Any]:
    """`owner`: the replica reconciling the app (None with a single replica, or when unknown)."""
    state = state or store.get_state(app.name)
    live = state.last_synced_revision
    return {
        "name": app.name,
        "target": app.target.kind,
        "endpoint": endpoint(app),
        "repository": app.source.url,
        "branch": app.source.branch,
        "tag": app.source.tag,  # when set, the tag is followed and the branch is not
        "sync_root": app.source.sync_root or "/",
        "status": sync_status(state).value,
        "live_revision": live,
        "live_commit": {**state.live_commit, "url": commit_url(app, live)} if live else None,
        "last_revision": state.last_revision,
        "last_result": state.last_result.value if state.last_result else None,
        "last_reason": state.last_reason.value if state.last_reason else None,
        "last_error": state.last_error,
        "last_attempt_at": state.last_attempt_at,
        "last_success_at": state.last_success_at,
        "consecutive_failures": state.failures,
        "suspended": state.suspended,
        "suspended_reason": state.suspended_reason,
        "pinned_revision": state.pinned_revision,
        "interval": app.policy.interval,
        "next_poll_at": worker.next_poll_at if worker and not state.suspended else None,
        "running": worker.running.value if worker and worker.running else None,
        "pending": worker.pending.value if worker and worker.pending else None,
        "owner": owner,
        "owner_heartbeat_at": owner_heartbeat_at,
        # sync windows and promotion (docs/rollout.md): None without a policy
        "rollout": rollout_view(app, state, store, time.time(), running=bool(worker and worker.running)),
        "health": health_view(state),
    }


HEALTH_FIELDS = ("revision", "state", "since", "checked_at", "evidence")


def health_view(state: AppState) -> dict[str, Any] | None:
    """The last deployed revision's health (rollout/health.py), or None when it is not watched."""
    health = state.health or {}
    return {k: health.get(k) for k in HEALTH_FIELDS} if health.get("state") else None


def history_row(row: HistoryRow) -> dict[str, Any]:
    return row.to_dict()
