"""What every Git host provides, behind one interface (the way targets are behind `targets/base.py`).

Two halves, because they live at different times: the receiving half (`Provider`) recognises a
webhook delivery by its headers, says how it is authenticated (an HMAC over the body, or a token
compared as is) and turns a verified payload into pushes; the calling half (`ProviderClient`, made by
`Provider.client`) registers, lists and removes the service's hook and posts commit statuses through
the host's REST API. Commit states are always given in GitHub's words (`pending`, `success`,
`failure`, `error`, see `reporters/commit_status.py`); each client maps them to its host's.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from ..reviews import ReviewDelivery
from ..sources.github import GitHubError, HookOutcome, HookSpec

ProviderName = Literal["github", "gitlab", "gitea", "bitbucket"]
PROVIDER_NAMES: tuple[ProviderName, ...] = ("github", "gitlab", "gitea", "bitbucket")
ZERO_SHA = "0" * 40


class ProviderError(GitHubError):
    """A failed call to a Git host's API. A `GitHubError`, so every place that already survives a
    GitHub failure (hook registration with backoff, commit statuses that never fail a sync, the CLI)
    survives any host's the same way."""


@dataclass(frozen=True)
class Push:
    """One updated ref of a push delivery: the repository as the host names it (owner/name, or the
    full namespace path on GitLab), the full ref (`refs/heads/x`, `refs/tags/v1`) and the new sha."""

    repository: str
    ref: str
    after: str
    deleted: bool = False


@dataclass(frozen=True)
class Ping:
    """A host's "test the connection" delivery: answered, never a sync."""


@dataclass(frozen=True)
class Ignored:
    """A verified delivery that asks for nothing (another event, a merge request): 2xx and why."""

    reason: str


@dataclass(frozen=True)
class Malformed:
    """A verified delivery whose payload lacks what its event must carry: 400 and what is missing."""

    reason: str


Parsed = list[Push] | Ping | Ignored | Malformed | ReviewDelivery  # the last: merge requests, for previews


class Provider(Protocol):
    """The receiving half of a Git host, plus the factory of its API client."""

    name: ProviderName

    def recognises(self, headers: Mapping[str, str]) -> bool:
        """True when the headers are this host's (checked in `providers.PROVIDERS` order)."""

    def event(self, headers: Mapping[str, str]) -> str:
        """The event name as the host sends it ("" when missing)."""

    def delivery_key(self, headers: Mapping[str, str]) -> tuple[str, str]:
        """(hook id, delivery id) for replay de-duplication; an empty delivery id disables it."""

    def signature(self, headers: Mapping[str, str]) -> str | None:
        """The body's HMAC-SHA256 as `sha256=<hex>` (whatever the host's spelling), "" when the
        header is missing or empty; None when this host authenticates with a token instead."""

    def token(self, headers: Mapping[str, str]) -> str | None:
        """The shared token a token-authenticated host sends ("" when missing); None for HMAC hosts."""

    def parse(self, event: str, payload: dict[str, Any]) -> Parsed:
        """The pushes of a verified delivery, or why there are none."""

    def client(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> ProviderClient:
        """The REST client for one repository."""


class ProviderClient(Protocol):
    """Hooks and commit statuses of one repository on one host. Hooks are listed in GitHub's shape
    (`id`, `config.url`, `events`, `active`) so the CLI prints every host's alike."""

    api_url: str
    repo: str

    async def list_hooks(self) -> list[dict[str, Any]]: ...

    async def ensure_hook(self, spec: HookSpec) -> HookOutcome: ...

    async def remove_hook(self, url: str) -> dict[str, Any] | None: ...

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None: ...


def token_matches(given: str | None, secrets_: Sequence[str]) -> bool:
    """Constant-time comparison of a token sent as is (GitLab's X-Gitlab-Token, Bitbucket Cloud's
    path token) with every accepted secret; no early exit, so timing tells nothing. Empty never matches."""
    if not given:
        return False
    matched = False
    for secret in secrets_:
        matched |= hmac.compare_digest(given.encode(), secret.encode())
    return matched


def hex_signature(value: str | None) -> str:
    """A bare lower-case hex HMAC (Gitea's, Forgejo's) as `sha256=<hex>`; "" when missing or empty."""
    value = (value or "").strip()
    return f"sha256={value}" if value else ""


def branch_ref(ref: str) -> str | None:
    """The full ref of a branch or tag push (`refs/heads/x`, `refs/tags/v1`); None for anything else."""
    return ref if ref.startswith(("refs/heads/", "refs/tags/")) else None


def failure(response: httpx.Response, what: str) -> ProviderError:
    """An API answer that is not the one expected, named by what was attempted (never the token)."""
    try:
        body = response.json()
        message = body.get("message") or body.get("error") or "" if isinstance(body, dict) else ""
        if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            message = first.get("message", message) if isinstance(first, dict) else str(first)
    except ValueError:
        message = response.text[:200]
    return ProviderError(f"{what}: {response.status_code} {message}".strip(), response.status_code)


async def call(http: httpx.AsyncClient, method: str, url: str, headers: Mapping[str, str],
               **kwargs: Any) -> httpx.Response:
    """One API request; a transport failure becomes a ProviderError naming the request (no query,
    no token: the token travels in a header only)."""
    try:
        return await http.request(method, url, headers=dict(headers), timeout=20, **kwargs)
    except httpx.HTTPError as exc:
        raise ProviderError(f"{method} {url.split('?')[0]}: {type(exc).__name__}") from None


def outcome(hook: dict[str, Any], *, created: bool = False, updated: Sequence[str] = (),
            secret_set: bool = False) -> HookOutcome:
    return HookOutcome(hook, created=created, updated=tuple(updated), secret_set=secret_set)


async def delete_hook(http: httpx.AsyncClient, hooks_url: str, headers: Mapping[str, str],
                      hook: dict[str, Any] | None, repo: str) -> bool:
    """DELETE one hook found by its URL; False when there was none. Gone already (404) counts as deleted."""
    if hook is None:
        return False
    response = await call(http, "DELETE", f"{hooks_url}/{hook['id']}", headers)
    if response.status_code not in (204, 404):
        raise failure(response, f"deleting hook {hook['id']} on {repo}")
    return True
