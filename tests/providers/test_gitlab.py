"""GitLab end to end: project hook by the CLI, X-Gitlab-Token deliveries, statuses, refusals."""

from __future__ import annotations

import time

import httpx

from autodeployer_emulators.gitlab import GitLabEmulator

from ..helpers import WEBHOOK_SECRET, run_cli, stripped, wait_for
from .conftest import Host, commit, provider_env, run_scenario


def gitlab_host(gitlab: GitLabEmulator, app_env: dict[str, str]) -> Host:
    return Host(
        "gitlab", gitlab, "acme/config",
        push=lambda ref, before, after, **kw: gitlab.push("acme/config", ref, before, after, **kw),
        states=lambda sha: [s["status"] for s in gitlab.statuses("acme/config", sha)],
        success="success", env=provider_env(app_env, "gitlab", gitlab.api_url),
    )


def test_gitlab_push_end_to_end(service, app_env, gitlab, config_repo, sesam, state_dir):
    host = gitlab_host(gitlab, app_env)
    run_scenario(host, service, config_repo, sesam, state_dir)
    accepted = [s for s in gitlab.sent if s.status_code == 202]
    assert accepted[0].headers["X-Gitlab-Token"] == WEBHOOK_SECRET  # the hook carried our secret
    sha = config_repo.head
    assert "running" not in [s["status"] for s in gitlab.statuses("acme/config", sha)]  # never synced


def test_service_registers_the_hook_and_statuses_say_running_then_success(service, app_env, gitlab, config_repo,
                                                                            sesam):
    env = {**provider_env(app_env, "gitlab", gitlab.api_url), "REGISTER_WEBHOOK": "true"}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    wait_for(lambda: gitlab.hooks("acme/config"), what="the service registering its GitLab hook")
    [hook] = gitlab.hooks("acme/config")
    assert (hook["url"], hook["token"], hook["push_events"], hook["tag_push_events"]) == \
        (env["PUBLIC_URL"] + "/webhook", WEBHOOK_SECRET, True, True)
    before, after = commit(config_repo, "states")
    [sent] = gitlab.push("acme/config", "refs/heads/master", before, after)
    assert sent.status_code == 202
    wait_for(lambda: [s["status"] for s in gitlab.statuses("acme/config", after)] == ["running", "success"],
             what="running then success")
    [status] = gitlab.statuses("acme/config", after)[-1:]
    assert status["name"] == "autodeployer/node" and status["description"].startswith("deployed")


def test_merge_request_and_unknown_path_are_answered_cleanly(service, app_env, gitlab, config_repo, sesam):
    env = provider_env(app_env, "gitlab", gitlab.api_url)
    svc = service(env)
    headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": WEBHOOK_SECRET,
               "Content-Type": "application/json"}
    answer = httpx.post(svc.url + "/webhook", json={"object_kind": "merge_request"}, headers=headers)
    assert answer.status_code == 202 and "merge request" in answer.json()["reason"]
    named = httpx.post(svc.url + "/webhook/gitlab", json={"object_kind": "merge_request"}, headers=headers)
    assert named.status_code == 202
    unknown = httpx.post(svc.url + "/webhook/sourcehut", json={}, headers=headers)
    assert unknown.status_code == 404 and "sourcehut" in unknown.json()["error"]
    push = {"object_kind": "push", "ref": "refs/heads/master", "after": "1" * 40,
            "project": {"path_with_namespace": "acme/config"}}
    wrong_kind = httpx.post(svc.url + "/webhook", json=push, headers={**headers, "X-Gitlab-Event": "Note Hook"})
    assert wrong_kind.status_code == 202 and "does not announce a push" in wrong_kind.json()["reason"]


def test_same_limits_as_github(service, app_env, gitlab, config_repo, sesam):
    """Body cap (413) and read timeout (408) for a GitLab delivery with a valid token; a wrong token
    is 401 however large the body (it is drained, never buffered); none of them syncs."""
    env = {**provider_env(app_env, "gitlab", gitlab.api_url), "WEBHOOK_READ_TIMEOUT": "0.5"}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    puts = sesam.put_count
    headers = {"X-Gitlab-Event": "Push Hook", "Content-Type": "application/json"}

    def chunks(total: int, pause: float = 0.0):
        for _ in range(total // (1 << 20)):
            if pause:
                time.sleep(pause)
            yield b" " * (1 << 20)

    signed = {**headers, "X-Gitlab-Token": WEBHOOK_SECRET}
    big = httpx.post(svc.url + "/webhook", content=chunks(26 << 20), headers=signed)
    assert big.status_code == 413
    slow = httpx.post(svc.url + "/webhook", content=chunks(3 << 20, pause=0.4), headers=signed, timeout=10)
    assert slow.status_code == 408
    wrong = httpx.post(svc.url + "/webhook", content=chunks(8 << 20), headers={**headers, "X-Gitlab-Token": "nope"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid or missing token"}
    time.sleep(0.5)
    assert sesam.put_count == puts and "fresh" not in stripped(sesam.entities())


def test_api_refusal_names_the_request_never_the_token(app_env, gitlab):
    wrong = "glpat-WRONG-SECRET-77aa"
    env = {**provider_env(app_env, "gitlab", gitlab.api_url), "GITLAB_TOKEN": wrong}
    for action in ("list", "register"):
        done = run_cli(env, "hooks", action)
        assert done.returncode != 0, done.stdout
        assert "acme/config: " in done.stderr and ": 401 401 Unauthorized" in done.stderr, done.stderr
        assert wrong not in done.stdout + done.stderr
    assert gitlab.hooks("acme/config") == []
