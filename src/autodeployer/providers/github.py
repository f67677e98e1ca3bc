"""GitHub as a `Provider`: the existing REST client (`sources/github.py`, unchanged) for hooks and
statuses, and GitHub's delivery headers. The webhook receiver keeps its own GitHub dispatch (ping,
push, and later pull requests) byte for byte; `parse` here is the push parser Gitea shares, since
Gitea's push payload is GitHub's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ..sources.github import GitHubClient
from .base import ZERO_SHA, Ignored, Malformed, Parsed, Ping, ProviderClient, ProviderName, Push, branch_ref


class GitHubProvider:
    name: ProviderName = "github"

    def recognises(self, headers: Mapping[str, str]) -> bool:
        return "x-github-event" in headers

    def event(self, headers: Mapping[str, str]) -> str:
        return headers.get("x-github-event", "")

    def delivery_key(self, headers: Mapping[str, str]) -> tuple[str, str]:
        return headers.get("x-github-hook-id", ""), headers.get("x-github-delivery", "")

    def signature(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-hub-signature-256") or ""

    def token(self, headers: Mapping[str, str]) -> str | None:
        return None

    def parse(self, event: str, payload: dict[str, Any]) -> Parsed:
        if event == "ping":
            return Ping()
        if event != "push":
            return Ignored(f"{event or 'unnamed'} events are not handled")
        return parse_github_push(payload)

    def client(self, api_url: str, token: str, repo: str, http: httpx.AsyncClient) -> ProviderClient:
        return GitHubClient(api_url, token, repo, http)


def parse_github_push(payload: dict[str, Any]) -> Parsed:
    """`ref`, `after`, `deleted` and `repository.full_name` of a GitHub-shaped push (GitHub, Gitea)."""
    ref = payload.get("ref")
    repository = payload.get("repository")
    repo = repository.get("full_name") if isinstance(repository, dict) else None
    if not isinstance(ref, str) or not isinstance(repo, str):
        return Malformed("push payload without ref or repository.full_name")
    after = payload.get("after")
    after = after if isinstance(after, str) else ""
    full = branch_ref(ref)
    if full is None:
        return Ignored(f"not a branch or tag: {ref}")
    return [Push(repo, full, after, deleted=bool(payload.get("deleted")) or after == ZERO_SHA)]
