"""GitHub REST client: repository hooks, commit statuses, and the cheap branch-head check.

Only what autodeployer needs. The token travels in the Authorization header of requests to the API
base URL; it never appears in a URL, a log line or an exception message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import AutodeployerError

API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class GitHubError(AutodeployerError):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class HookSpec:
    """The hook we want. `set_secret` False: a hook that exists keeps its secret (see ensure_hook)."""

    url: str
    secret: str
    events: tuple[str, ...] = ("push",)
    content_type: str = "json"
    insecure_ssl: str = "0"
    set_secret: bool = True

    def config(self) -> dict[str, str]:
        return {
            "url": self.url,
            "content_type": self.content_type,
            "secret": self.secret,
            "insecure_ssl": self.insecure_ssl,
        }


@dataclass(frozen=True)
class HookOutcome:
    """What ensure_hook did, truthfully: created, the parts it updated, or nothing."""

    hook: dict[str, Any]
    created: bool = False
    updated: tuple[str, ...] = ()
    secret_set: bool = False  # sent again: GitHub never shows it, so "changed" cannot be known

    def describe(self) -> str:
        if self.created:
            return "created"
        done = f"updated: {', '.join(self.updated)}" if self.updated else "unchanged"
        return done + ("; secret set" if self.secret_set else "")


def rate_limit_wait(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds to wait before the next call, if the answer says we hit a rate limit."""
    if response.status_code not in (403, 429):
        return None
    headers = response.headers
    if "retry-after" in headers:
        try:
            return max(0.0, float(headers["retry-after"]))
        except ValueError:
            return 60.0
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        try:
            return max(0.0, float(headers["x-ratelimit-reset"]) - (now or time.time()))
        except ValueError:
            return 60.0
    return 60.0 if response.status_code == 429 else None


