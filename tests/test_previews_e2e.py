"""Pull-request previews end to end: `autodeployer run` as a process, the GitHub emulator sending signed
`pull_request` deliveries, the loopback Git server serving refs/pull/N/merge, the Sesam emulator."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, WEBHOOK_SECRET, entity_json, free_port, history_rows, pipe, stripped, wait_for

MARKER = "<!-- autodeployer:plan app=node -->"


@pytest.fixture
def preview_env(app_env: dict[str, str], github: GitHubEmulator) -> dict[str, str]:
    """Polling effectively off (1 h): only webhooks trigger syncs and previews after start-up."""
    return {**app_env, "SYNC_INTERVAL": "3600", "GITHUB_API_URL": github.url,  # type: ignore[attr-defined]
            "WEBHOOK_SECRET": WEBHOOK_SECRET, "HEAD_CHECK": "git", "PREVIEWS": "true"}


def start(service: Any, env: dict[str, str], github: GitHubEmulator) -> Any:
    port = free_port()
    svc = service({**env, "PORT": str(port), "PUBLIC_URL": f"http://127.0.0.1:{port}"})
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    wait_for(lambda: any("pull_request" in h["events"] for h in github.hooks("acme", "config")),
             what="hook with pull_request events")
    return svc


def gh_api(github: GitHubEmulator, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    answer = httpx.request(method, github.url + path, json=body,  # type: ignore[attr-defined]
                           headers={"Authorization": f"Bearer {GIT_TOKEN}"}, timeout=20)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def branch(repo: WorkRepo, name: str, files: dict[str, str | None], base: str = "master") -> str:
    repo.git("checkout", "-q", "-B", name, base)
    repo.write(files)  # type: ignore[arg-type]
    sha = repo.commit(f"change on {name}")
    repo.push(name, force=True)
    repo.git("checkout", "-q", "master")
    return sha


def push_to(repo: WorkRepo, name: str, files: dict[str, str | None]) -> str:
    repo.git("checkout", "-q", name)
    repo.write(files)  # type: ignore[arg-type]
    sha = repo.commit(f"more on {name}")
    repo.push(name)
    repo.git("checkout", "-q", "master")
    return sha


def previews(svc: Any) -> dict[int, dict[str, Any]]:
    answer = httpx.get(svc.url + "/api/apps/node/previews").json()
    return {p["number"]: p for p in answer["previews"]}


def preview_at(svc: Any, number: int, head: str, timeout_s: float = 20, **expected: Any) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        found = previews(svc).get(number)
        done = found and found["planned_at"] and (found["published_at"] or 0) >= found["planned_at"]
        if done and found["head_sha"] == head and all(
                found[k] == v for k, v in expected.items()):
            return found
        return None

    return wait_for(ready, timeout=timeout_s, what=f"preview of #{number} at {head[:12]} {expected}")  # type: ignore[no-any-return]


def our_comments(github: GitHubEmulator, number: int) -> list[Any]:
    return [c for c in github.comments("acme", "config", number) if MARKER in c.body]


def plan_status(github: GitHubEmulator, sha: str) -> dict[str, Any] | None:
    found = [s for s in github.statuses("acme", "config", sha) if s["context"] == "autodeployer/node/plan"]
    return found[-1] if found else None


def test_preview_comment_status_merge_and_replan(service: Any, preview_env: dict[str, str], github: GitHubEmulator,
                                                 config_repo: WorkRepo, sesam: SesamEmulator, state_dir: Path,
                                                 tmp_path: Path) -> None:
    svc = start(service, preview_env, github)
    puts = sesam.put_count
    live = config_repo.head

    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "fresh", "head": "feature", "base": "master"})
    first = preview_at(svc, 1, head, state="success")
    assert first["live_revision"] == live
    assert "+ pipe fresh" in first["plan"] and "orders" not in first["plan"]
    wait_for(lambda: plan_status(github, head), what="plan status")
    assert plan_status(github, head)["state"] == "success"  # type: ignore[index]
    [comment] = wait_for(lambda: our_comments(github, 1), what="the preview comment")
    assert "+ pipe fresh" in comment.body and "<details>" in comment.body and live[:12] in comment.body

    # A broken file: the same comment is edited, the status names the file.
    broken = push_to(config_repo, "feature", {"pipes/fresh.conf.json": "{"})
    github.pull_pushed("acme", "config", 1)
    refused = preview_at(svc, 1, broken, state="failure")
    assert "fresh.conf.json" in refused["reason"]
    status = wait_for(lambda: plan_status(github, broken), what="failure status")
    assert status["state"] == "failure" and "fresh.conf.json" in status["description"]
    wait_for(lambda: "fresh.conf.json" in our_comments(github, 1)[0].body, what="comment updated")
    assert [c.id for c in our_comments(github, 1)] == [comment.id]

    # Fixed again; a second PR opened meanwhile is planned against the same live state.
    fixed = push_to(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh", dataset="crm"))})
    github.pull_pushed("acme", "config", 1)
    shown = preview_at(svc, 1, fixed, state="success")
    second_head = branch(config_repo, "second", {"pipes/other.conf.json": entity_json(pipe("other"))})
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "other", "head": "second", "base": "master"})
    second = preview_at(svc, 2, second_head, state="success")
    assert second["live_revision"] == live and "+ pipe other" in second["plan"]
    assert sesam.put_count == puts  # previews never write to the target
    page = httpx.get(svc.url + "/apps/node").text
    assert "Pull-request previews" in page and "#2 · 1 added" in page
    assert f"planned against live revision <code>{live[:7]}</code>" in page
    full = httpx.get(svc.url + "/apps/node/previews/2")
    assert full.status_code == 200 and "+ pipe other" in full.text
    assert httpx.get(svc.url + "/apps/node/previews/99").status_code == 404

    # Merge: the app deploys exactly the commit and the plan the preview showed.
    merged = gh_api(github, "PUT", "/repos/acme/config/pulls/1/merge", {})["sha"]
    assert merged == shown["revision"]
    github.push("acme", "config", "refs/heads/master", live, merged)
    wait_for(lambda: "fresh" in stripped(sesam.entities()), what="the merge deployed")
    [row] = wait_for(lambda: [r for r in history_rows(state_dir)
                              if r["revision"] == merged and r["result"] != "running"], what="the merge's history row")
    assert row["result"] == "synced" and row["diff"] == shown["plan"]
    assert stripped(sesam.entities())["fresh"]["source"]["dataset"] == "crm"
    wait_for(lambda: 1 not in previews(svc), what="merged PR's preview dropped")

    # The second PR is re-planned against the new live state: its plan no longer removes "fresh".
    replanned = preview_at(svc, 2, second_head, live_revision=merged)
    assert "+ pipe other" in replanned["plan"] and "fresh" not in replanned["plan"]
    assert [c.body.count(MARKER) for c in github.comments("acme", "config", 2)] == [1]

    # A fork's pull request is not planned by default.
    fork_bare = tmp_path / "git" / "forker" / "config.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(config_repo.bare_path), str(fork_bare)], check=True)
    fork = WorkRepo.create(fork_bare, tmp_path / "fork-work")
    fork_head = branch(fork, "evil", {"pipes/evil.conf.json": entity_json(pipe("evil"))})
    github.add_repo("forker", "config", default_branch="master", git_dir=fork_bare)
    start_at = len(github.deliveries)
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "evil", "head": "forker:evil", "base": "master"})
    delivery = github.wait_for_delivery("pull_request", start=start_at, timeout=10)
    assert delivery.status_code == 202 and b"fork" in delivery.response_body
    time.sleep(0.5)
    assert 3 not in previews(svc) and not github.comments("acme", "config", 3)
    assert plan_status(github, fork_head) is None


def test_bad_deliveries_and_comment_failures_never_touch_the_deploy(
        service: Any, preview_env: dict[str, str], github: GitHubEmulator, config_repo: WorkRepo,
        sesam: SesamEmulator, state_dir: Path) -> None:
    svc = start(service, preview_env, github)
    hook = svc.url + "/webhook"
    live = config_repo.head
    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    fake = {"action": "opened", "number": 9, "repository": {"full_name": "acme/config"},
            "pull_request": {"number": 9, "state": "open", "head": {"sha": head, "ref": "feature",
                                                                    "repo": {"full_name": "acme/config"}},
                             "base": {"ref": "master", "sha": live}}}
    assert github.deliver_raw(hook, "pull_request", fake, "not-the-secret").status_code == 401
    assert github.deliver_raw(hook, "pull_request", fake, None).status_code == 401
    bad = github.deliver_raw(hook, "pull_request", {"action": "opened"}, WEBHOOK_SECRET)
    assert bad.status_code == 400 and b"pull_request" in bad.response_body

    # A PR into another branch is ignored.
    branch(config_repo, "develop", {"README.md": "develop\n"})
    start_at = len(github.deliveries)
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "dev", "head": "feature", "base": "develop"})
    other = github.wait_for_delivery("pull_request", start=start_at, timeout=10)
    assert other.status_code == 202 and json.loads(other.response_body)["result"] == "ignored"

    # Comment API failures (403, 422, 500) are recorded on the preview; deploys go on.
    github.fail_comments("acme", "config", 403)
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "fresh", "head": "feature", "base": "master"})
    failed = preview_at(svc, 2, head, state="success")
    assert failed["comment_error"] and "403" in failed["comment_error"] and not our_comments(github, 2)
    assert plan_status(github, head)["state"] == "success"  # type: ignore[index]
    for code in (422, 500):
        github.fail_comments("acme", "config", code)
        newer = push_to(config_repo, "feature", {f"pipes/p{code}.conf.json": entity_json(pipe(f"p{code}"))})
        github.pull_pushed("acme", "config", 2)
        seen = preview_at(svc, 2, newer)
        assert str(code) in (seen["comment_error"] or ""), seen
        config_repo.write({f"pipes/main{code}.conf.json": entity_json(pipe(f"main{code}"))})
        before = config_repo.head
        after = config_repo.commit(f"main {code}")
        config_repo.push()
        github.push("acme", "config", "refs/heads/master", before, after)
        wait_for(lambda code=code: f"main{code}" in stripped(sesam.entities()), what=f"deploy during {code}")
        preview_at(svc, 2, newer, live_revision=after)  # the deploy's re-plan is done before the next fault
    wait_for(lambda: all(r["result"] == "synced" for r in history_rows(state_dir)), what="every sync recorded")
    # The next push with GitHub answering again: one comment, created now.
    last = push_to(config_repo, "feature", {"pipes/last.conf.json": entity_json(pipe("last"))})
    github.pull_pushed("acme", "config", 2)
    ok = preview_at(svc, 2, last, comment_error=None)
    assert len(our_comments(github, 2)) == 1 and ok["comment_id"] == our_comments(github, 2)[0].id

    # A closed PR: its preview is dropped.
    gh_api(github, "PATCH", "/repos/acme/config/pulls/2", {"state": "closed"})
    wait_for(lambda: 2 not in previews(svc), what="closed PR's preview dropped")
    page = httpx.get(svc.url + "/apps/node").text
    assert "Pull-request previews" not in page
    assert WEBHOOK_SECRET not in svc.log() and GIT_TOKEN not in svc.log()


def test_polling_fallback_without_webhooks_costs_304s(service: Any, preview_env: dict[str, str],
                                                      github: GitHubEmulator, config_repo: WorkRepo) -> None:
    """No PUBLIC_URL: no hook is registered, open PRs are listed on the poll interval with If-None-Match."""
    svc = service({**preview_env, "SYNC_INTERVAL": "1"})
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "fresh", "head": "feature", "base": "master"})
    found = preview_at(svc, 1, head, state="success")
    assert "+ pipe fresh" in found["plan"]
    wait_for(lambda: our_comments(github, 1), what="comment from the poll")
    time.sleep(2.5)
    lists = [r for r in github.requests if r.method == "GET" and r.path == "/repos/acme/config/pulls"]
    assert len(lists) >= 3 and lists[-1].status == 304 and lists[-2].status == 304
    assert any(r.headers.get("if-none-match") for r in lists)
    newer = push_to(config_repo, "feature", {"pipes/fresh.conf.json": "{"})
    preview_at(svc, 1, newer, state="failure")  # a new head changes the listing: planned again
    gh_api(github, "PATCH", "/repos/acme/config/pulls/1", {"state": "closed"})
    wait_for(lambda: 1 not in previews(svc), what="closed PR dropped by the poll")


def test_a_slow_preview_never_delays_a_deploy_and_pushes_coalesce(
        service: Any, preview_env: dict[str, str], github: GitHubEmulator, config_repo: WorkRepo,
        sesam: SesamEmulator) -> None:
    svc = start(service, preview_env, github)
    github.set_delay(3.0, path_prefix="/repos/acme/config/pulls/1")  # the preview's read of the PR is slow
    branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "fresh", "head": "feature", "base": "master"})
    heads = []
    for k in range(3):  # pushes while the first plan waits on GitHub: they collapse, the newest head wins
        heads.append(push_to(config_repo, "feature", {f"pipes/n{k}.conf.json": entity_json(pipe(f"n{k}"))}))
        github.pull_pushed("acme", "config", 1)

    before = config_repo.head
    config_repo.write({"pipes/urgent.conf.json": entity_json(pipe("urgent"))})
    after = config_repo.commit("urgent fix")
    config_repo.push()
    started = time.monotonic()
    github.push("acme", "config", "refs/heads/master", before, after)
    wait_for(lambda: "urgent" in stripped(sesam.entities()), what="the deploy")
    assert time.monotonic() - started < 2.5  # not behind the 3 s preview

    github.set_delay(0, path_prefix="/repos/acme/config/pulls/1")
    final = preview_at(svc, 1, heads[-1], state="success", live_revision=after, timeout_s=30)
    assert "+ pipe n2" in final["plan"] and "urgent" not in final["plan"]
    assert plan_status(github, heads[1]) is None  # a head overtaken while queued is never planned
    assert len(our_comments(github, 1)) == 1


def test_previews_outlive_a_restart_and_the_next_deploy_replans_them(
        service: Any, preview_env: dict[str, str], github: GitHubEmulator, config_repo: WorkRepo) -> None:
    """Previews are kept in the store: a restarted service shows the planned preview at once (no new delivery),
    a deploy after the restart plans it again against the new live state, editing the same comment, and a
    closed pull request's preview is deleted from the store (gone after the next restart too)."""
    svc = start(service, preview_env, github)
    head = branch(config_repo, "feature", {"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": "fresh", "head": "feature", "base": "master"})
    before = preview_at(svc, 1, head, state="success")
    assert svc.stop() == 0

    svc = start(service, preview_env, github)
    kept = previews(svc).get(1)
    assert kept is not None, "the preview is gone after a restart"
    assert (kept["planned_at"], kept["plan"], kept["comment_id"]) == (before["planned_at"], before["plan"],
                                                                       before["comment_id"])
    page = httpx.get(f"{svc.url}/apps/node/previews/1", timeout=10)
    assert page.status_code == 200 and "fresh" in page.text

    # a deploy changes the live state: the kept preview is planned again, its comment edited in place
    live = config_repo.head
    config_repo.write({"pipes/other.conf.json": entity_json(pipe("other"))})
    config_repo.commit("other")
    config_repo.push()
    github.push("acme", "config", "refs/heads/master", live, config_repo.head)
    wait_for(lambda: (p := previews(svc).get(1)) and (p["planned_at"] or 0) > before["planned_at"]
             and (p["published_at"] or 0) >= p["planned_at"], what="the kept preview re-planned after a deploy")
    assert len(our_comments(github, 1)) == 1

    gh_api(github, "PATCH", "/repos/acme/config/pulls/1", {"state": "closed"})
    wait_for(lambda: 1 not in previews(svc), what="the closed PR's preview dropped")
    assert svc.stop() == 0
    svc = start(service, preview_env, github)
    assert 1 not in previews(svc)
