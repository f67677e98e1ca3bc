"""The GitLab emulator over HTTP: auth, project ids, paginated hooks with a write-only token,
commit-status rules, and push deliveries with GitLab's headers and payload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from autodeployer_emulators.gitlab import GitLabEmulator
from autodeployer_emulators.gitserver import WorkRepo

from ..helpers import free_port
from .forge_receiver import receiver
from .test_standalone import TOKEN, wait_until_serving


@pytest.fixture
def lab(config_repo: WorkRepo, tmp_path) -> Iterator[tuple[GitLabEmulator, httpx.Client]]:
    emulator = GitLabEmulator(token=TOKEN)
    emulator.add_repo("acme/sub/config", default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    with emulator.serve():
        yield emulator, httpx.Client(base_url=emulator.api_url, headers={"PRIVATE-TOKEN": TOKEN})


def test_auth_and_project_ids(lab):
    emulator, api = lab
    assert httpx.get(emulator.api_url + "/projects/acme%2Fsub%2Fconfig/hooks").status_code == 401
    bearer = httpx.get(emulator.api_url + "/projects/acme%2Fsub%2Fconfig/hooks",
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    project_id = emulator.repo("acme/sub/config").id
    assert api.get(f"/projects/{project_id}/hooks").status_code == 200
    assert api.get("/projects/acme%2Fnope/hooks").status_code == 404


def test_hooks_are_paginated_and_the_token_is_write_only(lab):
    emulator, api = lab
    emulator.max_page_size = 2
    for index in range(5):
        created = api.post("/projects/acme%2Fsub%2Fconfig/hooks", json={"url": f"http://h/{index}", "token": "t"})
        assert created.status_code == 201 and "token" not in created.json()
    assert api.post("/projects/acme%2Fsub%2Fconfig/hooks", json={}).status_code == 400
    pages, page = [], "1"
    while page:
        answer = api.get("/projects/acme%2Fsub%2Fconfig/hooks", params={"per_page": 100, "page": page})
        pages.append(answer.json())
        page = answer.headers["x-next-page"]
    assert [len(p) for p in pages] == [2, 2, 1] and answer.headers["x-total"] == "5"
    hook_id = pages[0][0]["id"]
    updated = api.put(f"/projects/acme%2Fsub%2Fconfig/hooks/{hook_id}",
                      json={"url": "http://h/0", "tag_push_events": True})
    assert updated.status_code == 200 and updated.json()["tag_push_events"] is True
    assert emulator.hooks("acme/sub/config")[0]["token"] == "t"  # a PUT without token keeps it
    assert api.delete(f"/projects/acme%2Fsub%2Fconfig/hooks/{hook_id}").status_code == 204
    assert api.delete(f"/projects/acme%2Fsub%2Fconfig/hooks/{hook_id}").status_code == 404


def test_commit_status_rules(lab, config_repo: WorkRepo):
    _, api = lab
    sha = config_repo.head
    path = f"/projects/acme%2Fsub%2Fconfig/statuses/{sha}"
    assert api.post(path, json={"state": "pending"}).status_code == 201
    assert api.post(path, json={"state": "error"}).status_code == 400  # GitLab has no "error"
    assert api.post(f"/projects/acme%2Fsub%2Fconfig/statuses/{'1' * 40}", json={"state": "success"}).status_code == 404
    assert api.post(path, json={"state": "success", "name": "ci/x", "target_url": "http://t"}).status_code == 201
    listed = api.get(f"/projects/acme%2Fsub%2Fconfig/repository/commits/{sha}/statuses").json()
    assert [(s["status"], s["name"]) for s in listed] == [("pending", "default"), ("success", "ci/x")]


def test_push_deliveries_carry_gitlab_headers_and_payload(lab):
    emulator, api = lab
    with receiver() as hooks:
        api.post("/projects/acme%2Fsub%2Fconfig/hooks", json={"url": hooks.url + "/a", "token": "tok-a"})
        api.post("/projects/acme%2Fsub%2Fconfig/hooks", json={"url": hooks.url + "/b", "tag_push_events": True,
                                                               "push_events": False})
        [sent] = emulator.push("acme/sub/config", "refs/heads/master", "0" * 40, "a" * 40)
        [tag] = emulator.push("acme/sub/config", "refs/tags/v1", "0" * 40, "b" * 40)
        [wrong] = emulator.push("acme/sub/config", "refs/heads/master", "a" * 40, "c" * 40, tamper="wrong")
        [missing] = emulator.push("acme/sub/config", "refs/heads/master", "a" * 40, "c" * 40, tamper="missing")
    assert sent.status_code == 202 and tag.url.endswith("/b")
    push, tagged = hooks.received[0], hooks.received[1]
    assert push.headers["x-gitlab-event"] == "Push Hook" and push.headers["x-gitlab-token"] == "tok-a"
    assert push.headers["idempotency-key"] == push.headers["x-gitlab-event-uuid"]
    assert "x-gitlab-webhook-uuid" in push.headers and "x-gitlab-instance" in push.headers
    body = json.loads(push.body)
    assert (body["object_kind"], body["ref"], body["after"]) == ("push", "refs/heads/master", "a" * 40)
    assert body["project"]["path_with_namespace"] == "acme/sub/config" and body["checkout_sha"] == "a" * 40
    assert tagged.headers["x-gitlab-event"] == "Tag Push Hook" and "x-gitlab-token" not in tagged.headers
    assert json.loads(tagged.body)["object_kind"] == "tag_push"
    assert wrong.headers["X-Gitlab-Token"] not in ("tok-a", "") and "X-Gitlab-Token" not in missing.headers


def test_standalone():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "autodeployer_emulators.gitlab", "--port", str(port),
                                "--project", "acme/config"], env={**os.environ, "GITLAB_EMULATOR_TOKEN": TOKEN},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/api/v4/projects/acme%2Fconfig/hooks"
        wait_until_serving(url, process)
        assert httpx.get(url, headers={"PRIVATE-TOKEN": TOKEN}).status_code == 200
        assert httpx.get(url).status_code == 401
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "GitLab emulator on" in stderr.decode() and TOKEN not in stderr.decode()
