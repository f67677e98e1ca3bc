"""Pull-request previews on Bitbucket Server / Data Center end to end: `autodeployer run` as a process
registering its webhook (with the `pr:*` events), the Bitbucket emulator sending signed `pr:*`
deliveries, the loopback Git server serving refs/pull-requests/<id>/merge and /from, the Sesam
emulator as the target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.bitbucket import BitbucketEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, WEBHOOK_SECRET, entity_json, pipe, wait_for
from .providers.conftest import provider_env
from .test_previews_e2e import branch, preview_at, previews, push_to

REPO = "ACME/config"
MARKER = "<!-- autodeployer:plan app=node -->"
PULLS = "/rest/api/1.0/projects/ACME/repos/config/pull-requests"


@pytest.fixture
def bitbucket(tmp_path: Path) -> Iterator[BitbucketEmulator]:
    emulator = BitbucketEmulator(token=GIT_TOKEN)
    emulator.add_repo(REPO, default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    emulator.delivery_timeout = 5
    with emulator.serve():
        yield emulator


def start(service: Any, app_env: dict[str, str], bitbucket: BitbucketEmulator) -> Any:
    env = {**provider_env(app_env, "bitbucket", bitbucket.api_url), "PREVIEWS": "true", "REGISTER_WEBHOOK": "true"}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    wait_for(lambda: any("pr:from_ref_updated" in h["events"] for h in bitbucket.hooks(REPO)),
             what="webhook with pull request events")
    return svc


def our_comments(bitbucket: BitbucketEmulator, number: int) -> list[Any]:
    return [c for c in bitbucket.pulls.comments(REPO, number) if MARKER in c.body]


def plan_status(bitbucket: BitbucketEmulator, sha: str) -> dict[str, Any] | None:
    found = [s for s in bitbucket.build_statuses(sha) if s["key"] == "autodeployer/node/plan"]
    return found[-1] if found else None


def test_pull_request_comment_status_update_and_refusals(service: Any, app_env: dict[str, str],
                                                         bitbucket: BitbucketEmulator, config_repo: WorkRepo,
                                                         sesam: SesamEmulator) -> None:
    svc = start(service, app_env, bitbucket)
    puts, live = sesam.put_count, config_repo.head
    api = httpx.Client(base_url=bitbucket.api_url, headers={"Authorization": f"Bearer {GIT_TOKEN}"}, trust_env=False)

    # A good change: one comment with the diff, a SUCCESSFUL build status on the head; the merge is planned.
    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    bitbucket.max_page_size = 2  # the comment is found again across pages of activities
    pull = bitbucket.pulls.open(REPO, "feature", "master", deliver=False)
    for index in range(3):
        assert api.post(f"{PULLS}/{pull.number}/comments", json={"text": f"review {index}"}).status_code == 201
    [opened] = bitbucket.pulls.deliver(REPO, pull.number, "pr:opened")
    assert opened.status_code == 202 and "preview queued" in opened.response, opened.response
    first = preview_at(svc, pull.number, head, state="success")
    assert first["revision"] == pull.merge_sha != head and first["live_revision"] == live and first["note"] is None
    assert "+ pipe fresh" in first["plan"]
    status = wait_for(lambda: plan_status(bitbucket, head), what="plan build status")
    assert status["state"] == "SUCCESSFUL"
    [comment] = wait_for(lambda: our_comments(bitbucket, pull.number), what="the preview comment")
    assert "+ pipe fresh" in comment.body and "<details>" in comment.body and live[:12] in comment.body

    # A broken file pushed to the source branch: pr:from_ref_updated; the same comment is edited (PUT with
    # its version) and the status names the file.
    before = head
    broken = push_to(config_repo, "feature", {"pipes/fresh.conf.json": "{"})
    sent = bitbucket.push(REPO, "refs/heads/feature", before, broken)
    assert [s.status_code for s in sent] == [202, 202]  # the push (no app follows feature), the PR update
    assert sent[1].headers["X-Event-Key"] == "pr:from_ref_updated" and "preview queued" in sent[1].response
    refused = preview_at(svc, pull.number, broken, state="failure")
    assert "fresh.conf.json" in refused["reason"]
    failed = wait_for(lambda: plan_status(bitbucket, broken), what="failure status")
    assert failed["state"] == "FAILED" and "fresh.conf.json" in failed["description"]
    wait_for(lambda: "fresh.conf.json" in our_comments(bitbucket, pull.number)[0].body, what="comment updated")
    [edited] = our_comments(bitbucket, pull.number)
    assert edited.id == comment.id and edited.version >= 1
    assert len(bitbucket.pulls.comments(REPO, pull.number)) == 4

    # pr:modified without a new target (a title) changes no plan.
    [retitled] = bitbucket.pulls.deliver(REPO, pull.number, "pr:modified")
    assert retitled.status_code == 202 and "without a new target branch" in retitled.response

    # A pull request into another branch is ignored.
    branch(config_repo, "release", {})
    other_head = branch(config_repo, "hotfix", {"pipes/hot.conf.json": entity_json(pipe("hot"))}, base="release")
    other = bitbucket.pulls.open(REPO, "hotfix", "release", deliver=False)
    [into_release] = bitbucket.pulls.deliver(REPO, other.number, "pr:opened")
    assert into_release.status_code == 202 and "no app follows ACME/config@release" in into_release.response
    assert other.number not in previews(svc) and plan_status(bitbucket, other_head) is None

    # A wrong, empty or missing X-Hub-Signature: 401, nothing planned.
    planned_at = previews(svc)[pull.number]["planned_at"]
    for tamper in ("wrong", "empty", "missing"):
        [bad] = bitbucket.pulls.deliver(REPO, pull.number, "pr:reopened", tamper=tamper)  # type: ignore[arg-type]
        assert bad.status_code == 401, (tamper, bad.response)
    assert previews(svc)[pull.number]["planned_at"] == planned_at

    # Our comment deleted by someone: the next plan writes a new one (GET of the comment answered 404).
    assert api.delete(f"{PULLS}/{pull.number}/comments/{comment.id}?version={edited.version}").status_code == 204
    fixed = push_to(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    bitbucket.push(REPO, "refs/heads/feature", broken, fixed)
    preview_at(svc, pull.number, fixed, state="success")
    [again] = wait_for(lambda: our_comments(bitbucket, pull.number), what="a new preview comment")
    assert again.id != comment.id and "+ pipe fresh" in again.body

    # Declined: the preview is dropped; nothing was ever written to the target; no secret in the log.
    [declined] = bitbucket.pulls.close(REPO, pull.number)
    assert declined.status_code == 202 and "dropped" in declined.response
    assert pull.number not in previews(svc)
    assert sesam.put_count == puts
    log = svc.log()
    assert GIT_TOKEN not in log and WEBHOOK_SECRET not in log


def test_a_conflicting_pull_request_plans_its_source_and_says_so(service: Any, app_env: dict[str, str],
                                                                 bitbucket: BitbucketEmulator,
                                                                 config_repo: WorkRepo) -> None:
    svc = start(service, app_env, bitbucket)
    head = branch(config_repo, "clash", {"pipes/clash.conf.json": entity_json(pipe("clash"))})
    config_repo.write({"pipes/clash.conf.json": entity_json(pipe("clash", dataset="crm"))})  # type: ignore[arg-type]
    config_repo.commit("the same file on master")
    config_repo.push()
    pull = bitbucket.pulls.open(REPO, "clash", "master")
    assert pull.merge_sha is None  # Bitbucket has no merge ref for a conflicting pull request
    shown = preview_at(svc, pull.number, head)
    assert shown["revision"] == head and "head is planned alone" in shown["note"]
    [comment] = wait_for(lambda: our_comments(bitbucket, pull.number), what="the preview comment")
    assert "head is planned alone" in comment.body and f"Head `{head[:12]}` alone" in comment.body


def test_without_webhooks_open_pull_requests_are_polled(service: Any, app_env: dict[str, str],
                                                        bitbucket: BitbucketEmulator, config_repo: WorkRepo) -> None:
    env = {**provider_env(app_env, "bitbucket", bitbucket.api_url), "PREVIEWS": "true", "SYNC_INTERVAL": "1"}
    svc = service(env)  # REGISTER_WEBHOOK=false: no webhook, so the open pull requests are listed
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    head = branch(config_repo, "polled", {"pipes/polled.conf.json": entity_json(pipe("polled"))})
    pull = bitbucket.pulls.open(REPO, "polled", "master")
    assert bitbucket.sent == []
    shown = preview_at(svc, pull.number, head, state="success")
    assert "+ pipe polled" in shown["plan"]
    wait_for(lambda: our_comments(bitbucket, pull.number), what="the preview comment")
    declined = httpx.post(f"{bitbucket.api_url}{PULLS}/{pull.number}/decline?version={pull.version}",
                          headers={"Authorization": f"Bearer {GIT_TOKEN}"})
    assert declined.status_code == 200 and declined.json()["state"] == "DECLINED"
    wait_for(lambda: pull.number not in previews(svc), what="the declined pull request's preview dropped")
