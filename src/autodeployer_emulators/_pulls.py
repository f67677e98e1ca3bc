"""What the Gitea and Bitbucket emulators' pull requests share: the model, their comments, and the
refs written into the linked bare repository (`git merge-tree --write-tree` decides whether the head
merges into the base cleanly, as the hosts' own mergeability checks do)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from autodeployer_emulators.gitlab_merge_requests import git


@dataclass
class Comment:
    id: int
    body: str
    version: int = 0  # Bitbucket's optimistic locking counter (Gitea has none)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass
class Pull:
    id: int
    number: int
    title: str
    source_branch: str
    target_branch: str
    head_sha: str
    base_sha: str
    state: str = "open"  # open, closed, merged (each host shows it in its own words)
    merge_sha: str | None = None  # the test merge, None on a conflict
    version: int = 0
    comments: list[Comment] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


def test_merge(git_dir: Path, pull: Pull) -> str | None:
    """The head merged into the base (a commit in the bare repository), or None when they conflict."""
    code, out = git(git_dir, "merge-tree", "--write-tree", pull.base_sha, pull.head_sha)
    if code != 0:
        return None
    code, sha = git(git_dir, "commit-tree", out.splitlines()[0], "-p", pull.base_sha, "-p", pull.head_sha,
                    "-m", f"Merge {pull.source_branch} into {pull.target_branch}")
    return sha if code == 0 else None


def write_refs(git_dir: Path, pull: Pull, head_ref: str, merge_ref: str | None) -> None:
    """`head_ref` at the head; `merge_ref` (when the host has one) at the test merge, deleted on a conflict.
    `pull.merge_sha` is set either way (Gitea reports mergeability without a ref)."""
    git(git_dir, "update-ref", head_ref, pull.head_sha)
    pull.merge_sha = test_merge(git_dir, pull)
    if merge_ref is None:
        return
    if pull.merge_sha is None:
        git(git_dir, "update-ref", "-d", merge_ref)
    else:
        git(git_dir, "update-ref", merge_ref, pull.merge_sha)
