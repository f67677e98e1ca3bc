"""Pull requests of the emulated GitHub: their model, the ``refs/pull/N/*`` refs in the linked
bare repository, merging, and ``pull_request`` deliveries (no HTTP here; ``routes`` serves it).

The refs are written with real git into the repository's ``git_dir`` so the loopback Git server
(``git http-backend``) serves them: ``refs/pull/N/head`` is the head branch's tip and
``refs/pull/N/merge`` the test merge of head into the current base (``git merge-tree
--write-tree`` + ``git commit-tree``), absent while the two conflict, as on GitHub.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autodeployer_emulators.github.delivery import GitHubDelivery
from autodeployer_emulators.github.state import (
    DeliveryRecord,
    RepoState,
    _error,
    _HttpError,
    _invalid,
    _iso,
    _subscribed,
)

PULL_ACTIONS = ("opened", "synchronize", "reopened", "ready_for_review", "closed")
#: Identity of the commits the emulator makes (test merges, merges); fixed so SHAs are stable.
_BOT_ENV = {
    "GIT_AUTHOR_NAME": "GitHub", "GIT_AUTHOR_EMAIL": "noreply@github.com",
    "GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com",
}


@dataclass
class PullRequest:
    """One pull request; ``merge_sha`` is ``None`` while head and base conflict."""

    number: int
    title: str
    body: str | None
    head_ref: str
    base_ref: str
    head_sha: str
    base_sha: str
    user: str
    draft: bool = False
    state: str = "open"
    merged: bool = False
    merge_sha: str | None = None
    merged_sha: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    merged_at: float | None = None
    #: Owner of the fork the head branch is in; ``None`` for a branch of the base repository.
    head_owner: str | None = None


@dataclass
class IssueComment:
    """A comment on a pull request's issue (``/issues/{n}/comments``)."""

    id: int
    number: int
    body: str
    user: str
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


