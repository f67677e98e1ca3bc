"""Where an app's configuration comes from: the repository, branch and path, and how to reach them.

It lives with the sources, not with the rest of the configuration model, so that reading Git does not
import every target (the configuration's target union is built from the target registry).
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from ..config.variables import Frozen


class SourceSpec(Frozen):
    url: str  # never carries credentials
    branch: str = "master"
    sync_root: str = ""  # normalised: "" for the repository root, else "a/b"
    token: SecretStr | None = None
    ssh_key: SecretStr | None = None
    known_hosts: str | None = None
    repo_full_name: str | None = None  # "owner/name", derived from the URL
    github_api_url: str | None = None  # set when the repository lives on GitHub
    git_timeout: float = 120.0
    head_check: Literal["auto", "git", "api"] = "auto"
