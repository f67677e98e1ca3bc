"""Merge-request previews on GitLab end to end: `autodeployer run` as a process registering its hook
(with merge request events), the GitLab emulator sending `Merge Request Hook` deliveries with the hook's
X-Gitlab-Token, the loopback Git server serving refs/merge-requests/<iid>/merge, the Sesam emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.gitlab import GitLabEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, entity_json, pipe, wait_for
from .providers.conftest import provider_env
from .test_previews_e2e import branch, preview_at, previews, push_to

PROJECT = "acme/config"
MARKER = "<!-- autodeployer:plan app=node -->"


@pytest.fixture
def gitlab(tmp_path: Path) -> Iterator[GitLabEmulator]:
    emulator = GitLabEmulator(token=GIT_TOKEN)
    emulator.add_repo(PROJECT, default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    emulator.delivery_timeout = 5
    with emulator.serve():
        yield emulator


def start(service: Any, app_env: dict[str, str], gitlab: GitLabEmulator) -> Any:
    env = {**provider_env(app_env, "gitlab", gitlab.api_url), "PREVIEWS": "true", "REGISTER_WEBHOOK": "true"}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    wait_for(lambda: any(h["merge_requests_events"] for h in gitlab.hooks(PROJECT)),
             what="hook with merge request events")
    return svc


def our_notes(gitlab: GitLabEmulator, iid: int) -> list[Any]:
    return [n for n in gitlab.notes(PROJECT, iid) if MARKER in n.body]


def plan_status(gitlab: GitLabEmulator, sha: str) -> dict[str, Any] | None:
    found = [s for s in gitlab.statuses(PROJECT, sha) if s["name"] == "autodeployer/node/plan"]
    return found[-1] if found else None


def test_merge_request_note_status_update_and_refusals(service: Any, app_env: dict[str, str], gitlab: GitLabEmulator,
                                                        config_repo: WorkRepo, sesam: SesamEmulator) -> None:
    svc = start(service, app_env, gitlab)
    puts, live = sesam.put_count, config_repo.head
    api = httpx.Client(base_url=gitlab.api_url, headers={"PRIVATE-TOKEN": GIT_TOKEN}, trust_env=False)

    # A good change: one note with the diff, a success status on the head; the merge result is planned.
    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    gitlab.max_page_size = 2  # the note is found again across pages
    mr = gitlab.open_merge_request(PROJECT, "feature", "master", deliver=False)
    for index in range(3):
        assert api.post(f"/projects/acme%2Fconfig/merge_requests/{mr.iid}/notes",
                        json={"body": f"review {index}"}).status_code == 201
    [opened] = gitlab.deliver_merge_request(PROJECT, mr.iid, "open")
    assert opened.status_code == 202 and "preview queued" in opened.response, opened.response
    first = preview_at(svc, mr.iid, head, state="success")
    assert first["revision"] == mr.merge_sha != head and first["live_revision"] == live and first["note"] is None
    assert "+ pipe fresh" in first["plan"]
    assert first["label"] == f"!{mr.iid}" and first["provider"] == "gitlab"  # as GitLab writes it
    page = httpx.get(f"{svc.url}/apps/node/previews/{mr.iid}").text
    assert f"merge request !{mr.iid}" in page and "pull request" not in page
    status = wait_for(lambda: plan_status(gitlab, head), what="plan status")
    assert status["status"] == "success"
    [note] = wait_for(lambda: our_notes(gitlab, mr.iid), what="the preview note")
    assert "+ pipe fresh" in note.body and "<details>" in note.body and live[:12] in note.body

    # A broken file pushed to the source branch: GitLab sends `update` with oldrev; the same note is edited.
    before = head
    broken = push_to(config_repo, "feature", {"pipes/fresh.conf.json": "{"})
    sent = gitlab.push(PROJECT, "refs/heads/feature", before, broken)
    assert [s.status_code for s in sent] == [202, 202]  # the push (no app follows feature), the MR update
    assert '"oldrev"' in sent[1].body.decode() and "preview queued" in sent[1].response
    refused = preview_at(svc, mr.iid, broken, state="failure")
    assert "fresh.conf.json" in refused["reason"]
    failed = wait_for(lambda: plan_status(gitlab, broken), what="failure status")
    assert failed["status"] == "failed" and "fresh.conf.json" in failed["description"]
    wait_for(lambda: "fresh.conf.json" in our_notes(gitlab, mr.iid)[0].body, what="note updated")
    assert [n.id for n in our_notes(gitlab, mr.iid)] == [note.id]
    assert len(gitlab.notes(PROJECT, mr.iid)) == 4

    # An update without new commits (no oldrev: a title change) changes no plan.
    [retitled] = gitlab.deliver_merge_request(PROJECT, mr.iid, "update")
    assert retitled.status_code == 202 and "without new commits" in retitled.response

    # A merge request into another branch is ignored.
    branch(config_repo, "release", {})
    other_head = branch(config_repo, "hotfix", {"pipes/hot.conf.json": entity_json(pipe("hot"))}, base="release")
    other = gitlab.open_merge_request(PROJECT, "hotfix", "release", deliver=False)
    [into_release] = gitlab.deliver_merge_request(PROJECT, other.iid, "open")
    assert into_release.status_code == 202 and "no app follows acme/config@release" in into_release.response
    assert other.iid not in previews(svc) and plan_status(gitlab, other_head) is None

    # A wrong, empty or missing X-Gitlab-Token: 401, nothing planned.
    planned_at = previews(svc)[mr.iid]["planned_at"]
    for tamper in ("wrong", "empty", "missing"):
        [bad] = gitlab.deliver_merge_request(PROJECT, mr.iid, "reopen", tamper=tamper)  # type: ignore[arg-type]
        assert bad.status_code == 401, (tamper, bad.response)
    assert previews(svc)[mr.iid]["planned_at"] == planned_at

    # Closed: the preview is dropped; nothing was ever written to the target.
    [closed] = gitlab.close_merge_request(PROJECT, mr.iid)
    assert closed.status_code == 202 and "dropped" in closed.response
    assert mr.iid not in previews(svc)
    assert sesam.put_count == puts
    assert GIT_TOKEN not in svc.log()


def test_a_conflicting_merge_request_plans_its_head_and_says_so(service: Any, app_env: dict[str, str],
                                                                gitlab: GitLabEmulator, config_repo: WorkRepo) -> None:
    svc = start(service, app_env, gitlab)
    head = branch(config_repo, "clash", {"pipes/clash.conf.json": entity_json(pipe("clash"))})
    config_repo.write({"pipes/clash.conf.json": entity_json(pipe("clash", dataset="crm"))})  # type: ignore[arg-type]
    config_repo.commit("the same file on master")
    config_repo.push()
    mr = gitlab.open_merge_request(PROJECT, "clash", "master")
    assert mr.merge_sha is None  # GitLab has no merge ref for a conflicting merge request
    shown = preview_at(svc, mr.iid, head)
    assert shown["revision"] == head and "head is planned alone" in shown["note"]
    [note] = wait_for(lambda: our_notes(gitlab, mr.iid), what="the preview note")
    assert "head is planned alone" in note.body and f"Head `{head[:12]}` alone" in note.body


def test_without_webhooks_open_merge_requests_are_polled(service: Any, app_env: dict[str, str],
                                                         gitlab: GitLabEmulator, config_repo: WorkRepo) -> None:
    env = {**provider_env(app_env, "gitlab", gitlab.api_url), "PREVIEWS": "true", "SYNC_INTERVAL": "1"}
    svc = service(env)  # REGISTER_WEBHOOK=false: no hook, so the open merge requests are listed
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    head = branch(config_repo, "polled", {"pipes/polled.conf.json": entity_json(pipe("polled"))})
    mr = gitlab.open_merge_request(PROJECT, "polled", "master")
    assert gitlab.sent == []  # no hook: nothing delivered
    shown = preview_at(svc, mr.iid, head, state="success")
    assert "+ pipe polled" in shown["plan"]
    wait_for(lambda: our_notes(gitlab, mr.iid), what="the preview note")
    closed = httpx.put(f"{gitlab.api_url}/projects/acme%2Fconfig/merge_requests/{mr.iid}",
                       json={"state_event": "close"}, headers={"PRIVATE-TOKEN": GIT_TOKEN})
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    wait_for(lambda: mr.iid not in previews(svc), what="the closed merge request's preview dropped")
