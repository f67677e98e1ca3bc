"""The Bitbucket Server emulator over HTTP: bearer auth, paged webhooks with a hidden secret, build
status rules, and refs_changed deliveries signed in X-Hub-Signature; and Bitbucket Cloud's push."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from autodeployer_emulators.bitbucket import BitbucketEmulator
from autodeployer_emulators.gitserver import WorkRepo

from ..helpers import free_port
from .forge_receiver import receiver
from .test_standalone import TOKEN, wait_until_serving

HOOKS = "/rest/api/1.0/projects/ACME/repos/config/webhooks"


@pytest.fixture
def bb(config_repo: WorkRepo, tmp_path) -> Iterator[tuple[BitbucketEmulator, httpx.Client]]:
    emulator = BitbucketEmulator(token=TOKEN)
    emulator.add_repo("ACME/config", default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    with emulator.serve():
        yield emulator, httpx.Client(base_url=emulator.base_url, headers={"Authorization": f"Bearer {TOKEN}"})


def test_webhooks_are_paged_and_keep_their_secret(bb):
    emulator, api = bb
    assert httpx.get(emulator.base_url + HOOKS).status_code == 401
    emulator.max_page_size = 2
    for index in range(3):
        body = {"name": f"h{index}", "url": f"http://h/{index}", "events": ["repo:refs_changed"],
                "configuration": {"secret": "s"}}
        created = api.post(HOOKS, json=body)
        assert created.status_code == 201 and "secret" not in created.json()["configuration"]
    assert api.post(HOOKS, json={"url": "http://h"}).status_code == 400
    first = api.get(HOOKS).json()
    second = api.get(HOOKS, params={"start": first["nextPageStart"]}).json()
    pages = (first["isLastPage"], len(first["values"]), second["isLastPage"], len(second["values"]))
    assert pages == (False, 2, True, 1)
    hook_id = first["values"][0]["id"]
    assert api.put(f"{HOOKS}/{hook_id}", json={"active": False}).json()["active"] is False
    assert emulator.hooks("ACME/config")[0]["configuration"]["secret"] == "s"
    assert api.delete(f"{HOOKS}/{hook_id}").status_code == 204


def test_build_status_rules(bb, config_repo: WorkRepo):
    emulator, api = bb
    path = f"/rest/build-status/1.0/commits/{config_repo.head}"
    assert api.post(path, json={"state": "INPROGRESS", "key": "k"}).status_code == 400  # url is required
    assert api.post(path, json={"state": "pending", "key": "k", "url": "http://u"}).status_code == 400
    assert api.post(f"/rest/build-status/1.0/commits/{'3' * 40}",
                    json={"state": "FAILED", "key": "k", "url": "http://u"}).status_code == 404
    assert api.post(path, json={"state": "INPROGRESS", "key": "k", "url": "http://u"}).status_code == 204
    assert api.post(path, json={"state": "SUCCESSFUL", "key": "k", "url": "http://u"}).status_code == 204
    assert [s["state"] for s in emulator.build_statuses(config_repo.head)] == ["SUCCESSFUL"]  # same key replaced
    assert api.get(path).json()["values"][0]["key"] == "k"


def test_refs_changed_and_cloud_deliveries(bb):
    emulator, api = bb
    with receiver() as hooks:
        api.post(HOOKS, json={"name": "a", "url": hooks.url + "/a", "events": ["repo:refs_changed"],
                              "configuration": {"secret": "k"}})
        api.post(HOOKS, json={"name": "b", "url": hooks.url + "/b", "events": ["repo:refs_changed"]})
        emulator.push("ACME/config", "refs/heads/master", "1" * 40, "a" * 40)
        emulator.cloud_push(hooks.url + "/cloud", "ws/repo", "main", "b" * 40)
    signed, unsigned, cloud = hooks.received
    assert signed.headers["x-hub-signature"] == "sha256=" + hmac.new(b"k", signed.body, hashlib.sha256).hexdigest()
    assert signed.headers["x-event-key"] == "repo:refs_changed" and "x-request-id" in signed.headers
    assert "x-hub-signature" not in unsigned.headers
    body = json.loads(signed.body)
    [change] = body["changes"]
    assert (change["ref"]["id"], change["ref"]["displayId"], change["toHash"], change["type"]) == \
        ("refs/heads/master", "master", "a" * 40, "UPDATE")
    assert (body["repository"]["project"]["key"], body["repository"]["slug"]) == ("ACME", "config")
    assert cloud.headers["x-event-key"] == "repo:push" and "x-hub-signature" not in cloud.headers
    new = json.loads(cloud.body)["push"]["changes"][0]["new"]
    assert (new["type"], new["name"], new["target"]["hash"]) == ("branch", "main", "b" * 40)


def test_standalone():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "autodeployer_emulators.bitbucket", "--port", str(port),
                                "--repo", "ACME/config"], env={**os.environ, "BITBUCKET_EMULATOR_TOKEN": TOKEN},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}{HOOKS}"
        wait_until_serving(url, process)
        assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(url).status_code == 401
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "Bitbucket emulator on" in stderr.decode() and TOKEN not in stderr.decode()
