"""Merge requests of the emulated GitLab: their model, the `refs/merge-requests/<iid>/*` refs in the
linked bare repository, notes, and `Merge Request Hook` deliveries (`gitlab.py` routes the HTTP).

Facts it follows (GitLab REST v4, webhook and merge-request ref documentation):

* `GET /projects/:id/merge_requests/:iid` and `GET /projects/:id/merge_requests?state=opened&
  target_branch=B` (newest first unless `sort=asc`; paged, `X-Next-Page`): `id`, `iid`, `project_id`,
  `title`, `state` (opened, closed, merged), `source_branch`, `target_branch`, `source_project_id`,
  `target_project_id`, `sha` (the head), `merge_status` (`can_be_merged`, `cannot_be_merged`;
  `unchecked`/`checking` while computed),
  `detailed_merge_status` (`mergeable`, `conflict`), `merge_commit_sha` (set once merged),
  `diff_refs` (`base_sha`, `head_sha`, `start_sha`), `web_url`. `POST /projects/:id/merge_requests`
  with `source_branch`, `target_branch`, `title` creates one (201; 409 when one is already open for the
  same branches); `PUT /projects/:id/merge_requests/:iid` with `state_event` close/reopen.
* Refs: `refs/merge-requests/<iid>/head` is the source branch's tip; `refs/merge-requests/<iid>/merge`
  the merge of head into the target branch GitLab writes after its mergeability check (absent while the
  two conflict). Both are fetchable from the project's repository.
* Notes: `GET /projects/:id/merge_requests/:iid/notes` (newest first unless `sort=asc`; paged with
  `page`/`per_page` (default 20, max 100), `X-Next-Page`/`X-Page`/`X-Per-Page`/`X-Total`), `POST` with
  `body` (201, the note: `id`, `body`, `author`, `created_at`, `updated_at`, `system`, `noteable_id`, `noteable_type`
  "MergeRequest", `noteable_iid`), `PUT .../notes/:note_id` with `body` (200), 404 for an unknown note;
  `body` is required (400 `{"error": "body is missing"}`).
* Deliveries: `X-Gitlab-Event: Merge Request Hook` with the same other headers as a push; the body's
  `object_kind`/`event_type` "merge_request", `user`, `project` (the target), `repository`,
  `object_attributes` (`id`, `iid`, `title`, `state`, `action` open/update/reopen/close/merge,
  `source_branch`, `target_branch`, `source_project_id`, `target_project_id`, `merge_status`,
  `last_commit` {`id`, `message`, `timestamp`, `url`}, `oldrev` only when new commits were pushed,
  `source`/`target` project, `url`), `labels`, `changes`. Sent to hooks with `merge_requests_events`.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The identity of the merge commits the emulator writes (fixed, so SHAs are stable).
_BOT_ENV = {"GIT_AUTHOR_NAME": "GitLab", "GIT_AUTHOR_EMAIL": "gitlab@example.invalid",
            "GIT_COMMITTER_NAME": "GitLab", "GIT_COMMITTER_EMAIL": "gitlab@example.invalid"}


@dataclass
class Note:
    id: int
    iid: int
    body: str
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass
class MergeRequest:
    id: int
    iid: int
    title: str
    source_branch: str
    target_branch: str
    source_project_id: int
    target_project_id: int
    sha: str = ""
    base_sha: str = ""
    merge_sha: str | None = None  # refs/merge-requests/<iid>/merge; None on a conflict
    state: str = "opened"
    merged_sha: str | None = None
    notes: list[Note] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


def git(git_dir: Path, *args: str) -> tuple[int, str]:
    """Exit code and stdout of git on the bare repository (stderr dropped: callers answer for it)."""
    done = subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True, timeout=30,
                          check=False, env={**os.environ, **_BOT_ENV})
    return done.returncode, done.stdout.strip()


def branch_tip(git_dir: Path, branch: str) -> str | None:
    code, sha = git(git_dir, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    return sha if code == 0 and sha else None


def write_refs(git_dir: Path, mr: MergeRequest) -> None:
    """`refs/merge-requests/<iid>/head`, and `/merge` (head merged into the target) or none on a conflict."""
    git(git_dir, "update-ref", f"refs/merge-requests/{mr.iid}/head", mr.sha)
    merge: str | None = None
    code, out = git(git_dir, "merge-tree", "--write-tree", mr.base_sha, mr.sha)
    if code == 0:
        code, sha = git(git_dir, "commit-tree", out.splitlines()[0], "-p", mr.base_sha, "-p", mr.sha,
                        "-m", f"Merge branch '{mr.source_branch}' into '{mr.target_branch}'")
        merge = sha if code == 0 else None
    mr.merge_sha = merge
    if merge is None:
        git(git_dir, "update-ref", "-d", f"refs/merge-requests/{mr.iid}/merge")
    else:
        git(git_dir, "update-ref", f"refs/merge-requests/{mr.iid}/merge", merge)


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def mr_json(mr: MergeRequest, project_id: int, web: str) -> dict[str, Any]:
    """The merge request as `GET /projects/:id/merge_requests/:iid` answers it."""
    open_ = mr.state == "opened"
    mergeable = mr.merge_sha is not None
    return {
        "id": mr.id, "iid": mr.iid, "project_id": project_id, "title": mr.title, "description": "",
        "state": mr.state, "source_branch": mr.source_branch, "target_branch": mr.target_branch,
        "source_project_id": mr.source_project_id, "target_project_id": mr.target_project_id, "sha": mr.sha,
        "merge_status": ("can_be_merged" if mergeable else "cannot_be_merged") if open_ else "unchecked",
        "detailed_merge_status": ("mergeable" if mergeable else "conflict") if open_ else "not_open",
        "has_conflicts": open_ and not mergeable, "merge_commit_sha": mr.merged_sha, "draft": False,
        "diff_refs": {"base_sha": mr.base_sha, "head_sha": mr.sha, "start_sha": mr.base_sha},
        "web_url": f"{web}/-/merge_requests/{mr.iid}", "created_at": iso(mr.created_at),
        "updated_at": iso(mr.updated_at), "author": {"id": 1, "username": "root", "name": "Administrator"},
    }


def note_json(note: Note, mr: MergeRequest) -> dict[str, Any]:
    return {"id": note.id, "type": None, "body": note.body, "attachment": None, "system": False,
            "author": {"id": 1, "username": "autodeployer-bot", "name": "autodeployer"},
            "created_at": iso(note.created_at), "updated_at": iso(note.updated_at), "noteable_id": mr.id,
            "noteable_type": "MergeRequest", "noteable_iid": mr.iid, "resolvable": False, "confidential": False}


def hook_payload(mr: MergeRequest, action: str, project: dict[str, Any], oldrev: str | None) -> dict[str, Any]:
    """A `Merge Request Hook` body; `oldrev` only when the update brought new commits."""
    web = project["web_url"]
    attributes: dict[str, Any] = {
        "id": mr.id, "iid": mr.iid, "title": mr.title, "description": "", "state": mr.state, "action": action,
        "source_branch": mr.source_branch, "target_branch": mr.target_branch,
        "source_project_id": mr.source_project_id, "target_project_id": mr.target_project_id,
        "merge_status": "can_be_merged" if mr.merge_sha else "cannot_be_merged",
        "detailed_merge_status": "mergeable" if mr.merge_sha else "conflict", "merge_commit_sha": mr.merged_sha,
        "last_commit": {"id": mr.sha, "message": "pushed", "title": "pushed", "timestamp": iso(mr.updated_at),
                        "url": f"{web}/-/commit/{mr.sha}", "author": {"name": "Administrator", "email": ""}},
        "source": project, "target": project, "url": f"{web}/-/merge_requests/{mr.iid}",
        "created_at": iso(mr.created_at), "updated_at": iso(mr.updated_at), "work_in_progress": False,
        "draft": False,
    }
    if oldrev:
        attributes["oldrev"] = oldrev
    return {"object_kind": "merge_request", "event_type": "merge_request",
            "user": {"id": 1, "name": "Administrator", "username": "root", "email": "[REDACTED]"},
            "project": project, "repository": {"name": project["name"], "url": project["git_ssh_url"],
                                               "homepage": web},
            "object_attributes": attributes, "labels": [], "changes": {}, "assignees": [], "reviewers": []}
