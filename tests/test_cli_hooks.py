"""`autodeployer hooks ...` as a subprocess against the GitHub emulator, next to a running service."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo

from .helpers import WEBHOOK_SECRET, entity_json, free_port, pipe, run_cli, wait_for


@pytest.fixture
def gh_env(app_env: dict[str, str], github: GitHubEmulator) -> dict[str, str]:
    """One app whose repository lives on the GitHub emulator; no WEBHOOK_SECRET (a generated one)."""
    return {**app_env, "SYNC_INTERVAL": "3600", "GITHUB_API_URL": github.url, "HEAD_CHECK": "git"}  # type: ignore[attr-defined]


def hooks_for(github: GitHubEmulator, url: str) -> list[dict]:
    return [h for h in github.hooks("acme", "config") if h["config"]["url"] == url]


def push(github: GitHubEmulator, repo: WorkRepo, name: str) -> int:
    before = repo.head
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push()
    [delivery] = github.push("acme", "config", "refs/heads/master", before, repo.head)
    return delivery.status_code


def test_register_from_another_state_dir_keeps_the_working_secret(
    service, gh_env, github: GitHubEmulator, config_repo: WorkRepo, state_dir: Path, tmp_path: Path
):
    port = free_port()
    env = {**gh_env, "PORT": str(port), "PUBLIC_URL": f"http://127.0.0.1:{port}"}
    svc = service(env)
    url = svc.url + "/webhook"
    wait_for(lambda: hooks_for(github, url), what="hook registration by the service")
    secret = (state_dir / "secrets" / "webhook-secret").read_text().strip()
    wait_for(lambda: hooks_for(github, url)[0]["config"].get("secret") == secret, what="the service's secret")

    other = run_cli({**env, "STATE_DIR": str(tmp_path / "elsewhere")}, "hooks", "register")
    assert other.returncode == 0, other.stderr
    assert "unchanged" in other.stdout and "secret: left as it was" in other.stdout, other.stdout
    assert hooks_for(github, url)[0]["config"]["secret"] == secret
    assert push(github, config_repo, "after-register") == 202  # deliveries still verify

    explicit = run_cli({**env, "WEBHOOK_SECRET": WEBHOOK_SECRET}, "hooks", "register")
    assert explicit.returncode == 0, explicit.stderr
    assert "unchanged; secret set" in explicit.stdout and "secret: from WEBHOOK_SECRET" in explicit.stdout
    assert hooks_for(github, url)[0]["config"]["secret"] == WEBHOOK_SECRET


def test_register_says_what_changed(gh_env, github: GitHubEmulator, tmp_path: Path):
    url = "http://127.0.0.1:9/webhook"
    env = {**gh_env, "PUBLIC_URL": "http://127.0.0.1:9"}
    created = run_cli(env, "hooks", "register")
    assert created.returncode == 0, created.stderr
    assert " created -> " + url in created.stdout and "secret: from STATE_DIR" in created.stdout
    [hook] = hooks_for(github, url)
    secret = hook["config"]["secret"]

    api = httpx.Client(base_url=github.url, headers={"Authorization": f"Bearer {gh_env['GITHUB_TOKEN']}"})  # type: ignore[attr-defined]
    assert api.patch(f"/repos/acme/config/hooks/{hook['id']}",
                     json={"events": ["push", "issues"], "active": False}).status_code == 200
    fixed = run_cli({**env, "STATE_DIR": str(tmp_path / "other")}, "hooks", "register")
    assert fixed.returncode == 0, fixed.stderr
    assert f"hook {hook['id']} updated: events, active -> {url}" in fixed.stdout, fixed.stdout
    [hook] = hooks_for(github, url)
    assert hook["events"] == ["push"] and hook["active"] is True
    assert hook["config"]["secret"] == secret  # fixed without touching the secret

    again = run_cli(env, "hooks", "register")
    assert f"hook {hook['id']} unchanged" in again.stdout, again.stdout


def test_register_with_previews_asks_for_pull_request_events_as_the_service_does(gh_env, github: GitHubEmulator):
    url = "http://127.0.0.1:9/webhook"
    env = {**gh_env, "PUBLIC_URL": "http://127.0.0.1:9", "PREVIEWS": "true"}
    created = run_cli(env, "hooks", "register")
    assert created.returncode == 0, created.stderr
    [hook] = hooks_for(github, url)
    assert sorted(hook["events"]) == ["pull_request", "push"]
    again = run_cli(env, "hooks", "register")
    assert "unchanged" in again.stdout, again.stdout  # not stripped back to push only
    assert sorted(hooks_for(github, url)[0]["events"]) == ["pull_request", "push"]


def test_list_needs_no_public_url_and_says_no_hooks(gh_env, github: GitHubEmulator):
    empty = run_cli(gh_env, "hooks", "list")
    assert empty.returncode == 0, empty.stderr
    assert "acme/config: no hooks" in empty.stdout

    api = httpx.Client(base_url=github.url, headers={"Authorization": f"Bearer {gh_env['GITHUB_TOKEN']}"})  # type: ignore[attr-defined]
    created = api.post("/repos/acme/config/hooks", json={"config": {"url": "http://other.example/hook"}})
    assert created.status_code == 201
    listed = run_cli(gh_env, "hooks", "list")
    assert listed.returncode == 0, listed.stderr
    assert "  acme/config" in listed.stdout and "http://other.example/hook" in listed.stdout
    assert "*" not in listed.stdout  # without PUBLIC_URL, none is ours
