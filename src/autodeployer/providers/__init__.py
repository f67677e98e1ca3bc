"""Git hosts behind one interface: GitHub, GitLab, Gitea/Forgejo, Bitbucket (see `base.py`).

`RECOGNITION_ORDER` is the order in which a delivery's headers are tried: Gitea first, because it
also sends GitHub's headers; GitHub last.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ..sources.spec import SourceSpec
from .base import PROVIDER_NAMES, Provider, ProviderClient, ProviderError, ProviderName
from .bitbucket import BitbucketProvider
from .gitea import GiteaProvider
from .github import GitHubProvider
from .gitlab import GitLabProvider

PROVIDERS: dict[ProviderName, Provider] = {
    "github": GitHubProvider(), "gitlab": GitLabProvider(), "gitea": GiteaProvider(), "bitbucket": BitbucketProvider(),
}
RECOGNITION_ORDER: tuple[ProviderName, ...] = ("gitea", "gitlab", "bitbucket", "github")

__all__ = ["PROVIDERS", "PROVIDER_NAMES", "Provider", "ProviderClient", "ProviderError", "ProviderName",
           "provider_client_for", "recognise"]


def recognise(headers: Mapping[str, str]) -> Provider | None:
    """The host that sent a delivery, from its headers; None when no host's headers are there."""
    for name in RECOGNITION_ORDER:
        if PROVIDERS[name].recognises(headers):
            return PROVIDERS[name]
    return None


def provider_client_for(source: SourceSpec, http: httpx.AsyncClient) -> ProviderClient | None:
    """The API client of the app's host, or None when the app lacks a host API, a token or a
    repository path (then no hook is registered and no status posted, as before for GitHub)."""
    if not (source.token and source.repo_full_name):
        return None
    name = source.provider or ("github" if source.github_api_url else None)
    if name is None:
        return None
    api_url = source.github_api_url if name == "github" else source.provider_api_url
    if not api_url:
        return None
    return PROVIDERS[name].client(api_url, source.token.get_secret_value(), source.repo_full_name, http)