def _run(git_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit code and stdout of git on the bare repository; stderr is dropped (no secrets there,
    but no use either: callers turn a failure into a GitHub answer)."""
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True, timeout=30,
        check=False, env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout.strip()


def _merge_commit(git_dir: Path, base: str, head: str, message: str) -> str | None:
    """A merge commit of ``head`` into ``base`` (not on any branch); ``None`` on a conflict."""
    code, out = _run(git_dir, "merge-tree", "--write-tree", base, head)
    if code != 0:
        return None
    tree = out.splitlines()[0]
    code, sha = _run(git_dir, "commit-tree", tree, "-p", base, "-p", head, "-m", message,
                     env=_BOT_ENV)
    return sha if code == 0 else None


class GitHubPulls(GitHubDelivery):
    """Pull requests on top of the deliveries; every method is called under ``self._lock``
    by the routes, or takes it itself (the test-side ones)."""

    # ---------------------------------------------------------------- refs

    def _git_dir_or_422(self, repo: RepoState) -> Path:
        if repo.git_dir is None:
            raise _HttpError(_error(422, "Pull requests need a repository linked to a Git directory"))
        return repo.git_dir

    def _write_refs(self, repo: RepoState, pr: PullRequest) -> None:
        """``refs/pull/N/head`` and the test merge ``refs/pull/N/merge`` (deleted on conflict)."""
        git_dir = self._git_dir_or_422(repo)
        head_repo = self._head_repo(repo, pr)
        if head_repo is repo:
            _run(git_dir, "update-ref", f"refs/pull/{pr.number}/head", pr.head_sha)
        else:  # a fork's commits enter the base repository the way GitHub's network shares them
            _run(git_dir, "fetch", "-q", "--no-tags", str(self._git_dir_or_422(head_repo)),
                 f"+{pr.head_sha}:refs/pull/{pr.number}/head")
        if pr.state != "open":
            return
        merge = _merge_commit(git_dir, pr.base_sha, pr.head_sha,
                              f"Merge {pr.head_sha} into {pr.base_sha}")
        pr.merge_sha = merge
        if merge is None:
            _run(git_dir, "update-ref", "-d", f"refs/pull/{pr.number}/merge")
        else:
            _run(git_dir, "update-ref", f"refs/pull/{pr.number}/merge", merge)

    def _refresh(self, repo: RepoState, pr: PullRequest) -> bool:
        """Follow the head and base branches; True when the head moved. The test merge is
        recomputed when either moved, so a base that moved on is reflected at the next read."""
        if pr.state != "open":
            return False
        head = self._heads(self._head_repo(repo, pr)).get(pr.head_ref, pr.head_sha)
        base = self._heads(repo).get(pr.base_ref, pr.base_sha)
        moved = head != pr.head_sha
        if moved or base != pr.base_sha:
            pr.head_sha, pr.base_sha = head, base
            if moved:
                pr.updated_at = time.time()
            self._write_refs(repo, pr)
        return moved

    def _head_repo(self, repo: RepoState, pr: PullRequest) -> RepoState:
        if pr.head_owner is None:
            return repo
        return self._repo(pr.head_owner, repo.name)

    # ---------------------------------------------------------------- rendering

    def pull_json(self, root: str, repo: RepoState, pr: PullRequest) -> dict[str, Any]:
        """The pull request object of ``GET /repos/{o}/{r}/pulls/{n}`` (section 13)."""
        api, web = root + self.api_prefix, self._web_url(root)
        api_repo = f"{api}/repos/{repo.owner}/{repo.name}"

        def side(where: RepoState, ref: str, sha: str) -> dict[str, Any]:
            shown = self._repo_json(root, where)
            if where is not repo:  # the head of a pull request from a fork (section 13: head.repo.fork)
                shown["fork"] = True
            return {"label": f"{where.owner}:{ref}", "ref": ref, "sha": sha,
                    "user": self._user_json(api, web, where.owner), "repo": shown}

        return {
            "url": f"{api_repo}/pulls/{pr.number}",
            "id": repo.id * 100000 + pr.number,
            "node_id": f"PR_{repo.id}_{pr.number}",
            "html_url": f"{web}/{repo.full_name}/pull/{pr.number}",
            "diff_url": f"{web}/{repo.full_name}/pull/{pr.number}.diff",
            "issue_url": f"{api_repo}/issues/{pr.number}",
            "comments_url": f"{api_repo}/issues/{pr.number}/comments",
            "statuses_url": f"{api_repo}/statuses/{pr.head_sha}",
            "number": pr.number,
            "state": pr.state,
            "locked": False,
            "title": pr.title,
            "user": self._user_json(api, web, pr.user),
            "body": pr.body,
            "created_at": _iso(pr.created_at),
            "updated_at": _iso(pr.updated_at),
            "closed_at": _iso(pr.closed_at) if pr.closed_at else None,
            "merged_at": _iso(pr.merged_at) if pr.merged_at else None,
            "merge_commit_sha": pr.merged_sha or pr.merge_sha,
            "draft": pr.draft,
            "head": side(self._head_repo(repo, pr), pr.head_ref, pr.head_sha),
            "base": side(repo, pr.base_ref, pr.base_sha),
            "merged": pr.merged,
            "mergeable": None if pr.merged or pr.state != "open" else pr.merge_sha is not None,
            "mergeable_state": "clean" if pr.merge_sha else "dirty",
            "merged_by": None,
            "comments": 0,
            "commits": 1,
            "author_association": "OWNER",
        }

    def comment_json(self, root: str, repo: RepoState, comment: IssueComment) -> dict[str, Any]:
        """An issue comment as ``GET /repos/{o}/{r}/issues/comments/{id}`` answers it."""
        api, web = root + self.api_prefix, self._web_url(root)
        api_repo = f"{api}/repos/{repo.owner}/{repo.name}"
        return {
            "id": comment.id,
            "node_id": f"IC_{comment.id}",
            "url": f"{api_repo}/issues/comments/{comment.id}",
            "html_url": f"{web}/{repo.full_name}/pull/{comment.number}#issuecomment-{comment.id}",
            "issue_url": f"{api_repo}/issues/{comment.number}",
            "body": comment.body,
            "user": self._user_json(api, web, comment.user),
            "created_at": _iso(comment.created_at),
            "updated_at": _iso(comment.updated_at),
            "author_association": "OWNER",
        }

    # ---------------------------------------------------------------- changes

    def _head_ref(self, repo: RepoState, raw: str) -> tuple[str | None, dict[str, str], str]:
        """``branch`` or ``owner:branch``: the fork's owner (``None`` for this repository), the
        heads of the repository the branch is in, and the branch. A fork is the repository of the
        same name under ``owner``, declared with ``add_repo`` and linked to a Git directory."""
        owner, sep, branch = raw.rpartition(":")
        if not sep or owner.lower() == repo.owner.lower():
            return None, self._heads(repo), branch
        fork = self._repos.get((owner.lower(), repo.name.lower()))
        if fork is None or fork.git_dir is None:
            raise _invalid("PullRequest", f"head repository {owner}/{repo.name} not found", "head")
        return fork.owner, self._heads(fork), branch

    def create_pull(self, repo: RepoState, data: dict[str, Any], user: str) -> PullRequest:
        """Open a pull request: 422 for an unknown head or base, a duplicate, or nothing to merge."""
        head_owner, head_heads, head_ref = self._head_ref(repo, str(data.get("head") or ""))
        base_ref = data.get("base")
        if not isinstance(base_ref, str) or not isinstance(data.get("title"), str):
            raise _invalid("PullRequest", "title, head and base are required", "base")
        heads = self._heads(repo)
        if head_ref not in head_heads or base_ref not in heads:
            missing = "head" if head_ref not in head_heads else "base"
            raise _invalid("PullRequest", f"{missing} branch not found", missing)
        for open_pr in repo.pulls.values():
            if open_pr.state == "open" and (open_pr.head_owner, open_pr.head_ref,
                                            open_pr.base_ref) == (head_owner, head_ref, base_ref):
                raise _invalid("PullRequest", f"A pull request already exists for {head_ref}.")
        if head_heads[head_ref] == heads[base_ref]:
            raise _invalid("PullRequest", f"No commits between {base_ref} and {head_ref}")
        number = max(repo.pulls, default=0) + 1
        pr = PullRequest(number, data["title"], data.get("body"), head_ref, base_ref,
                         head_heads[head_ref], heads[base_ref], user, draft=bool(data.get("draft")),
                         head_owner=head_owner)
        self._write_refs(repo, pr)
        repo.pulls[number] = pr
        return pr

    def edit_pull(self, repo: RepoState, pr: PullRequest, data: dict[str, Any]) -> str | None:
        """Apply a PATCH; returns the delivery action it causes (closed, reopened), if any."""
        for key in ("title", "body"):
            if key in data:
                setattr(pr, key, data[key])
        action = None
        new_state = data.get("state")
        if new_state not in (None, "open", "closed"):
            raise _invalid("PullRequest", "state must be open or closed", "state")
        if new_state == "closed" and pr.state == "open":
            pr.state, pr.closed_at, action = "closed", time.time(), "closed"
        elif new_state == "open" and pr.state == "closed" and not pr.merged:
            pr.state, pr.closed_at, action = "open", None, "reopened"
            self._refresh(repo, pr)
            self._write_refs(repo, pr)
        pr.updated_at = time.time()
        return action

    def merge_pull(self, repo: RepoState, pr: PullRequest, sha: str | None) -> str:
        """Merge into the base branch with a real merge commit; 405 when not mergeable, 409 when
        ``sha`` is not the head."""
        self._refresh(repo, pr)
        if pr.state != "open" or pr.merge_sha is None or pr.draft:
            raise _HttpError(_error(405, "Pull Request is not mergeable"))
        if sha is not None and sha.lower() != pr.head_sha:
            raise _HttpError(_error(409, "Head branch was modified. Review and try the merge again."))
        git_dir = self._git_dir_or_422(repo)
        code, _ = _run(git_dir, "update-ref", f"refs/heads/{pr.base_ref}", pr.merge_sha,
                       pr.base_sha)
        if code != 0:
            raise _HttpError(_error(409, "Base branch was modified. Review and try the merge again."))
        pr.state, pr.merged, pr.merged_sha = "closed", True, pr.merge_sha
        pr.merged_at = pr.closed_at = pr.updated_at = time.time()
        return pr.merge_sha

    # ---------------------------------------------------------------- deliveries

    def _pull_outgoing(self, repo: RepoState, pr: PullRequest, action: str,
                       before: str | None = None) -> list[Any]:
        root = self.base_url
        api, web = root + self.api_prefix, self._web_url(root)
        payload: dict[str, Any] = {"action": action, "number": pr.number}
        if action == "synchronize":
            payload["before"], payload["after"] = before, pr.head_sha
        payload.update({
            "pull_request": self.pull_json(root, repo, pr),
            "repository": self._repo_json(root, repo),
            "sender": self._user_json(api, web, pr.user),
        })
        guid = str(uuid.uuid4())
        return [self._hook_outgoing(repo, h, "pull_request", payload, guid)
                for h in sorted(repo.hooks.values(), key=lambda h: h.id)
                if h.active and _subscribed(h.events, "pull_request")]

    def _announce(self, repo: RepoState, pr: PullRequest, action: str) -> None:
        """Deliver in the background: the API answer must not wait for receivers."""
        for out in self._pull_outgoing(repo, pr, action):
            self._spawn(out)

    def pull_pushed(self, owner: str, repo: str, number: int) -> list[DeliveryRecord]:
        """Test side, after a push to the PR's head branch: recompute the refs and, when the
        head moved, deliver ``synchronize`` (synchronously) to the subscribed hooks."""
        with self._lock:
            state = self._repo(owner, repo)
            pr = state.pulls[number]
            before = pr.head_sha
            if not self._refresh(state, pr):
                return []
            targets = self._pull_outgoing(state, pr, "synchronize", before)
        return [self._send(out) for out in targets]

    def pull(self, owner: str, repo: str, number: int) -> PullRequest:
        """The pull request's model, refreshed against the branches (in-process inspection)."""
        with self._lock:
            state = self._repo(owner, repo)
            pr: PullRequest = state.pulls[number]
            self._refresh(state, pr)
            return pr

    def comments(self, owner: str, repo: str, number: int) -> list[IssueComment]:
        """The comments on a pull request, oldest first (in-process inspection; no fault applies)."""
        with self._lock:
            state = self._repo(owner, repo)
            return [IssueComment(c.id, c.number, c.body, c.user, c.created_at, c.updated_at)
                    for c in sorted(state.comments.values(), key=lambda c: c.id) if c.number == number]
