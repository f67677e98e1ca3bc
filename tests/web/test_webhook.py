"""Push-to-deploy end to end: `autodeployer run` as a process, GitHub emulator deliveries, real Git."""

from __future__ import annotations

import itertools
import json
import stat
import time
from pathlib import Path

import httpx
import pytest

from autodeployer.scheduling import SETTLE
from autodeployer.web.webhook import sign, signature_valid
from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import WEBHOOK_SECRET, entity_json, history_rows, pipe, run_cli, stripped, wait_for

ZERO = "0" * 40


@pytest.fixture
def hook_env(app_env: dict[str, str], github: GitHubEmulator) -> dict[str, str]:
    """Polling effectively off (1 h), so only webhooks can trigger a sync after start-up."""
    return {
        **app_env,
        "SYNC_INTERVAL": "3600",
        "GITHUB_API_URL": github.url,  # type: ignore[attr-defined]
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "HEAD_CHECK": "git",
    }


def start(service, env: dict[str, str], public: bool = True):
    """Start the service with PUBLIC_URL pointing at itself, and wait for its start-up sync."""
    from ..helpers import free_port

    port = free_port()
    env = {**env, "PORT": str(port)}
    if public:
        env["PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    return svc


def our_hooks(github: GitHubEmulator, url: str) -> list[dict]:
    return [h for h in github.hooks("acme", "config") if h["config"]["url"] == url]


def commit(repo: WorkRepo, name: str) -> tuple[str, str]:
    before = repo.head
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push()
    return before, repo.head


def webhook_rows(state_dir: Path) -> list:
    return [r for r in history_rows(state_dir) if r["trigger"] == "webhook"]


def test_published_signature_vector():
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign("It's a Secret to Everybody", b"Hello, World!") == expected
    assert signature_valid(expected, b"Hello, World!", ["It's a Secret to Everybody"])
    assert not signature_valid(expected, b"Hello, World?", ["It's a Secret to Everybody"])
    assert not signature_valid("sha256=", b"Hello, World!", ["It's a Secret to Everybody"])
    assert not signature_valid(expected.upper(), b"Hello, World!", ["It's a Secret to Everybody"])
    assert not signature_valid(None, b"", ["x"])


def test_signed_push_syncs_exactly_once(service, hook_env, github, config_repo, sesam: SesamEmulator, state_dir):
    svc = start(service, hook_env)
    hook_url = svc.url + "/webhook"
    wait_for(lambda: our_hooks(github, hook_url), what="hook registration")
    assert our_hooks(github, hook_url)[0]["config"]["secret"] == WEBHOOK_SECRET
    puts = sesam.put_count
    before, after = commit(config_repo, "fresh")

    started = time.monotonic()
    [delivery] = github.push("acme", "config", "refs/heads/master", before, after)
    assert delivery.status_code == 202
    assert delivery.duration < 0.5  # the answer never waits for the sync
    wait_for(lambda: "fresh" in stripped(sesam.entities()), what="pipe on the node")
    latency = time.monotonic() - started
    time.sleep(0.5)
    assert sesam.put_count == puts + 1
    rows = webhook_rows(state_dir)
    assert [r["result"] for r in rows] == ["synced"] and rows[0]["revision"] == after
    assert latency < 5


def test_deliveries_that_must_trigger_nothing(service, hook_env, github, config_repo, sesam, state_dir):
    svc = start(service, hook_env)
    url = svc.url + "/webhook"
    before, after = commit(config_repo, "never")
    payload = github.push_payload("acme", "config", "refs/heads/master", before, after)
    puts = sesam.put_count

    cases = {
        "unsigned": github.deliver_raw(url, "push", payload, None),
        "missing signature": github.deliver_raw(url, "push", payload, WEBHOOK_SECRET, omit_signature=True),
        "wrong signature": github.deliver_raw(url, "push", payload, WEBHOOK_SECRET,
                                              signature_override="sha256=" + "0" * 64),
        "wrong secret": github.deliver_raw(url, "push", payload, "not-the-secret-at-all"),
        "sha1 only": github.deliver_raw(url, "push", payload, WEBHOOK_SECRET, signature_override="sha1=abc"),
    }
    for name, record in cases.items():
        assert record.status_code == 401, name

    other_branch = github.push_payload("acme", "config", "refs/heads/feature", before, after)
    tag = github.push_payload("acme", "config", "refs/tags/v1", ZERO, after)
    deletion = github.push_payload("acme", "config", "refs/heads/master", after, ZERO)
    other_repo = dict(payload, repository={**payload["repository"], "full_name": "acme/other"})
    assert github.deliver_raw(url, "push", other_branch, WEBHOOK_SECRET).status_code == 202
    assert github.deliver_raw(url, "push", tag, WEBHOOK_SECRET).status_code == 202
    assert github.deliver_raw(url, "push", deletion, WEBHOOK_SECRET).status_code == 202
    assert github.deliver_raw(url, "push", other_repo, WEBHOOK_SECRET).status_code == 202
    assert github.deliver_raw(url, "ping", {"zen": "hi", "hook_id": 1}, WEBHOOK_SECRET).status_code == 200
    assert github.deliver_raw(url, "issues", {"action": "opened"}, WEBHOOK_SECRET).status_code == 204
    time.sleep(1.0)
    assert sesam.put_count == puts
    assert "never" not in stripped(sesam.entities())
    assert webhook_rows(state_dir) == []

    # the same delivery, properly signed, does trigger; a replay of it does not
    first = github.deliver_raw(url, "push", payload, WEBHOOK_SECRET, guid="guid-replay-1")
    assert first.status_code == 202
    wait_for(lambda: "never" in stripped(sesam.entities()), what="signed push applied")
    replay = github.deliver_raw(url, "push", payload, WEBHOOK_SECRET, guid="guid-replay-1")
    assert replay.status_code == 200 and b"duplicate" in replay.response_body
    time.sleep(0.5)
    assert len(webhook_rows(state_dir)) == 1


def test_form_encoded_delivery_and_bad_bodies(service, hook_env, github, config_repo, sesam):
    svc = start(service, hook_env)
    url = svc.url + "/dploy"  # the old observer's path answers too
    before, after = commit(config_repo, "viaform")
    payload = github.push_payload("acme", "config", "refs/heads/master", before, after)
    record = github.deliver_raw(url, "push", payload, WEBHOOK_SECRET, content_type="form")
    assert record.status_code == 202
    wait_for(lambda: "viaform" in stripped(sesam.entities()), what="form delivery applied")

    malformed = b'{"ref": "refs/heads/master", '
    response = httpx.post(url, content=malformed, headers={
        "X-GitHub-Event": "push", "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, malformed)})
    assert response.status_code == 400
    huge = b"x" * (25 * 1024 * 1024 + 1)
    response = httpx.post(url, content=huge, headers={"X-GitHub-Event": "push", "Content-Type": "application/json",
                                                      "X-Hub-Signature-256": sign(WEBHOOK_SECRET, huge)}, timeout=30)
    assert response.status_code == 413
    xml = b"<push/>"
    response = httpx.post(url, content=xml, headers={"X-GitHub-Event": "push", "Content-Type": "text/xml",
                                                     "X-Hub-Signature-256": sign(WEBHOOK_SECRET, xml)})
    assert response.status_code == 415
    assert httpx.get(svc.url + "/healthz").status_code == 200


def test_chunked_deliveries_are_verified_over_the_whole_body(service, hook_env, github, config_repo, sesam):
    """A body without Content-Length is read in chunks and its signature checked over all of them: the
    genuine one syncs, one with a byte changed in its last chunk is 401 and triggers nothing."""
    svc = start(service, hook_env)
    url = svc.url + "/webhook"
    before, after = commit(config_repo, "chunked")
    body = json.dumps(github.push_payload("acme", "config", "refs/heads/master", before, after)).encode()
    body += b" " * 200_000  # several chunks on the wire
    headers = {"X-GitHub-Event": "push", "Content-Type": "application/json",
               "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body)}

    def chunks(data: bytes):
        for start in range(0, len(data), 16_384):
            yield data[start:start + 16_384]

    puts = sesam.put_count
    tampered = body[:-1] + b"\t"
    response = httpx.post(url, content=chunks(tampered), headers=headers)
    assert response.status_code == 401
    time.sleep(0.5)
    assert sesam.put_count == puts and "chunked" not in stripped(sesam.entities())
    response = httpx.post(url, content=chunks(body), headers=headers)
    assert response.status_code == 202, response.text
    wait_for(lambda: "chunked" in stripped(sesam.entities()), what="chunked delivery applied")


def test_burst_of_pushes_coalesces(service, hook_env, github, config_repo, sesam, state_dir):
    svc = start(service, hook_env)
    wait_for(lambda: our_hooks(github, svc.url + "/webhook"), what="hook registration")
    puts = sesam.put_count
    # The commits reach the server first, then their 20 deliveries come back to back (as GitHub sends
    # them after a push of many commits in a row): a slow machine cannot spread the burst out.
    shas = [config_repo.head]
    for i in range(20):
        config_repo.write({f"pipes/burst-{i:02d}.conf.json": entity_json(pipe(f"burst-{i:02d}"))})
        config_repo.commit(f"add burst-{i:02d}")
        shas.append(config_repo.head)
    config_repo.push()
    began = time.monotonic()
    sent = []
    for before, after in itertools.pairwise(shas):
        github.push("acme", "config", "refs/heads/master", before, after)
        sent.append(time.monotonic())
    spent = time.monotonic() - began
    # A burst ends when deliveries have been quiet for SETTLE: on a machine so loaded that one delivery took
    # longer than that, the worker rightly saw two bursts (each may cost one more sync, never an extra apply).
    pauses = sum(1 for a, b in itertools.pairwise(sent) if b - a > SETTLE)
    wait_for(lambda: "burst-19" in stripped(sesam.entities()), timeout=30, what="last commit applied")
    time.sleep(1.0)
    applies = sesam.put_count - puts
    assert 1 <= applies <= 2, f"{applies} applies for 20 pushes in {spent:.2f} s"
    assert {f"burst-{i:02d}" for i in range(20)} <= set(stripped(sesam.entities()))
    rows = webhook_rows(state_dir)
    assert rows[-1]["revision"] == config_repo.head
    assert 1 <= len(rows) <= 2 + pauses, (  # 20 deliveries, at most 2 syncs per burst
        [(r["revision"][:7], r["result"]) for r in rows], f"{spent:.2f} s, {pauses} pauses over {SETTLE} s")


def test_hook_registration_is_idempotent_across_restarts_and_pages(service, hook_env, github: GitHubEmulator):
    api = httpx.Client(base_url=github.url, headers={"Authorization": f"Bearer {hook_env['GITHUB_TOKEN']}"})  # type: ignore[attr-defined]
    for i in range(130):  # more than one page of someone else's hooks
        created = api.post("/repos/acme/config/hooks", json={"config": {"url": f"http://other.example/{i}"},
                                                             "events": ["push"], "active": False})
        assert created.status_code == 201
    from ..helpers import free_port

    port = free_port()
    env = {**hook_env, "PORT": str(port), "PUBLIC_URL": f"http://127.0.0.1:{port}"}
    for _ in range(2):
        svc = service(env)
        wait_for(lambda: our_hooks(github, f"http://127.0.0.1:{port}/webhook"), what="registration")
        time.sleep(0.5)
        svc.stop()
    assert len(our_hooks(github, f"http://127.0.0.1:{port}/webhook")) == 1
    assert len(github.hooks("acme", "config")) == 131

    listed = run_cli(env, "hooks", "list")
    assert listed.returncode == 0
    assert listed.stdout.count("\n") == 131 and "* acme/config" in listed.stdout
    again = run_cli(env, "hooks", "register")
    assert again.returncode == 0 and "unchanged" in again.stdout
    removed = run_cli(env, "hooks", "remove")
    assert removed.returncode == 0 and "removed hook" in removed.stdout
    assert our_hooks(github, f"http://127.0.0.1:{port}/webhook") == []
    assert len(github.hooks("acme", "config")) == 130  # everyone else's hooks untouched


def test_generated_secret_persists_owner_only(service, hook_env, github, state_dir):
    env = {k: v for k, v in hook_env.items() if k != "WEBHOOK_SECRET"}
    svc = start(service, env)
    secret_file = state_dir / "secrets" / "webhook-secret"
    assert secret_file.exists()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 64
    wait_for(lambda: our_hooks(github, svc.url + "/webhook"), what="registration")
    assert our_hooks(github, svc.url + "/webhook")[0]["config"]["secret"] == secret
    svc.stop()
    svc2 = start(service, {**env, "PORT": str(svc.port)}, public=False)
    assert secret_file.read_text().strip() == secret
    assert secret not in svc.log() + svc2.log()


def test_commit_statuses_posted_in_order(service, hook_env, github, config_repo, sesam):
    svc = start(service, {**hook_env, "SYNC_INTERVAL": "0.3"})
    _, good = commit(config_repo, "statusgood")
    wait_for(lambda: any(s["state"] == "success" for s in github.statuses("acme", "config", good)),
             what="success status")
    states = [s["state"] for s in github.statuses("acme", "config", good)]
    assert states == ["pending", "success"]
    assert github.statuses("acme", "config", good)[0]["context"] == "autodeployer/node"

    config_repo.write({"pipes/statusgood.conf.json": "{ not json"})
    config_repo.commit("break it")
    config_repo.push()
    bad = config_repo.head
    wait_for(lambda: any(s["state"] != "pending" for s in github.statuses("acme", "config", bad)),
             what="failure status")
    assert [s["state"] for s in github.statuses("acme", "config", bad)] == ["pending", "failure"]
    status = github.statuses("acme", "config", bad)[-1]
    assert "refused" in status["description"]
    assert status["target_url"] == svc.url + "/apps/node"


def test_status_failure_never_fails_the_sync(service, hook_env, github, config_repo, sesam, state_dir):
    github.fail_next(500, times=1000)
    svc = start(service, {**hook_env, "SYNC_INTERVAL": "0.3"}, public=False)
    commit(config_repo, "despite")
    wait_for(lambda: "despite" in stripped(sesam.entities()), what="sync despite GitHub errors")
    assert "commit status not posted" in svc.log()


def test_github_down_at_start_does_not_stop_the_service(service, hook_env, config_repo, sesam):
    from ..helpers import free_port

    env = {**hook_env, "GITHUB_API_URL": f"http://127.0.0.1:{free_port()}", "SYNC_INTERVAL": "0.3"}
    svc = start(service, env)
    commit(config_repo, "offline")
    wait_for(lambda: "offline" in stripped(sesam.entities()), what="polling sync")
    wait_for(lambda: "webhook registration failed; will retry" in svc.log(), what="retry logged")
    assert svc.proc.poll() is None


def test_api_head_check_uses_etags(service, hook_env, github: GitHubEmulator, config_repo, sesam):
    github.set_head("acme", "config", "master", config_repo.head)
    env = {**hook_env, "HEAD_CHECK": "api", "SYNC_INTERVAL": "0.2"}
    svc = start(service, env, public=False)
    time.sleep(1.5)
    heads = [r for r in github.requests if r.path.startswith("/repos/acme/config/commits/")]
    assert len(heads) >= 4
    assert sum(1 for r in heads if r.status == 304) >= len(heads) - 2  # idle polls are free 304s
    _, after = commit(config_repo, "viaapi")
    github.set_head("acme", "config", "master", after)
    wait_for(lambda: "viaapi" in stripped(sesam.entities()), what="change seen through the API head")
    assert svc.proc.poll() is None
