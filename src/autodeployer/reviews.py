"""Code review on any Git host, as pull-request previews see it: one normalised event, one client interface.

GitHub's pull requests and GitLab's merge requests differ in names (number/iid, comments/notes,
`refs/pull/N/merge` / `refs/merge-requests/N/merge`, failure/failed) but not in what a preview needs:
which request, into which branch, at which head, from a fork or not; then one comment to find, create
or edit, and one commit status. `previews.py` speaks only this module's words, so a host is added by
writing a `ReviewsClient` and a delivery parser that yields a `PullRequestEvent`. Gitea/Forgejo
(`providers/gitea_reviews.py`) and Bitbucket Server (`providers/bitbucket_reviews.py`) are added so; a
client whose host makes no test merge at all (Gitea) says `test_merge = False`, and its head is planned.

Imports nothing of the package: the providers (which parse deliveries) and the previews (which plan
them) both use it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class PullRequestEvent:
    """A pull-request (or merge-request) delivery, normalised: only what deciding and planning need.
    `action` is in GitHub's words (opened, synchronize, reopened, ready_for_review, closed)."""

    repo: str  # the base (target) repository, as the host names it
    number: int  # GitHub's number, GitLab's iid
    action: str
    base_ref: str
    head_sha: str
    head_repo: str
    is_fork: bool
    provider: str = "github"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PullRequestEvent:
        """GitHub's `pull_request` delivery. Raises ValueError naming the missing field."""
        pull = payload.get("pull_request")
        repository = payload.get("repository")
        if not isinstance(pull, dict) or not isinstance(repository, dict):
            raise ValueError("pull_request payload without pull_request or repository")
        head, base = pull.get("head"), pull.get("base")
        if not isinstance(head, dict) or not isinstance(base, dict):
            raise ValueError("pull_request payload without head or base")
        raw_repo = head.get("repo")
        head_repo: dict[str, Any] = raw_repo if isinstance(raw_repo, dict) else {}
        values = {"repository.full_name": repository.get("full_name"), "number": payload.get("number"),
                  "action": payload.get("action"), "base.ref": base.get("ref"), "head.sha": head.get("sha")}
        missing = [name for name, value in values.items() if value in (None, "")]
        if missing or not isinstance(values["number"], int):
            raise ValueError(f"pull_request payload without {', '.join(missing) or 'a numeric number'}")
        return cls(str(values["repository.full_name"]), int(values["number"]), str(values["action"]),
                   str(values["base.ref"]), str(values["head.sha"]),
                   str(head_repo.get("full_name") or values["repository.full_name"]), bool(head_repo.get("fork")))

    @classmethod
    def from_pull(cls, repo: str, pull: OpenPull, action: str, provider: str = "github") -> PullRequestEvent:
        return cls(repo, pull.number, action, pull.base_ref, pull.head_sha, pull.head_repo, pull.is_fork, provider)


@dataclass(frozen=True)
class ReviewDelivery:
    """A verified merge-request delivery of a host other than GitHub, parsed by its provider for the
    preview service; `event` is None when the payload lacks a field (`problem` names it)."""

    event: PullRequestEvent | None
    problem: str | None = None


@dataclass(frozen=True)
class OpenPull:
    """The fields of a pull request a preview needs (from the API, never from a webhook alone)."""

    number: int
    state: str  # "open" while it can still be merged, whatever the host calls it
    base_ref: str
    head_sha: str
    head_repo: str
    is_fork: bool
    mergeable: bool | None  # None while the host is still computing it
    merge_sha: str | None = None  # the test merge the host has computed for the head, when it says

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OpenPull:
        """GitHub's pull request JSON."""
        head, base = data.get("head") or {}, data.get("base") or {}
        head_repo = head.get("repo") or {}
        return cls(int(data["number"]), str(data.get("state", "")), str(base.get("ref", "")),
                   str(head.get("sha", "")), str(head_repo.get("full_name", "")), bool(head_repo.get("fork")),
                   data.get("mergeable"), data.get("merge_commit_sha"))


class ReviewsClient(Protocol):
    """Pull requests, their comments and commit statuses of one repository on one host. Errors are
    `AutodeployerError`s naming the request (never the token); states are GitHub's words."""

    repo: str
    provider: str

    async def get(self, number: int) -> OpenPull: ...

    async def list_open(self, base: str, etag: str | None) -> tuple[list[OpenPull] | None, str | None]:
        """Open requests into `base`; None when unchanged since `etag` (hosts without ETags never say so)."""

    async def find_comment(self, number: int, marker: str) -> int | None: ...

    async def create_comment(self, number: int, body: str) -> int: ...

    async def update_comment(self, number: int, comment_id: int, body: str) -> bool:
        """False when the comment is gone (deleted by someone): the caller creates a new one."""

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None: ...

    def merge_ref(self, number: int) -> str:
        """The ref of the host's test merge of the request's head into its base."""

    def head_ref(self, number: int) -> str | None:
        """The ref of the request's head, planned alone when the host has no test merge (conflicts);
        None: the host's merge ref is the only one planned (GitHub, as always)."""