class GitHubClient:
    def __init__(self, api_url: str, token: str, repo_full_name: str, http: httpx.AsyncClient) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo_full_name
        self._http = http
        self._headers = {**API_HEADERS, "Authorization": f"Bearer {token}"}
        self._blocked_until = 0.0  # respect Retry-After / rate-limit reset across calls

    # ------------------------------------------------------------------ plumbing
    async def request(self, method: str, path_or_url: str, **kwargs: Any) -> httpx.Response:
        """One API call with the token and rate-limit handling (pull_requests.py builds on it too)."""
        url = path_or_url if path_or_url.startswith("http") else f"{self.api_url}{path_or_url}"
        shown = f"{method} {url.split('?')[0]}"
        wait = self._blocked_until - time.time()
        if wait > 0:
            raise GitHubError(f"{shown}: rate limited for another {wait:.0f} s", retry_after=wait)
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            response = await self._http.request(method, url, headers=headers, timeout=20, **kwargs)
        except httpx.HTTPError as exc:
            raise GitHubError(f"{shown}: {type(exc).__name__}") from None
        retry = rate_limit_wait(response)
        if retry is not None:
            self._blocked_until = time.time() + retry
            raise GitHubError(f"{shown}: rate limited ({response.status_code}); retry in {retry:.0f} s",
                              response.status_code, retry)
        return response

    @staticmethod
    def failure(response: httpx.Response, what: str) -> GitHubError:
        """An unexpected answer as an error named by what was attempted, with the permission GitHub says it needs."""
        try:
            message = response.json().get("message", "")
        except ValueError:
            message = response.text[:200]
        needed = response.headers.get("x-accepted-github-permissions")
        hint = f" (needs permission: {needed})" if needed else ""
        return GitHubError(f"{what}: {response.status_code} {message}{hint}".strip(), response.status_code)

    # ------------------------------------------------------------------ hooks
    async def list_hooks(self) -> list[dict[str, Any]]:
        """Every hook of the repository, following rel="next" links to the end."""
        hooks: list[dict[str, Any]] = []
        url: str | None = f"/repos/{self.repo}/hooks?per_page=100"
        while url:
            response = await self.request("GET", url)
            if response.status_code != 200:
                raise self.failure(response, f"listing hooks of {self.repo}")
            hooks.extend(response.json())
            url = response.links.get("next", {}).get("url")
        return hooks

    async def find_hook(self, url: str) -> dict[str, Any] | None:
        for hook in await self.list_hooks():
            if (hook.get("config") or {}).get("url") == url:
                return hook
        return None

    async def ensure_hook(self, spec: HookSpec) -> HookOutcome:
        """Create our hook, or bring it up to date; never a duplicate.

        An existing hook's secret is replaced only when `spec.set_secret`: GitHub never shows it, so
        a caller that does not know the secret the receiving service verifies with (the CLI without
        WEBHOOK_SECRET, maybe with another STATE_DIR) would otherwise break every delivery. Other
        config fields go through the `/config` endpoint, which merges, so the secret stays as it is."""
        hook = await self.find_hook(spec.url)
        if hook is None:
            body = {"name": "web", "active": True, "events": list(spec.events), "config": spec.config()}
            response = await self.request("POST", f"/repos/{self.repo}/hooks", json=body)
            if response.status_code == 201:
                return HookOutcome(response.json(), created=True)
            if response.status_code == 422 and _is_duplicate(response):
                hook = await self.find_hook(spec.url)  # someone created it meanwhile: adopt it
            if hook is None:
                raise self.failure(response, f"creating the hook on {self.repo}")
        updated: list[str] = []
        patch: dict[str, Any] = {}
        if sorted(hook.get("events", [])) != sorted(spec.events):
            patch["events"], updated = list(spec.events), [*updated, "events"]
        if not hook.get("active", True):
            patch["active"], updated = True, [*updated, "active"]
        if patch:
            hook = await self._patch(f"/repos/{self.repo}/hooks/{hook['id']}", patch, hook)
        config = hook.get("config") or {}
        fields = {key: value for key, value in spec.config().items()
                  if key != "secret" and config.get(key) != value}
        updated += [key.replace("_", " ") for key in fields]
        if spec.set_secret:  # it cannot be read back, so setting it is the only way to be sure it matches
            fields["secret"] = spec.secret
        if fields:
            await self._patch(f"/repos/{self.repo}/hooks/{hook['id']}/config", fields, hook)
        return HookOutcome(hook, updated=tuple(updated), secret_set=spec.set_secret)

    async def _patch(self, path: str, body: dict[str, Any], hook: dict[str, Any]) -> dict[str, Any]:
        response = await self.request("PATCH", path, json=body)
        if response.status_code != 200:
            raise self.failure(response, f"updating hook {hook['id']} on {self.repo}")
        answer: dict[str, Any] = response.json()
        return answer if "id" in answer else hook  # `/config` answers the config only

    async def remove_hook(self, url: str) -> dict[str, Any] | None:
        hook = await self.find_hook(url)
        if hook is None:
            return None
        response = await self.request("DELETE", f"/repos/{self.repo}/hooks/{hook['id']}")
        if response.status_code not in (204, 404):
            raise self.failure(response, f"deleting hook {hook['id']} on {self.repo}")
        return hook

    # ------------------------------------------------------------------ statuses and heads
    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        body: dict[str, Any] = {"state": state, "context": context, "description": description[:140]}
        if target_url:
            body["target_url"] = target_url
        response = await self.request("POST", f"/repos/{self.repo}/statuses/{sha}", json=body)
        if response.status_code != 201:
            raise self.failure(response, f"posting status {state} for {sha[:12]}")

    async def head(self, branch: str, etag: str | None) -> tuple[str | None, str | None]:
        """(sha, etag) of the branch; sha is None when unchanged (a 304, free of rate limit)."""
        headers = {"Accept": "application/vnd.github.sha"}
        if etag:
            headers["If-None-Match"] = etag
        response = await self.request("GET", f"/repos/{self.repo}/commits/{branch}", headers=headers)
        if response.status_code == 304:
            return None, etag
        if response.status_code != 200:
            raise self.failure(response, f"reading the head of {self.repo}@{branch}")
        sha = response.text.strip()
        if len(sha) != 40:
            raise GitHubError(f"reading the head of {self.repo}@{branch}: unexpected answer")
        return sha, response.headers.get("etag") or f'"{sha}"'


def _is_duplicate(response: httpx.Response) -> bool:
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return False
    return any(isinstance(e, dict) and e.get("resource") == "Hook" for e in errors)
