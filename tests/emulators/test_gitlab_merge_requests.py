"""The GitLab emulator's merge requests over HTTP: create/get/list, refs/merge-requests/<iid>/* in the
linked repository (no merge ref on a conflict), notes with pagination, and the update on a push."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autodeployer_emulators.gitlab import GitLabEmulator
from autodeployer_emulators.gitserver import WorkRepo

from .test_standalone import TOKEN

PROJECT = "/projects/acme%2Fconfig"


@pytest.fixture
def lab(config_repo: WorkRepo, tmp_path: Path) -> Iterator[tuple[GitLabEmulator, httpx.Client, Path]]:
    git_dir = tmp_path / "git" / "acme" / "config.git"
    emulator = GitLabEmulator(token=TOKEN)
    emulator.add_repo("acme/config", default_branch="master", git_dir=git_dir)
    with emulator.serve():
        yield emulator, httpx.Client(base_url=emulator.api_url, headers={"PRIVATE-TOKEN": TOKEN}), git_dir


def feature(repo: WorkRepo, name: str, path: str, text: str) -> str:
    repo.git("checkout", "-q", "-B", name, "master")
    repo.write({path: text})
    sha = repo.commit(f"on {name}")
    repo.push(name, force=True)
    repo.git("checkout", "-q", "master")
    return sha


def ref(git_dir: Path, name: str) -> str | None:
    done = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet", name],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def test_merge_requests_refs_and_notes(lab, config_repo: WorkRepo):
    emulator, api, git_dir = lab
    head = feature(config_repo, "feature", "a.txt", "a\n")
    created = api.post(f"{PROJECT}/merge_requests",
                       json={"source_branch": "feature", "target_branch": "master", "title": "A"})
    assert created.status_code == 201, created.text
    mr = created.json()
    assert (mr["iid"], mr["state"], mr["sha"], mr["merge_status"]) == (1, "opened", head, "can_be_merged")
    assert api.post(f"{PROJECT}/merge_requests", json={"source_branch": "feature", "target_branch": "master",
                                                       "title": "again"}).status_code == 409
    assert api.post(f"{PROJECT}/merge_requests", json={"source_branch": "feature"}).status_code == 400
    assert ref(git_dir, "refs/merge-requests/1/head") == head
    merge = ref(git_dir, "refs/merge-requests/1/merge")
    assert merge and ref(git_dir, "refs/merge-requests/1/merge^2") == head
    assert ref(git_dir, "refs/merge-requests/1/merge^1") == config_repo.head
    assert [m["iid"] for m in api.get(f"{PROJECT}/merge_requests?state=opened&target_branch=master").json()] == [1]
    assert api.get(f"{PROJECT}/merge_requests?target_branch=release").json() == []
    assert api.get(f"{PROJECT}/merge_requests/9").status_code == 404

    emulator.max_page_size = 2
    ids = [api.post(f"{PROJECT}/merge_requests/1/notes", json={"body": f"n{i}"}).json()["id"] for i in range(3)]
    first = api.get(f"{PROJECT}/merge_requests/1/notes?per_page=100&sort=asc")  # GitLab's default: newest first
    assert [n["body"] for n in first.json()] == ["n0", "n1"] and first.headers["x-next-page"] == "2"
    last = api.get(f"{PROJECT}/merge_requests/1/notes?per_page=100&page=2&sort=asc")
    assert [n["body"] for n in last.json()] == ["n2"] and last.headers["x-next-page"] == ""
    edited = api.put(f"{PROJECT}/merge_requests/1/notes/{ids[2]}", json={"body": "edited"})
    assert edited.status_code == 200 and edited.json()["noteable_type"] == "MergeRequest"
    assert api.put(f"{PROJECT}/merge_requests/1/notes/{ids[2]}", json={}).status_code == 400
    assert api.put(f"{PROJECT}/merge_requests/1/notes/999999", json={"body": "x"}).status_code == 404
    assert [n.body for n in emulator.notes("acme/config", 1)] == ["n0", "n1", "edited"]


def test_a_push_updates_the_merge_request_and_a_conflict_has_no_merge_ref(lab, config_repo: WorkRepo):
    emulator, api, git_dir = lab
    hook = api.post(f"{PROJECT}/hooks", json={"url": "http://127.0.0.1:9/hook", "merge_requests_events": True,
                                              "push_events": False, "token": "t"})
    assert hook.status_code == 201
    old = feature(config_repo, "feature", "a.txt", "a\n")
    mr = emulator.open_merge_request("acme/config", "feature", "master")
    assert json.loads(emulator.sent[-1].body)["object_attributes"]["action"] == "open"
    assert emulator.sent[-1].headers["X-Gitlab-Event"] == "Merge Request Hook"
    new = feature(config_repo, "feature", "a.txt", "b\n")
    emulator.push("acme/config", "refs/heads/feature", old, new)
    update = json.loads(emulator.sent[-1].body)["object_attributes"]
    assert (update["action"], update["oldrev"], update["last_commit"]["id"]) == ("update", old, new)
    assert ref(git_dir, f"refs/merge-requests/{mr.iid}/head") == new

    newer = feature(config_repo, "feature2", "a.txt", "c\n")
    config_repo.write({"a.txt": "master's\n"})  # the same new file on master: the two conflict
    config_repo.commit("a.txt on master")
    config_repo.push()
    conflicting = emulator.open_merge_request("acme/config", "feature2", "master", deliver=False)
    shown = api.get(f"{PROJECT}/merge_requests/{conflicting.iid}").json()
    assert shown["merge_status"] == "cannot_be_merged" and shown["sha"] == newer
    assert ref(git_dir, f"refs/merge-requests/{conflicting.iid}/merge") is None
    assert ref(git_dir, f"refs/merge-requests/{conflicting.iid}/head") == newer
