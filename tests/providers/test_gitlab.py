"""GitLab end to end: project hook by the CLI, X-Gitlab-Token deliveries, statuses, refusals."""

from __future__ import annotations

import httpx

from autodeployer_emulators.gitlab import GitLabEmulator

from ..helpers import WEBHOOK_SECRET, run_cli, wait_for
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


def test_gitlab_statuses_say_running_then_success(service, app_env, gitlab, config_repo, sesam):
    env = provider_env(app_env, "gitlab", gitlab.api_url)
    assert "created" in run_cli(env, "hooks", "register").stdout
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
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
