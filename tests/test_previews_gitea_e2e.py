"""Pull-request previews on Gitea / Forgejo end to end: `autodeployer run` as a process registering its
hook (with `pull_request`), the Gitea emulator sending signed `pull_request` deliveries (Forgejo's
headers too), the loopback Git server serving refs/pull/<n>/head, the Sesam emulator as the target.
Gitea makes no test merge, so the head is planned alone and the comment says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.gitea import GiteaEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, WEBHOOK_SECRET, entity_json, pipe, wait_for
from .providers.conftest import provider_env
from .test_previews_e2e import branch, preview_at, previews, push_to

REPO = "acme/config"
MARKER = "<!-- autodeployer:plan app=node -->"


@pytest.fixture
def gitea(tmp_path: Path) -> Iterator[GiteaEmulator]:
    emulator = GiteaEmulator(token=GIT_TOKEN, forgejo=True)
    emulator.add_repo(REPO, default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    emulator.delivery_timeout = 5
    with emulator.serve():
        yield emulator


def start(service: Any, app_env: dict[str, str], gitea: GiteaEmulator, **extra: str) -> Any:
    env = {**provider_env(app_env, "gitea", gitea.api_url), "PREVIEWS": "true", "REGISTER_WEBHOOK": "true", **extra}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    wait_for(lambda: any("pull_request" in h["events"] for h in gitea.hooks(REPO)), what="hook with pull_request")
    return svc


def our_comments(gitea: GiteaEmulator, number: int) -> list[Any]:
    return [c for c in gitea.pulls.comments(REPO, number) if MARKER in c.body]


def plan_status(gitea: GiteaEmulator, sha: str) -> dict[str, Any] | None:
    found = [s for s in gitea.statuses(REPO, sha) if s["context"] == "autodeployer/node/plan"]
    return found[-1] if found else None


def test_pull_request_comment_status_update_and_refusals(service: Any, app_env: dict[str, str], gitea: GiteaEmulator,
                                                         config_repo: WorkRepo, sesam: SesamEmulator) -> None:
    svc = start(service, app_env, gitea)
    puts, live = sesam.put_count, config_repo.head
    api = httpx.Client(base_url=gitea.api_url, headers={"Authorization": f"token {GIT_TOKEN}"}, trust_env=False)

    # A good change: one comment with the diff, a success status on the head; the head is planned alone.
    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    pull = gitea.pulls.open(REPO, "feature", "master", deliver=False)
    for index in range(3):
        assert api.post(f"/repos/{REPO}/issues/{pull.number}/comments",
                        json={"body": f"review {index}"}).status_code == 201
    [opened] = gitea.pulls.deliver(REPO, pull.number, "opened")
    assert opened.headers["X-Gitea-Event"] == "pull_request" and opened.headers["X-Forgejo-Event"] == "pull_request"
    assert opened.status_code == 202 and "preview queued" in opened.response, opened.response
    first = preview_at(svc, pull.number, head, state="success")
    assert first["revision"] == head and first["live_revision"] == live
    assert "Gitea makes no test merge" in first["note"] and "+ pipe fresh" in first["plan"]
    status = wait_for(lambda: plan_status(gitea, head), what="plan status")
    assert status["status"] == "success"
    [comment] = wait_for(lambda: our_comments(gitea, pull.number), what="the preview comment")
    assert "+ pipe fresh" in comment.body and "<details>" in comment.body and live[:12] in comment.body
    assert f"Head `{head[:12]}` alone" in comment.body

    # A broken file pushed to the head branch: Gitea sends `synchronized` (pull_request_sync); the same
    # comment is edited and the status names the file.
    before = head
    broken = push_to(config_repo, "feature", {"pipes/fresh.conf.json": "{"})
    sent = gitea.push(REPO, "refs/heads/feature", before, broken)
    assert [s.status_code for s in sent] == [202, 202]  # the push (no app follows feature), the sync
    assert sent[1].headers["X-Gitea-Event-Type"] == "pull_request_sync" and "preview queued" in sent[1].response
    refused = preview_at(svc, pull.number, broken, state="failure")
    assert "fresh.conf.json" in refused["reason"]
    failed = wait_for(lambda: plan_status(gitea, broken), what="failure status")
    assert failed["status"] == "failure" and "fresh.conf.json" in failed["description"]
    wait_for(lambda: "fresh.conf.json" in our_comments(gitea, pull.number)[0].body, what="comment updated")
    assert [c.id for c in our_comments(gitea, pull.number)] == [comment.id]
    assert len(gitea.pulls.comments(REPO, pull.number)) == 4

    # An edit (title) changes no plan.
    [edited] = gitea.pulls.deliver(REPO, pull.number, "edited")
    assert edited.status_code == 202 and "action edited changes no plan" in edited.response

    # A pull request into another branch is ignored.
    branch(config_repo, "release", {})
    other_head = branch(config_repo, "hotfix", {"pipes/hot.conf.json": entity_json(pipe("hot"))}, base="release")
    other = gitea.pulls.open(REPO, "hotfix", "release", deliver=False)
    [into_release] = gitea.pulls.deliver(REPO, other.number, "opened")
    assert into_release.status_code == 202 and "no app follows acme/config@release" in into_release.response
    assert other.number not in previews(svc) and plan_status(gitea, other_head) is None

    # A wrong, empty or missing signature: 401, nothing planned.
    planned_at = previews(svc)[pull.number]["planned_at"]
    for tamper in ("wrong", "empty", "missing"):
        [bad] = gitea.pulls.deliver(REPO, pull.number, "reopened", tamper=tamper)  # type: ignore[arg-type]
        assert bad.status_code == 401, (tamper, bad.response)
    assert previews(svc)[pull.number]["planned_at"] == planned_at

    # Our comment deleted by someone: the next plan writes a new one (PATCH answered 404).
    assert api.delete(f"/repos/{REPO}/issues/comments/{comment.id}").status_code == 204
    fixed = push_to(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    gitea.push(REPO, "refs/heads/feature", broken, fixed)
    preview_at(svc, pull.number, fixed, state="success")
    [again] = wait_for(lambda: our_comments(gitea, pull.number), what="a new preview comment")
    assert again.id != comment.id and "+ pipe fresh" in again.body

    # Closed: the preview is dropped; nothing was ever written to the target; no secret in the log.
    [closed] = gitea.pulls.close(REPO, pull.number)
    assert closed.status_code == 202 and "dropped" in closed.response
    assert pull.number not in previews(svc)
    assert sesam.put_count == puts
    log = svc.log()
    assert GIT_TOKEN not in log and WEBHOOK_SECRET not in log


def test_without_webhooks_open_pull_requests_are_polled(service: Any, app_env: dict[str, str],
                                                        gitea: GiteaEmulator, config_repo: WorkRepo) -> None:
    env = {**provider_env(app_env, "gitea", gitea.api_url), "PREVIEWS": "true", "SYNC_INTERVAL": "1"}
    svc = service(env)  # REGISTER_WEBHOOK=false: no hook, so the open pull requests are listed
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    gitea.max_page_size = 1  # the list is followed across pages (Link: rel="next")
    branch(config_repo, "first", {"pipes/first.conf.json": entity_json(pipe("first"))})
    head = branch(config_repo, "polled", {"pipes/polled.conf.json": entity_json(pipe("polled"))})
    gitea.pulls.open(REPO, "first", "master")
    pull = gitea.pulls.open(REPO, "polled", "master")
    assert gitea.sent == []  # no hook: nothing delivered
    shown = preview_at(svc, pull.number, head, state="success")
    assert "+ pipe polled" in shown["plan"]
    wait_for(lambda: our_comments(gitea, pull.number), what="the preview comment")
    closed = httpx.patch(f"{gitea.api_url}/repos/{REPO}/pulls/{pull.number}", json={"state": "closed"},
                         headers={"Authorization": f"token {GIT_TOKEN}"})
    assert closed.status_code == 201 and closed.json()["state"] == "closed"
    wait_for(lambda: pull.number not in previews(svc), what="the closed pull request's preview dropped")
