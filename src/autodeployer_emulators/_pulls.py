"""What the Gitea and Bitbucket emulators' pull requests share: the model, their comments, the refs
written into the linked bare repository (`git merge-tree --write-tree` decides whether the head merges
into the base cleanly, as the hosts' own mergeability checks do), and the book of a host's pull requests
with the test-side steps both take the same way (open, find, a source branch moved)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from autodeployer_emulators._forge import ForgeEmulator, ForgeRepo
from autodeployer_emulators.gitlab_merge_requests import branch_tip, git


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


class PullBook:
    """The pull requests of every repository of one host emulator. A host names its refs (:meth:`refs`)
    and its answer to a second open pull request for the same branches (`duplicate`), and delivers."""

    duplicate = "a pull request is already open for {source} -> {target}"

    def __init__(self, host: ForgeEmulator) -> None:
        self.host = host
        self.by_repo: dict[str, list[Pull]] = {}

    def refs(self, pull: Pull) -> tuple[str, str | None]:
        """The pull request's head ref, and its merge ref when the host writes one."""
        raise NotImplementedError

    def find(self, repo: ForgeRepo, number: int) -> Pull | None:
        with self.host.lock:
            return next((p for p in self.by_repo.get(repo.path.lower(), []) if p.number == number), None)

    def linked(self, path: str) -> ForgeRepo:
        repo = self.host.repo(path)
        if repo is None or repo.git_dir is None:
            raise KeyError(f"no repository {path} linked to a Git repository")
        return repo

    def write_refs(self, repo: ForgeRepo, pull: Pull) -> None:
        assert repo.git_dir is not None
        write_refs(repo.git_dir, pull, *self.refs(pull))

    def add(self, path: str, source: str, target: str, title: str) -> Pull:
        """A new open pull request of branch `source` into `target`, its refs written (nothing delivered);
        ValueError for a missing branch or a second open one for the same branches, as the hosts refuse it."""
        repo = self.linked(path)
        assert repo.git_dir is not None
        head, base = branch_tip(repo.git_dir, source), branch_tip(repo.git_dir, target)
        if head is None or base is None:
            raise ValueError(f"branch {source if head is None else target} does not exist")
        with self.host.lock:
            known = self.by_repo.setdefault(repo.path.lower(), [])
            if any(p.state == "open" and (p.source_branch, p.target_branch) == (source, target) for p in known):
                raise ValueError(self.duplicate.format(source=source, target=target))
            pull = Pull(self.host.next_id(), len(known) + 1, title, source, target, head, base)
            self.write_refs(repo, pull)
            known.append(pull)
        return pull

    def comments(self, path: str, number: int) -> list[Comment]:
        pull = self.find(self.linked(path), number)
        with self.host.lock:
            return [Comment(c.id, c.body, c.version, c.created_at, c.updated_at)
                    for c in (pull.comments if pull else [])]

    def moved(self, path: str, branch: str) -> list[tuple[Pull, str]]:
        """Open pull requests whose source `branch` has new commits: head and base taken from the branches,
        refs rewritten, `updated_at` now. Each with its previous head."""
        repo = self.linked(path)
        assert repo.git_dir is not None
        with self.host.lock:
            touched = [p for p in self.by_repo.get(repo.path.lower(), [])
                       if p.state == "open" and p.source_branch == branch]
        moved: list[tuple[Pull, str]] = []
        for pull in touched:
            head, base = branch_tip(repo.git_dir, pull.source_branch), branch_tip(repo.git_dir, pull.target_branch)
            if head is None or base is None or head == pull.head_sha:
                continue
            with self.host.lock:
                previous, pull.head_sha, pull.base_sha, pull.updated_at = pull.head_sha, head, base, time.time()
                self.write_refs(repo, pull)
            moved.append((pull, previous))
        return moved
