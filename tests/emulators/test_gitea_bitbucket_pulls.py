"""The Gitea and Bitbucket Server emulators' pull requests over HTTP: create/get/list (paged), the refs
in the linked repository (Bitbucket: no merge ref on a conflict), comments (Bitbucket's versions and
activities), declining, and the update plus delivery on a push to the source branch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autodeployer_emulators.bitbucket import BitbucketEmulator
from autodeployer_emulators.gitea import GiteaEmulator
from autodeployer_emulators.gitserver import WorkRepo

from .forge_receiver import receiver
from .test_gitlab_merge_requests import feature, ref
from .test_standalone import TOKEN

PULLS = "/rest/api/1.0/projects/ACME/repos/config/pull-requests"


@pytest.fixture
def gitea(config_repo: WorkRepo, tmp_path: Path) -> Iterator[tuple[GiteaEmulator, httpx.Client, Path]]:
    git_dir = tmp_path / "git" / "acme" / "config.git"
    emulator = GiteaEmulator(token=TOKEN)
    emulator.add_repo("acme/config", default_branch="master", git_dir=git_dir)
    with emulator.serve():
        yield emulator, httpx.Client(base_url=emulator.api_url, headers={"Authorization": f"token {TOKEN}"}), git_dir


@pytest.fixture
def bitbucket(config_repo: WorkRepo, tmp_path: Path) -> Iterator[tuple[BitbucketEmulator, httpx.Client, Path]]:
    git_dir = tmp_path / "git" / "acme" / "config.git"
    emulator = BitbucketEmulator(token=TOKEN)
    emulator.add_repo("ACME/config", default_branch="master", git_dir=git_dir)
    with emulator.serve():
        yield emulator, httpx.Client(base_url=emulator.api_url, headers={"Authorization": f"Bearer {TOKEN}"}), git_dir


def test_gitea_pulls_refs_comments_and_paging(gitea: tuple[GiteaEmulator, httpx.Client, Path],
                                              config_repo: WorkRepo) -> None:
    emulator, api, git_dir = gitea
    head = feature(config_repo, "feature", "a.txt", "a\n")
    feature(config_repo, "other", "b.txt", "b\n")
    created = api.post("/repos/acme/config/pulls", json={"head": "feature", "base": "master", "title": "A"})
    assert created.status_code == 201, created.text
    pull = created.json()
    assert (pull["number"], pull["state"], pull["head"]["sha"], pull["mergeable"]) == (1, "open", head, True)
    assert api.post("/repos/acme/config/pulls", json={"head": "feature", "base": "master"}).status_code == 409
    assert ref(git_dir, "refs/pull/1/head") == head and ref(git_dir, "refs/pull/1/merge") is None
    api.post("/repos/acme/config/pulls", json={"head": "other", "base": "master"})
    emulator.max_page_size = 1
    first = api.get("/repos/acme/config/pulls?state=open&limit=50&page=1")
    # newest first, as Gitea lists them
    assert [p["number"] for p in first.json()] == [2] and 'rel="next"' in first.headers["link"]
    assert [p["number"] for p in api.get(first.links["next"]["url"]).json()] == [1]

    posted = api.post("/repos/acme/config/issues/1/comments", json={"body": "hello"})
    assert posted.status_code == 201
    assert api.post("/repos/acme/config/issues/1/comments", json={"body": ""}).status_code == 422
    comment_id = posted.json()["id"]
    assert api.patch(f"/repos/acme/config/issues/comments/{comment_id}", json={"body": "edited"}).status_code == 200
    assert [c["body"] for c in api.get("/repos/acme/config/issues/1/comments").json()] == ["edited"]
    assert api.delete(f"/repos/acme/config/issues/comments/{comment_id}").status_code == 204
    assert api.patch(f"/repos/acme/config/issues/comments/{comment_id}", json={"body": "x"}).status_code == 404
    closed = api.patch("/repos/acme/config/pulls/1", json={"state": "closed"})
    assert closed.json()["state"] == "closed"


def test_gitea_push_to_the_head_branch_sends_pull_request_sync(gitea: tuple[GiteaEmulator, httpx.Client, Path],
                                                               config_repo: WorkRepo) -> None:
    emulator, api, git_dir = gitea
    before = feature(config_repo, "feature", "a.txt", "a\n")
    with receiver() as sink:
        assert api.post("/repos/acme/config/hooks", json={"type": "gitea", "events": ["push", "pull_request"],
                                                          "active": True, "config": {
                                                              "url": sink.url, "content_type": "json",
                                                              "secret": "s3"}}).status_code == 201
        emulator.pulls.open("acme/config", "feature", "master")
        config_repo.git("checkout", "-q", "feature")
        config_repo.write({"a.txt": "b\n"})
        after = config_repo.commit("more")
        config_repo.push("feature")
        config_repo.git("checkout", "-q", "master")
        sent = emulator.push("acme/config", "refs/heads/feature", before, after)
    kinds = [(s.headers["X-Gitea-Event"], s.headers["X-Gitea-Event-Type"]) for s in emulator.sent]
    assert kinds == [("pull_request", "pull_request"), ("push", "push"), ("pull_request", "pull_request_sync")]
    assert len(sent) == 2 and b'"action": "synchronized"' in sent[1].body
    assert ref(git_dir, "refs/pull/1/head") == after


def test_bitbucket_pulls_refs_merge_comments_versions_and_activities(
        bitbucket: tuple[BitbucketEmulator, httpx.Client, Path], config_repo: WorkRepo) -> None:
    emulator, api, git_dir = bitbucket
    head = feature(config_repo, "feature", "a.txt", "a\n")
    created = api.post(PULLS, json={"title": "A", "fromRef": {"id": "refs/heads/feature"},
                                    "toRef": {"id": "refs/heads/master"}})
    assert created.status_code == 201, created.text
    pull = created.json()
    assert (pull["id"], pull["state"], pull["fromRef"]["latestCommit"]) == (1, "OPEN", head)
    assert api.post(PULLS, json={"fromRef": {"id": "refs/heads/feature"},
                                 "toRef": {"id": "refs/heads/master"}}).status_code == 409
    assert ref(git_dir, "refs/pull-requests/1/from") == head
    assert ref(git_dir, "refs/pull-requests/1/merge^2") == head
    assert api.get(f"{PULLS}/1/merge").json()["outcome"] == "CLEAN"
    listed = api.get(f"{PULLS}?state=OPEN&at=refs/heads/master").json()
    assert [p["id"] for p in listed["values"]] == [1] and listed["isLastPage"]
    assert api.get(f"{PULLS}?state=OPEN&at=refs/heads/release").json()["values"] == []

    ids = [api.post(f"{PULLS}/1/comments", json={"text": f"c{i}"}).json()["id"] for i in range(3)]
    assert api.put(f"{PULLS}/1/comments/{ids[0]}", json={"text": "new"}).status_code == 400  # no version
    assert api.put(f"{PULLS}/1/comments/{ids[0]}", json={"text": "new", "version": 3}).status_code == 409
    edited = api.put(f"{PULLS}/1/comments/{ids[0]}", json={"text": "new", "version": 0})
    assert edited.status_code == 200 and edited.json()["version"] == 1
    emulator.max_page_size = 2
    page = api.get(f"{PULLS}/1/activities?start=0&limit=100").json()
    assert not page["isLastPage"] and page["nextPageStart"] == 2
    rest = api.get(f"{PULLS}/1/activities?start=2&limit=100").json()
    activities = page["values"] + rest["values"]
    assert [a["action"] for a in activities] == ["COMMENTED"] * 3 + ["OPENED"] and rest["isLastPage"]
    assert activities[2]["comment"]["text"] == "new"
    assert api.delete(f"{PULLS}/1/comments/{ids[1]}?version=0").status_code == 204
    assert api.get(f"{PULLS}/1/comments/{ids[1]}").status_code == 404
    assert api.post(f"{PULLS}/1/decline?version=7").status_code == 409
    assert api.post(f"{PULLS}/1/decline?version=0").json()["state"] == "DECLINED"


def test_bitbucket_conflict_has_no_merge_ref_and_a_push_sends_from_ref_updated(
        bitbucket: tuple[BitbucketEmulator, httpx.Client, Path], config_repo: WorkRepo) -> None:
    emulator, api, git_dir = bitbucket
    before = feature(config_repo, "clash", "a.txt", "theirs\n")
    config_repo.write({"a.txt": "ours\n"})
    config_repo.commit("on master")
    config_repo.push()
    with receiver() as sink:
        assert api.post("/rest/api/1.0/projects/ACME/repos/config/webhooks", json={
            "name": "t", "url": sink.url, "events": ["repo:refs_changed", "pr:from_ref_updated"],
            "active": True, "configuration": {"secret": "s3"}}).status_code == 201
        pull = emulator.pulls.open("ACME/config", "clash", "master")
        assert pull.merge_sha is None and ref(git_dir, "refs/pull-requests/1/merge") is None
        assert api.get(f"{PULLS}/1/merge").json() == {"canMerge": False, "conflicted": True,
                                                      "outcome": "CONFLICTED", "vetoes": []}
        config_repo.git("checkout", "-q", "clash")
        config_repo.write({"b.txt": "more\n"})
        after = config_repo.commit("more")
        config_repo.push("clash")
        config_repo.git("checkout", "-q", "master")
        emulator.push("ACME/config", "refs/heads/clash", before, after)
    keys = [s.headers["X-Event-Key"] for s in emulator.sent]
    assert keys == ["repo:refs_changed", "pr:from_ref_updated"]  # pr:opened: not subscribed
    assert f'"previousFromHash": "{before}"'.encode() in emulator.sent[1].body
    assert emulator.sent[1].headers["X-Hub-Signature"].startswith("sha256=")
    assert ref(git_dir, "refs/pull-requests/1/from") == after
