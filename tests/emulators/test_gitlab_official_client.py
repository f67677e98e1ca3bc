"""The GitLab emulator driven by python-gitlab, GitLab's independent client library.

Each test makes, through python-gitlab, the calls the product makes (``providers/gitlab.py``,
``providers/gitlab_reviews.py``): project hooks (listed page by page), commit statuses, merge requests
and their notes, against a project linked to a real Git repository on disk. python-gitlab follows the
`Link` header (rel="next") and reads `X-Total`/`X-Total-Pages`/`X-Next-Page`, so a list that stops
early or a missing header shows up as a wrong count or a wrong attribute here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gitlab
import pytest
from gitlab.v4.objects import Project

from autodeployer_emulators.gitlab import GitLabEmulator
from autodeployer_emulators.gitserver import WorkRepo

TOKEN = "glpat-official-client-SECRET"


@pytest.fixture
def lab(config_repo: WorkRepo, tmp_path: Path) -> Iterator[GitLabEmulator]:
    emulator = GitLabEmulator(token=TOKEN)
    emulator.add_repo("acme/config", default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    with emulator.serve():
        yield emulator


def client(emulator: GitLabEmulator, token: str = TOKEN) -> gitlab.Gitlab:
    return gitlab.Gitlab(emulator.base_url, private_token=token, retry_transient_errors=False, timeout=10)


def project(emulator: GitLabEmulator, token: str = TOKEN) -> Project:
    # lazy: the product never reads the project itself, only its hooks, statuses and merge requests
    return client(emulator, token).projects.get("acme/config", lazy=True)


def feature(repo: WorkRepo, name: str, text: str) -> str:
    repo.git("checkout", "-q", "-B", name, "master")
    repo.write({f"{name}.txt": text})
    sha = repo.commit(f"on {name}")
    repo.push(name, force=True)
    repo.git("checkout", "-q", "master")
    return sha


def test_hooks_paged_created_updated_deleted(lab: GitLabEmulator) -> None:
    lab.max_page_size = 2
    hooks = project(lab).hooks
    made = [hooks.create({"url": f"http://127.0.0.1:9/h{i}", "token": f"s{i}", "push_events": True,
                          "merge_requests_events": i == 0}) for i in range(5)]
    assert [h.url for h in made] == [f"http://127.0.0.1:9/h{i}" for i in range(5)]
    assert not hasattr(made[0], "token")  # write-only, never shown
    assert made[0].merge_requests_events is True and made[1].merge_requests_events is False

    first = hooks.list(per_page=100, page=1)  # capped to the host's page size
    assert isinstance(first, list) and len(first) == 2
    lazy = hooks.list(iterator=True, per_page=2)
    assert (lazy.total, lazy.total_pages, lazy.per_page, lazy.next_page) == (5, 3, 2, 2)
    every = hooks.list(get_all=True, per_page=2)  # follows Link rel="next" to the end
    assert [h.id for h in every] == [h.id for h in made]

    hook = hooks.get(made[1].id)
    hook.url = "http://127.0.0.1:9/moved"
    hook.tag_push_events = True
    hook.save()
    again = hooks.get(made[1].id)
    assert (again.url, again.tag_push_events, again.push_events) == ("http://127.0.0.1:9/moved", True, True)
    assert lab.hooks("acme/config")[1]["token"] == "s1"  # a PUT without a token keeps it

    hooks.delete(made[0].id)
    with pytest.raises(gitlab.GitlabGetError) as gone:
        hooks.get(made[0].id)
    assert gone.value.response_code == 404
    with pytest.raises(gitlab.GitlabDeleteError) as twice:
        hooks.delete(made[0].id)
    assert twice.value.response_code == 404
    assert len(hooks.list(get_all=True)) == 4


def test_commit_statuses(lab: GitLabEmulator, config_repo: WorkRepo) -> None:
    commit = project(lab).commits.get(config_repo.head, lazy=True)
    pending = commit.statuses.create({"state": "pending", "name": "autodeployer/node", "description": "syncing"})
    assert (pending.status, pending.name, pending.sha) == ("pending", "autodeployer/node", config_repo.head)
    done = commit.statuses.create({"state": "success", "name": "autodeployer/node",
                                   "target_url": "http://127.0.0.1/run/1", "description": "synced"})
    assert (done.status, done.target_url) == ("success", "http://127.0.0.1/run/1")
    commit.statuses.create({"state": "failed", "name": "other"})
    latest = commit.statuses.list(get_all=True)  # only the latest of each name, oldest first
    assert [(s.name, s.status) for s in latest] == [("autodeployer/node", "success"), ("other", "failed")]
    assert [s.status for s in commit.statuses.list(name="other", get_all=True)] == ["failed"]

    with pytest.raises(gitlab.GitlabCreateError) as invalid:
        commit.statuses.create({"state": "bogus", "name": "x"})
    assert invalid.value.response_code == 400
    unknown = project(lab).commits.get("e" * 40, lazy=True)
    with pytest.raises(gitlab.GitlabCreateError) as missing:
        unknown.statuses.create({"state": "success"})
    assert missing.value.response_code == 404


def test_merge_requests_and_notes(lab: GitLabEmulator, config_repo: WorkRepo) -> None:
    lab.max_page_size = 2
    heads = [feature(config_repo, f"f{i}", f"{i}\n") for i in range(3)]
    mrs = project(lab).mergerequests
    created = [mrs.create({"source_branch": f"f{i}", "target_branch": "master", "title": f"T{i}"})
               for i in range(3)]
    assert [m.iid for m in created] == [1, 2, 3]
    with pytest.raises(gitlab.GitlabCreateError) as duplicate:
        mrs.create({"source_branch": "f0", "target_branch": "master", "title": "again"})
    assert duplicate.value.response_code == 409

    mr = mrs.get(2)
    assert (mr.iid, mr.state, mr.sha, mr.target_branch, mr.source_branch) == (2, "opened", heads[1], "master", "f1")
    assert mr.merge_status == "can_be_merged" and mr.source_project_id == mr.target_project_id
    assert mr.diff_refs["head_sha"] == heads[1]
    open_into_master = mrs.list(state="opened", target_branch="master", get_all=True)
    assert [m.iid for m in open_into_master] == [3, 2, 1]  # newest first
    assert [m.iid for m in mrs.list(target_branch="master", sort="asc", per_page=2, get_all=False)] == [1, 2]
    assert mrs.list(state="opened", target_branch="other", get_all=True) == []
    mr.state_event = "close"
    mr.save()
    assert mrs.get(2).state == "closed"
    assert [m.iid for m in mrs.list(state="opened", target_branch="master", get_all=True)] == [3, 1]

    notes = mrs.get(1, lazy=True).notes
    made = [notes.create({"body": f"<!-- autodeployer --> note {i}"}) for i in range(5)]
    assert made[0].noteable_type == "MergeRequest" and made[0].noteable_iid == 1
    page = notes.list(iterator=True, per_page=2)
    assert (page.total, page.total_pages, page.next_page) == (5, 3, 2)
    assert [n.body for n in notes.list(get_all=True, per_page=2)] == [n.body for n in reversed(made)]
    assert [n.body for n in notes.list(get_all=True, per_page=2, sort="asc")] == [n.body for n in made]
    note = notes.get(made[3].id)
    note.body = "edited"
    note.save()
    assert notes.get(made[3].id).body == "edited"
    with pytest.raises(gitlab.GitlabGetError) as unknown_note:
        notes.get(999999)
    assert unknown_note.value.response_code == 404
    with pytest.raises(gitlab.GitlabCreateError) as empty:
        notes.create({"body": ""})
    assert empty.value.response_code == 400
    with pytest.raises(gitlab.GitlabGetError) as unknown_mr:
        mrs.get(99)
    assert unknown_mr.value.response_code == 404


def test_wrong_token_and_unknown_project(lab: GitLabEmulator) -> None:
    with pytest.raises(gitlab.GitlabAuthenticationError) as refused:
        project(lab, "glpat-wrong").hooks.list()
    assert refused.value.response_code == 401
    with pytest.raises(gitlab.GitlabAuthenticationError):
        project(lab, "glpat-wrong").hooks.create({"url": "http://127.0.0.1:9/h"})
    assert lab.hooks("acme/config") == []
    missing = client(lab).projects.get("acme/missing", lazy=True)
    with pytest.raises(gitlab.GitlabListError) as unknown:
        missing.hooks.list()
    assert unknown.value.response_code == 404
    assert "Project Not Found" in str(unknown.value.error_message)
