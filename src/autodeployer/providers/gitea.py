"""Gitea and Forgejo as a `Provider`.

Deliveries are signed with HMAC-SHA256 of the body in `X-Gitea-Signature` (Forgejo: also
`X-Forgejo-Signature`), lower-case hex *without* a `sha256=` prefix; Gitea also sends GitHub's
`X-Hub-Signature-256: sha256=<hex>`, which is used when the native header is absent. A hook without a
secret still sends the headers, empty: an empty signature never verifies. The push payload is GitHub's
shape (`ref`, `after`, `repository.full_name`). Form-encoded hooks are signed over the JSON text, not
the form body, so only JSON hooks verify (the hooks this service registers are JSON). The API base is
GITEA_API_URL including `/api/v1`; the token goes in `Authorization: token <t>`; lists are paginated
with `page`/`limit` and a `Link` header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ..sources.github import HookOutcome, HookSpec
from .base import (
    Ignored,
    Parsed,
    ProviderClient,
    ProviderName,
    call,
    delete_hook,
    failure,
    hex_signature,
    outcome,
)
from .github import parse_github_push

NATIVE = ("x-gitea", "x-forgejo", "x-gogs")
PULL_EVENTS = ("pull_request", "pull_request_sync")


class GiteaProvider:
    name: ProviderName = "gitea"

    def recognises(self, headers: Mapping[str, str]) -> bool:
        return any(f"{prefix}-event" in headers for prefix in NATIVE)

    def _header(self, headers: Mapping[str, str], suffix: str) -> str:
        return next((headers[f"{p}-{suffix}"] for p in NATIVE if headers.get(f"{p}-{suffix}")), "")

    def event(self, headers: Mapping[str, str]) -> str:
        return self._header(headers, "event")

    def delivery_key(self, headers: Mapping[str, str]) -> tuple[str, str]:
        return "", self._header(headers, "delivery")

    def signature(self, headers: Mapping[str, str]) -> str | None:
        native = self._header(headers, "signature")
        return hex_signature(native) if native else headers.get("x-hub-signature-256", "")

    def token(self, headers: Mapping[str, str]) -> str | None:
        return None

    def parse(self, event: str, payload: dict[str, Any]) -> Parsed:
        if event in PULL_EVENTS:  # previews (providers/gitea_reviews.py)
            from .gitea_reviews import pull_request

            return pull_request(payload)
        if event != "push":
            return Ignored(f"{event or 'unnamed'} events are not handled")
        return parse_github_push(payload)

    def client(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> ProviderClient:
        return GiteaClient(api_url, token, repo, http)


class GiteaClient:
    """Repository hooks and commit statuses through Gitea's (and Forgejo's) API v1."""

    def __init__(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self._http = http
        self._headers = {"Authorization": f"token {token}", "Accept": "application/json"}
        self._base = f"{self.api_url}/repos/{repo}"

    async def list_hooks(self) -> list[dict[str, Any]]:
        """Every hook, following `Link: rel="next"` to the end."""
        hooks: list[dict[str, Any]] = []
        url: str | None = f"{self._base}/hooks?limit=50&page=1"
        while url:
            response = await call(self._http, "GET", url, self._headers)
            if response.status_code != 200:
                raise failure(response, f"listing hooks of {self.repo}")
            hooks.extend(response.json())
            url = response.links.get("next", {}).get("url")
        return hooks

    async def _find(self, url: str) -> dict[str, Any] | None:
        return next((h for h in await self.list_hooks() if (h.get("config") or {}).get("url") == url), None)

    async def ensure_hook(self, spec: HookSpec) -> HookOutcome:
        """Create a JSON push hook, or bring events, activity and content type back; the secret is
        sent again only when `spec.set_secret` (the API never shows it)."""
        hook = await self._find(spec.url)
        config = {"url": spec.url, "content_type": "json"}
        if hook is None:
            body = {"type": "gitea", "config": {**config, "secret": spec.secret}, "events": list(spec.events),
                    "active": True}
            response = await call(self._http, "POST", f"{self._base}/hooks", self._headers, json=body)
            if response.status_code != 201:
                raise failure(response, f"creating the hook on {self.repo}")
            return outcome(response.json(), created=True)
        updated = []
        if sorted(hook.get("events") or []) != sorted(spec.events):
            updated.append("events")
        if not hook.get("active", True):
            updated.append("active")
        if (hook.get("config") or {}).get("content_type") != "json":
            updated.append("content type")
        if updated or spec.set_secret:
            patch = {"config": {**config, **({"secret": spec.secret} if spec.set_secret else {})},
                     "events": list(spec.events), "active": True}
            response = await call(self._http, "PATCH", f"{self._base}/hooks/{hook['id']}", self._headers, json=patch)
            if response.status_code != 200:
                raise failure(response, f"updating hook {hook['id']} on {self.repo}")
            hook = response.json()
        return outcome(hook, updated=updated, secret_set=spec.set_secret)

    async def remove_hook(self, url: str) -> dict[str, Any] | None:
        hook = await self._find(url)
        return hook if await delete_hook(self._http, f"{self._base}/hooks", self._headers, hook, self.repo) else None

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        """Gitea's states are GitHub's (pending, success, error, failure; also warning)."""
        body: dict[str, Any] = {"state": state, "context": context, "description": description[:140]}
        if target_url:
            body["target_url"] = target_url
        response = await call(self._http, "POST", f"{self._base}/statuses/{sha}", self._headers, json=body)
        if response.status_code != 201:
            raise failure(response, f"posting status {state} for {sha[:12]} on {self.repo}")
