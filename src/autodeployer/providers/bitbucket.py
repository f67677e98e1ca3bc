"""Bitbucket as a `Provider`: Server / Data Center fully, Cloud for receiving pushes only.

Bitbucket Server / Data Center: `X-Event-Key: repo:refs_changed`, `X-Request-Id` (a UUID per
request), `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>` when the hook has a secret; the
"Test connection" button sends `diagnostics:ping`. The payload's `changes[]` carry `ref.id`
(`refs/heads/main`), `ref.displayId`, `toHash` and `type` (ADD, UPDATE, DELETE), the repository is
`repository.project.key` / `repository.slug`. API: BITBUCKET_API_URL is the server's base URL; hooks at
`/rest/api/1.0/projects/{key}/repos/{slug}/webhooks` (paged: `start`, `isLastPage`, `nextPageStart`),
build statuses at `/rest/build-status/1.0/commits/{sha}` (INPROGRESS, SUCCESSFUL, FAILED; `url` is
required); the token is an HTTP access token sent as `Authorization: Bearer`.

Bitbucket Cloud signs nothing by default, so its deliveries (`X-Event-Key: repo:push`, `X-Request-UUID`,
`X-Hook-UUID`, `push.changes[].new`) are accepted only at `/webhook/bitbucket/<path token>`, the token
derived from the webhook secret and compared in constant time (`BitbucketCloudProvider`); the docs
tell to add an IP allow-list in front. Its hooks and statuses API is not implemented.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import httpx

from ..sources.github import HookOutcome, HookSpec
from .base import (
    ZERO_SHA,
    Ignored,
    Malformed,
    Parsed,
    Ping,
    ProviderClient,
    ProviderName,
    Push,
    branch_ref,
    call,
    delete_hook,
    failure,
    outcome,
)

#: GitHub's commit states in Bitbucket's build-status words.
STATES = {"pending": "INPROGRESS", "success": "SUCCESSFUL", "failure": "FAILED", "error": "FAILED"}
SERVER_PUSH = "repo:refs_changed"
CLOUD_PUSH = "repo:push"
#: The pull-request events a hook also subscribes to when previews are on.
PR_EVENTS = ("pr:opened", "pr:from_ref_updated", "pr:modified", "pr:reopened", "pr:merged", "pr:declined",
             "pr:deleted")


def cloud_path_token(secret: str) -> str:
    """The path token of Bitbucket Cloud hooks: derived from the webhook secret (keyed HMAC), so the
    secret itself, which also keys the other hosts' signatures, is never put in a URL."""
    return hmac.new(secret.encode(), b"autodeployer bitbucket-cloud path token", hashlib.sha256).hexdigest()[:40]


