"""GitLab (gitlab.com and self-hosted) as a `Provider`.

Deliveries carry the hook's secret token itself in `X-Gitlab-Token` (no HMAC), compared in constant
time before the body is read. `X-Gitlab-Event` says `Push Hook` / `Tag Push Hook` (older "Test"
buttons: `Push Event`; pushes through system hooks: `System Hook`), so the body's `object_kind` is what
decides. Replays are recognised by `Idempotency-Key` (GitLab 17.4+, the same on a retry) or else
`X-Gitlab-Event-UUID`. The API base is GITLAB_API_URL including `/api/v4`; the project id is its
URL-encoded path (`group%2Fsub%2Fproject`); the token goes in `PRIVATE-TOKEN`. Merge-request events
(`Merge Request Hook`, `object_kind` merge_request) become the pull-request event previews plan
(`reviews.PullRequestEvent`, GitHub's action words): `object_attributes.action` open -> opened,
reopen -> reopened, update -> synchronize only when `oldrev` is present (new commits; other updates,
such as a title, change no plan), close/merge -> closed; `target_branch` the base, `last_commit.id`
the head, `source_project_id` != `target_project_id` a fork; `project.path_with_namespace` the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ..reviews import PullRequestEvent, ReviewDelivery
from ..sources.github import HookOutcome, HookSpec
from .base import (
    ZERO_SHA,
    Ignored,
    Malformed,
    Parsed,
    ProviderClient,
    ProviderName,
    Push,
    branch_ref,
    call,
    delete_hook,
    failure,
    outcome,
)

PUSH_KINDS = ("push", "tag_push")
PUSH_EVENTS = ("Push Hook", "Tag Push Hook", "System Hook", "Push Event", "Tag Push Event")
#: GitHub's commit states in GitLab's words (a started sync is "running", both failures "failed").
STATES = {"pending": "running", "success": "success", "failure": "failed", "error": "failed"}


class GitLabProvider:
    name: ProviderName = "gitlab"

    def recognises(self, headers: Mapping[str, str]) -> bool:
        return "x-gitlab-event" in headers or "x-gitlab-token" in headers

    def event(self, headers: Mapping[str, str]) -> str:
        return headers.get("x-gitlab-event", "")

    def delivery_key(self, headers: Mapping[str, str]) -> tuple[str, str]:
        delivery = headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid", "")
        return headers.get("x-gitlab-webhook-uuid", ""), delivery

    def signature(self, headers: Mapping[str, str]) -> str | None:
        return None

    def token(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-gitlab-token", "")

    def parse(self, event: str, payload: dict[str, Any]) -> Parsed:
        kind = payload.get("object_kind")
        if kind == "merge_request":
            return merge_request(payload)
        if kind not in PUSH_KINDS:
            return Ignored(f"{kind or event or 'unnamed'} events are not handled")
        if event not in PUSH_EVENTS:
            return Ignored(f"X-Gitlab-Event {event or '(missing)'} does not announce a push")
        project = payload.get("project")
        repo = project.get("path_with_namespace") if isinstance(project, dict) else None
        ref, after = payload.get("ref"), payload.get("after")
        if not isinstance(ref, str) or not isinstance(repo, str) or not isinstance(after, str):
            return Malformed("push payload without ref, after or project.path_with_namespace")
        full = branch_ref(ref)
        if full is None:
            return Ignored(f"not a branch or tag: {ref}")
        return [Push(repo, full, after, deleted=after == ZERO_SHA)]

    def client(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> ProviderClient:
        return GitLabClient(api_url, token, repo, http)


class GitLabClient:
    """Project hooks and commit statuses of one project (its path, URL-encoded, is the id)."""

    def __init__(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self._http = http
        self._headers = {"PRIVATE-TOKEN": token, "Accept": "application/json"}
        self._project = f"{self.api_url}/projects/{quote(repo, safe='')}"

    async def _raw_hooks(self) -> list[dict[str, Any]]:
        """Every hook, page by page until `X-Next-Page` is empty."""
        hooks: list[dict[str, Any]] = []
        page = "1"
        while page:
            response = await call(self._http, "GET", f"{self._project}/hooks?per_page=100&page={page}",
                                  self._headers)
            if response.status_code != 200:
                raise failure(response, f"listing hooks of {self.repo}")
            hooks.extend(response.json())
            page = response.headers.get("x-next-page", "")
        return hooks

    async def list_hooks(self) -> list[dict[str, Any]]:
        return [_github_shape(hook) for hook in await self._raw_hooks()]

    async def _find(self, url: str) -> dict[str, Any] | None:
        return next((hook for hook in await self._raw_hooks() if hook.get("url") == url), None)

    async def ensure_hook(self, spec: HookSpec) -> HookOutcome:
        """Create the hook, or set the push flags it lacks; the token is sent again only when
        `spec.set_secret` (GitLab never shows it back)."""
        wanted = {"push_events": True, "tag_push_events": True, "enable_ssl_verification": True}
        if "pull_request" in spec.events:  # PREVIEWS=true: merge requests too (never switched off here)
            wanted["merge_requests_events"] = True
        hook = await self._find(spec.url)
        if hook is None:
            body = {"url": spec.url, "token": spec.secret, "merge_requests_events": False, **wanted}
            response = await call(self._http, "POST", f"{self._project}/hooks", self._headers, json=body)
            if response.status_code != 201:
                raise failure(response, f"creating the hook on {self.repo}")
            return outcome(_github_shape(response.json()), created=True)
        changed = [key for key, value in wanted.items() if hook.get(key) != value]
        if changed or spec.set_secret:
            body = {"url": spec.url, **wanted, **({"token": spec.secret} if spec.set_secret else {})}
            response = await call(self._http, "PUT", f"{self._project}/hooks/{hook['id']}", self._headers, json=body)
            if response.status_code != 200:
                raise failure(response, f"updating hook {hook['id']} on {self.repo}")
            hook = response.json()
        updated = [key.replace("_", " ") for key in changed]
        return outcome(_github_shape(hook), updated=updated, secret_set=spec.set_secret)

    async def remove_hook(self, url: str) -> dict[str, Any] | None:
        hook = await self._find(url)
        deleted = await delete_hook(self._http, f"{self._project}/hooks", self._headers, hook, self.repo)
        return _github_shape(hook) if deleted and hook is not None else None

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        body: dict[str, Any] = {"state": STATES.get(state, "failed"), "name": context,
                                "description": description[:140]}
        if target_url:
            body["target_url"] = target_url
        response = await call(self._http, "POST", f"{self._project}/statuses/{sha}", self._headers, json=body)
        if response.status_code not in (200, 201):
            raise failure(response, f"posting status {body['state']} for {sha[:12]} on {self.repo}")


#: GitLab's merge-request actions in GitHub's words; "update" only with `oldrev` (new commits).
MR_ACTIONS = {"open": "opened", "reopen": "reopened", "update": "synchronize", "close": "closed", "merge": "closed"}


def merge_request(payload: dict[str, Any]) -> Parsed:
    """A `Merge Request Hook` delivery as the pull-request event previews plan, or why it asks for nothing."""
    attrs, project = payload.get("object_attributes"), payload.get("project")
    if not isinstance(attrs, dict) or not isinstance(project, dict):
        return ReviewDelivery(None, "merge_request payload without object_attributes or project")
    action = str(attrs.get("action") or "")
    if action not in MR_ACTIONS:
        return Ignored(f"merge request action {action or '(none)'} changes no plan")
    if action == "update" and not attrs.get("oldrev"):
        return Ignored("merge request update without new commits (no oldrev) changes no plan")
    last = attrs.get("last_commit")
    values = {"project.path_with_namespace": project.get("path_with_namespace"), "object_attributes.iid":
              attrs.get("iid"), "object_attributes.target_branch": attrs.get("target_branch"),
              "object_attributes.last_commit.id": last.get("id") if isinstance(last, dict) else None}
    missing = [name for name, value in values.items() if value in (None, "")]
    if missing or not isinstance(values["object_attributes.iid"], int):
        return ReviewDelivery(None, f"merge_request payload without {', '.join(missing) or 'a numeric iid'}")
    source, target = attrs.get("source_project_id"), attrs.get("target_project_id")
    fork = source is not None and target is not None and source != target
    repo = str(values["project.path_with_namespace"])
    return ReviewDelivery(PullRequestEvent(
        repo, int(values["object_attributes.iid"]), MR_ACTIONS[action], str(values["object_attributes.target_branch"]),
        str(values["object_attributes.last_commit.id"]), f"project {source}" if fork else repo, fork, "gitlab"))


def _github_shape(hook: dict[str, Any]) -> dict[str, Any]:
    events = [name for name, flag in (("push", "push_events"), ("tag_push", "tag_push_events"),
                                      ("merge_requests", "merge_requests_events")) if hook.get(flag)]
    return {"id": hook.get("id"), "config": {"url": hook.get("url")}, "events": events,
            "active": hook.get("alert_status", "executable") == "executable"}
