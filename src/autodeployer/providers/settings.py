"""Which Git host an app's repository is on, its API base and its token, from the environment or YAML.

The host is detected from the repository URL where that is unambiguous (github.com, gitlab.com,
bitbucket.org); anywhere else (self-hosted GitLab, Gitea, Bitbucket Server, a test's loopback server)
GIT_PROVIDER says it, and is required as soon as a host's API URL or token is set. The host's token
also authenticates the clone, exactly as GITHUB_TOKEN does: it becomes the source's token, which
`sources/git.py` sends as an HTTP header through the environment (never argv, never a URL).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from ..config.variables import Variable
from ..errors import ConfigError
from .base import PROVIDER_NAMES

HOSTED: dict[str, str] = {"github.com": "github", "gitlab.com": "gitlab", "bitbucket.org": "bitbucket"}
DEFAULT_API: dict[str, str] = {"gitlab.com": "https://gitlab.com/api/v4"}
#: The HTTPS user a host's token goes with when GIT_USERNAME does not say (GitLab: any user with a
#: personal or project token, `oauth2` by convention; Bitbucket: `x-token-auth`).
CLONE_USER: dict[str, str] = {"gitlab": "oauth2", "bitbucket": "x-token-auth"}
API_HOSTS = ("gitlab", "gitea", "bitbucket")

PROVIDER_VARIABLES: tuple[Variable, ...] = (
    Variable("GIT_PROVIDER", None, "Git host of the repository: github, gitlab, gitea (also Forgejo) or bitbucket; "
             "detected for github.com, gitlab.com and bitbucket.org, else required when a host's API URL or "
             "token is set."),
    Variable("GITLAB_API_URL", None, "GitLab REST base including /api/v4 (default for gitlab.com: "
             "https://gitlab.com/api/v4)."),
    Variable("GITLAB_TOKEN", None, "GitLab token for cloning over HTTPS, project hooks and commit statuses.", True),
    Variable("GITEA_API_URL", None, "Gitea/Forgejo REST base including /api/v1."),
    Variable("GITEA_TOKEN", None, "Gitea/Forgejo token for cloning over HTTPS, hooks and commit statuses.", True),
    Variable("BITBUCKET_API_URL", None, "Bitbucket Server/Data Center base URL (its REST API is under /rest)."),
    Variable("BITBUCKET_TOKEN", None, "Bitbucket HTTP access token for cloning, webhooks and build statuses.", True),
)


def provider_fields(
    url: str,
    host: str | None,
    explicit: str | None,
    api_urls: Mapping[str, str | None],
    tokens: Mapping[str, SecretStr | None],
    current: Mapping[str, Any],
    names: Mapping[str, str],
) -> dict[str, Any]:
    """SourceSpec fields for the app's host. `names` spells each setting as the user wrote it
    (GIT_PROVIDER or apps[x].source.provider), so every error names the setting to fix."""
    if explicit is not None and explicit not in PROVIDER_NAMES:
        raise ConfigError(f"{names['provider']}: expected one of {', '.join(PROVIDER_NAMES)}, got {explicit!r}")
    detected = HOSTED.get(host or "")
    if explicit and detected and explicit != detected:
        raise ConfigError(f"{names['provider']}={explicit}, but the repository {url} is on {host} ({detected})")
    provider = explicit or detected
    for other in API_HOSTS:
        given = [names[f"{other}_{kind}"] for kind, values in (("api_url", api_urls), ("token", tokens))
                 if values.get(other)]
        if given and provider != other:
            why = (f"{names['provider']} is {provider}" if provider else
                   f"the host of {url} does not say which Git host it is")
            raise ConfigError(f"{given[0]} is set but {why}: set {names['provider']}={other}")
    if provider is None or provider == "github":
        return {"provider": provider}
    token = tokens.get(provider) or current.get("token")
    fields: dict[str, Any] = {
        "provider": provider,
        "provider_api_url": (api_urls.get(provider) or DEFAULT_API.get(host or "") or "").rstrip("/") or None,
        "token": token,
        "github_api_url": None,
    }
    if current.get("username") in (None, "x-access-token") and provider in CLONE_USER:
        fields["username"] = CLONE_USER[provider]
    if provider == "gitlab":
        fields["repo_full_name"] = gitlab_path(url) or current.get("repo_full_name")
    return fields


def gitlab_path(url: str) -> str | None:
    """The full namespace path of a GitLab project (`group/sub/project`): GitLab names projects by
    it in payloads and API ids, where owner/name would lose the subgroups."""
    scp_like = re.match(r"^[\w.-]+@[\w.-]+:", url) and "://" not in url
    path = url.split(":", 1)[1] if scp_like else urlsplit(url).path
    segments = [s for s in path.strip("/").split("/") if s]
    if len(segments) < 2:
        return None
    segments[-1] = segments[-1].removesuffix(".git")
    return "/".join(segments)


ENV_NAMES = {"provider": "GIT_PROVIDER", **{f"{h}_api_url": f"{h.upper()}_API_URL" for h in API_HOSTS},
             **{f"{h}_token": f"{h.upper()}_TOKEN" for h in API_HOSTS}}
YAML_KEYS = ("provider", *(f"{h}_api_url" for h in API_HOSTS), *(f"{h}_token" for h in API_HOSTS))
YAML_SECRET_KEYS = tuple(f"{h}_token" for h in API_HOSTS)


def yaml_names(where: str) -> dict[str, str]:
    return {key: f"{where}.{key}" for key in YAML_KEYS}