class BitbucketProvider:
    """Bitbucket Server / Data Center deliveries (HMAC-signed)."""

    name: ProviderName = "bitbucket"

    def recognises(self, headers: Mapping[str, str]) -> bool:
        return "x-event-key" in headers

    def event(self, headers: Mapping[str, str]) -> str:
        return headers.get("x-event-key", "")

    def delivery_key(self, headers: Mapping[str, str]) -> tuple[str, str]:
        return headers.get("x-hook-uuid", ""), headers.get("x-request-id") or headers.get("x-request-uuid", "")

    def signature(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-hub-signature", "")

    def token(self, headers: Mapping[str, str]) -> str | None:
        return None

    def parse(self, event: str, payload: dict[str, Any]) -> Parsed:
        if event == "diagnostics:ping":
            return Ping()
        if event.startswith("pr:"):  # Server's pull requests: previews (providers/bitbucket_reviews.py)
            from .bitbucket_reviews import pull_request

            return pull_request(event, payload)
        if event.startswith("pullrequest:"):
            return Ignored("Bitbucket Cloud pull request events are not handled (previews: Server / Data Center)")
        if event == CLOUD_PUSH:
            return _cloud_pushes(payload)
        if event != SERVER_PUSH:
            return Ignored(f"{event or 'unnamed'} events are not handled")
        return _server_pushes(payload)

    def client(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> ProviderClient:
        return BitbucketServerClient(api_url, token, repo, http)


class BitbucketCloudProvider(BitbucketProvider):
    """Bitbucket Cloud deliveries, reached through `/webhook/bitbucket/<token>`: the token in the
    path, not a signature, authenticates them."""

    def __init__(self, path_token: str) -> None:
        self._path_token = path_token

    def signature(self, headers: Mapping[str, str]) -> str | None:
        return None

    def token(self, headers: Mapping[str, str]) -> str | None:
        return self._path_token


def _repository(payload: dict[str, Any]) -> str | None:
    repository = payload.get("repository")
    if not isinstance(repository, dict):
        return None
    if isinstance(repository.get("full_name"), str):  # Cloud
        return str(repository["full_name"])
    project = repository.get("project")
    key = project.get("key") if isinstance(project, dict) else None
    slug = repository.get("slug")
    return f"{key}/{slug}" if isinstance(key, str) and isinstance(slug, str) else None


def _server_pushes(payload: dict[str, Any]) -> Parsed:
    repo, changes = _repository(payload), payload.get("changes")
    if repo is None or not isinstance(changes, list):
        return Malformed("refs_changed payload without repository.project.key, repository.slug or changes")
    pushes: list[Push] = []
    for change in changes:
        ref = change.get("ref") if isinstance(change, dict) else None
        ref_id = (ref.get("id") if isinstance(ref, dict) else None) or (change or {}).get("refId")
        after = change.get("toHash") if isinstance(change, dict) else None
        if not isinstance(ref_id, str) or not isinstance(after, str):
            return Malformed("refs_changed change without ref.id or toHash")
        full = branch_ref(ref_id)
        if full is not None:
            pushes.append(Push(repo, full, after, deleted=change.get("type") == "DELETE" or after == ZERO_SHA))
    return pushes or Ignored("no branch or tag changed")


def _cloud_pushes(payload: dict[str, Any]) -> Parsed:
    repo, push = _repository(payload), payload.get("push")
    changes = push.get("changes") if isinstance(push, dict) else None
    if repo is None or not isinstance(changes, list):
        return Malformed("repo:push payload without repository.full_name or push.changes")
    pushes: list[Push] = []
    for change in changes:
        new = change.get("new") if isinstance(change, dict) else None
        if new is None:  # a deleted branch or tag: nothing to deploy
            old = (change or {}).get("old") or {}
            kind = "tags" if old.get("type") == "tag" else "heads"
            pushes.append(Push(repo, f"refs/{kind}/{old.get('name', '')}", ZERO_SHA, deleted=True))
            continue
        target = new.get("target") if isinstance(new, dict) else None
        name, sha = (new or {}).get("name"), (target or {}).get("hash")
        if not isinstance(name, str) or not isinstance(sha, str):
            return Malformed("repo:push change without new.name or new.target.hash")
        kind = "tags" if new.get("type") == "tag" else "heads"
        pushes.append(Push(repo, f"refs/{kind}/{name}", sha))
    return pushes or Ignored("no branch or tag changed")


class BitbucketServerClient:
    """Repository webhooks and build statuses of Bitbucket Server / Data Center."""

    def __init__(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> None:
        base = api_url.rstrip("/")
        for suffix in ("/rest/api/1.0", "/rest/api/latest"):
            base = base.removesuffix(suffix)
        self.api_url = base
        self.repo = repo
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        key, _, slug = repo.partition("/")
        self._hooks = f"{base}/rest/api/1.0/projects/{key}/repos/{slug}/webhooks"

    async def _raw_hooks(self) -> list[dict[str, Any]]:
        """Every webhook, page by page (`start` = the previous page's `nextPageStart`)."""
        hooks: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            response = await call(self._http, "GET", f"{self._hooks}?limit=100&start={start}", self._headers)
            if response.status_code != 200:
                raise failure(response, f"listing hooks of {self.repo}")
            page = response.json()
            hooks.extend(page.get("values") or [])
            start = None if page.get("isLastPage", True) else page.get("nextPageStart")
        return hooks

    async def list_hooks(self) -> list[dict[str, Any]]:
        return [_github_shape(hook) for hook in await self._raw_hooks()]

    async def _find(self, url: str) -> dict[str, Any] | None:
        return next((hook for hook in await self._raw_hooks() if hook.get("url") == url), None)

    async def ensure_hook(self, spec: HookSpec) -> HookOutcome:
        """Create the hook, or bring its events and activity back; the secret is sent again only when
        `spec.set_secret` (a PUT without `configuration` keeps the one set)."""
        hook = await self._find(spec.url)
        events = [SERVER_PUSH, *(PR_EVENTS if "pull_request" in spec.events else ())]
        wanted = {"name": "autodeployer", "url": spec.url, "events": events, "active": True}
        if hook is None:
            body = {**wanted, "configuration": {"secret": spec.secret}}
            response = await call(self._http, "POST", self._hooks, self._headers, json=body)
            if response.status_code != 201:
                raise failure(response, f"creating the hook on {self.repo}")
            return outcome(_github_shape(response.json()), created=True)
        updated = [*(["events"] if sorted(hook.get("events") or []) != sorted(events) else []),
                   *(["active"] if not hook.get("active", True) else [])]
        if updated or spec.set_secret:
            body = {**wanted, **({"configuration": {"secret": spec.secret}} if spec.set_secret else {})}
            response = await call(self._http, "PUT", f"{self._hooks}/{hook['id']}", self._headers, json=body)
            if response.status_code != 200:
                raise failure(response, f"updating hook {hook['id']} on {self.repo}")
            hook = response.json()
        return outcome(_github_shape(hook), updated=updated, secret_set=spec.set_secret)

    async def remove_hook(self, url: str) -> dict[str, Any] | None:
        hook = await self._find(url)
        deleted = await delete_hook(self._http, self._hooks, self._headers, hook, self.repo)
        return _github_shape(hook) if deleted and hook is not None else None

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        """Bitbucket requires a `url`: without PUBLIC_URL, the server's own is given."""
        body = {"state": STATES.get(state, "FAILED"), "key": context, "name": context,
                "url": target_url or self.api_url, "description": description[:255]}
        response = await call(self._http, "POST", f"{self.api_url}/rest/build-status/1.0/commits/{sha}",
                              self._headers, json=body)
        if response.status_code not in (200, 201, 204):
            raise failure(response, f"posting build status {body['state']} for {sha[:12]} on {self.repo}")


def _github_shape(hook: dict[str, Any]) -> dict[str, Any]:
    events = ["push" if event == SERVER_PUSH else str(event) for event in hook.get("events") or []]
    return {"id": hook.get("id"), "config": {"url": hook.get("url")}, "events": events,
            "active": bool(hook.get("active", True))}
