"""Where an app's configuration comes from: the repository, branch and path, and how to reach them.

It lives with the sources, not with the rest of the configuration model, so that reading Git does not
import every target (the configuration's target union is built from the target registry).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import SecretStr, field_validator

from ..config.variables import Frozen

# What git accepts in a ref name (check-ref-format), minus what would need quoting anywhere
REF_NAME = re.compile(r"(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[^\s~^:?*\[\\\x00-\x1f\x7f]+(?<![./])(?<!\.lock)")


class SourceSpec(Frozen):
    url: str  # never carries credentials
    branch: str = "master"
    sync_root: str = ""  # normalised: "" for the repository root, else "a/b"
    tag: str | None = None  # when set, the tag is followed and `branch` is ignored
    token: SecretStr | None = None
    username: str = "x-access-token"  # the HTTPS user the token goes with (GIT_USERNAME); GitHub takes any
    ssh_key: SecretStr | None = None
    known_hosts: str | None = None
    repo_full_name: str | None = None  # "owner/name", derived from the URL
    github_api_url: str | None = None  # set when the repository lives on GitHub
    git_timeout: float = 120.0
    head_check: Literal["auto", "git", "api"] = "auto"
    # the Git host (providers/): None when neither the URL nor GIT_PROVIDER says; its API base
    # (GITLAB_API_URL, GITEA_API_URL, BITBUCKET_API_URL); GitHub keeps `github_api_url`
    provider: Literal["github", "gitlab", "gitea", "bitbucket"] | None = None
    provider_api_url: str | None = None
    trusted_keys_file: str | None = None  # TRUSTED_KEYS_FILE: GPG public keys and/or SSH allowed signers

    @field_validator("tag")
    @classmethod
    def _valid_tag(cls, value: str | None) -> str | None:
        if value is not None and not REF_NAME.fullmatch(value):
            raise ValueError(f"not a valid tag name: {value!r}")
        return value

    @property
    def ref(self) -> str:
        """The full ref followed: `refs/tags/<tag>` or `refs/heads/<branch>` (fully qualified, so a
        tag never shadows a branch of the same name)."""
        return f"refs/tags/{self.tag}" if self.tag else f"refs/heads/{self.branch}"

    @property
    def follows(self) -> str:
        """What is followed, for messages: "branch 'master'" or "tag 'v1.2'"."""
        return f"tag {self.tag!r}" if self.tag else f"branch {self.branch!r}"
