"""The Gitea/Forgejo emulator over HTTP: token auth, Link-paginated hooks with a write-only secret,
status states, and deliveries signed as Gitea signs (bare hex, GitHub-compatible copies, empty when
no secret, form hooks signed over the JSON text)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest

from autodeployer_emulators.gitea import GiteaEmulator
from autodeployer_emulators.gitserver import WorkRepo

from ..helpers import free_port
from .forge_receiver import receiver
from .test_standalone import TOKEN, wait_until_serving


@pytest.fixture
def tea(config_repo: WorkRepo, tmp_path) -> Iterator[tuple[GiteaEmulator, httpx.Client]]:
    emulator = GiteaEmulator(token=TOKEN, forgejo=True)
    emulator.add_repo("acme/config", default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    with emulator.serve():
        yield emulator, httpx.Client(base_url=emulator.api_url, headers={"Authorization": f"token {TOKEN}"})


def hook(url: str, secret: str = "", content_type: str = "json") -> dict:
    return {"type": "gitea", "config": {"url": url, "content_type": content_type, "secret": secret},
            "events": ["push"], "active": True}


def test_hooks_paginate_with_link_and_hide_the_secret(tea):
    emulator, api = tea
    assert httpx.get(emulator.api_url + "/repos/acme/config/hooks").status_code == 401
    emulator.max_page_size = 2
    for index in range(3):
        created = api.post("/repos/acme/config/hooks", json=hook(f"http://h/{index}", "s3"))
        assert created.status_code == 201 and "secret" not in created.json()["config"]
    assert api.post("/repos/acme/config/hooks", json={"type": "nope", "config": {}}).status_code == 422
    first = api.get("/repos/acme/config/hooks")
    assert len(first.json()) == 2 and first.headers["x-total-count"] == "3"
    second = httpx.get(first.links["next"]["url"], headers=api.headers)
    assert len(second.json()) == 1 and "next" not in second.links
    hook_id = first.json()[0]["id"]
    patched = api.patch(f"/repos/acme/config/hooks/{hook_id}", json={"active": False, "config": {"url": "http://h/x"}})
    assert patched.json()["active"] is False and patched.json()["config"]["url"] == "http://h/x"
    assert emulator.hooks("acme/config")[0]["config"]["secret"] == "s3"  # kept: none was given
    assert api.delete(f"/repos/acme/config/hooks/{hook_id}").status_code == 204


def test_statuses_take_gitea_states(tea, config_repo: WorkRepo):
    _, api = tea
    sha = config_repo.head
    assert api.post(f"/repos/acme/config/statuses/{sha}", json={"state": "running"}).status_code == 422
    assert api.post(f"/repos/acme/config/statuses/{'2' * 40}", json={"state": "success"}).status_code == 404
    assert api.post(f"/repos/acme/config/statuses/{sha}", json={"state": "warning", "context": "c"}).status_code == 201
    assert [s["status"] for s in api.get(f"/repos/acme/config/commits/{sha}/statuses").json()] == ["warning"]


def test_deliveries_are_signed_as_gitea_signs(tea):
    emulator, api = tea
    with receiver() as hooks:
        api.post("/repos/acme/config/hooks", json=hook(hooks.url + "/json", "k"))
        api.post("/repos/acme/config/hooks", json=hook(hooks.url + "/none"))
        api.post("/repos/acme/config/hooks", json=hook(hooks.url + "/form", "k", "form"))
        emulator.push("acme/config", "refs/heads/master", "0" * 40, "a" * 40)
    signed, unsigned, form = hooks.received
    expected = hmac.new(b"k", signed.body, hashlib.sha256).hexdigest()
    assert signed.headers["x-gitea-signature"] == expected == signed.headers["x-forgejo-signature"]
    assert signed.headers["x-hub-signature-256"] == f"sha256={expected}"
    assert signed.headers["x-gitea-event"] == "push" and signed.headers["x-github-event"] == "push"
    assert signed.headers["x-gitea-delivery"] == signed.headers["x-github-delivery"]
    assert json.loads(signed.body)["repository"]["full_name"] == "acme/config"
    assert unsigned.headers["x-gitea-signature"] == "" and unsigned.headers["x-hub-signature-256"] == "sha256="
    text = parse_qs(form.body.decode())["payload"][0]
    assert form.headers["x-gitea-signature"] == hmac.new(b"k", text.encode(), hashlib.sha256).hexdigest()
    assert form.headers["x-gitea-signature"] != hmac.new(b"k", form.body, hashlib.sha256).hexdigest()


def test_standalone():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "autodeployer_emulators.gitea", "--port", str(port),
                                "--repo", "acme/config"], env={**os.environ, "GITEA_EMULATOR_TOKEN": TOKEN},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/repos/acme/config/hooks"
        wait_until_serving(url, process)
        assert httpx.get(url, headers={"Authorization": f"token {TOKEN}"}).status_code == 200
        assert httpx.get(url).status_code == 401
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "Gitea emulator on" in stderr.decode() and TOKEN not in stderr.decode()
