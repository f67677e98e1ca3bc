"""Notifications from `autodeployer run` (a real process) to a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autodeployer.model import Result
from autodeployer.reporters.notify import event_for, is_slack
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import WorkRepo

from .helpers import ADMIN_TOKEN, GIT_TOKEN, base_env, entity_json, free_port, history_rows, pipe, wait_for

NOTIFY_SECRET = "notify-SECRET-8a7b6c5d4e3f"  # the credential part of NOTIFY_URL's path
SLACK_PATH = "/services/T000/B000/XXXX" + NOTIFY_SECRET
BROKEN = {"pipes/broken.conf.json": '{"_id": "broken", '}
PUBLIC_URL = "https://deployer.example.org"


class Receiver:
    """Records every POST; tests choose its answer (status, delay)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.status = 204
        self.delay = 0.0
        self.server = LoopbackServer(Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])]))

    async def handle(self, request: Request) -> Response:
        self.received.append((request.url.path, await request.json()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return Response(status_code=self.status)

    @property
    def url(self) -> str:
        return self.server.url

    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.received]

    def events(self) -> list[str]:
        return [body.get("event", "") for body in self.bodies()]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with rec.server:
        yield rec


def commit(repo: WorkRepo, files: dict[str, str | None], message: str) -> str:
    repo.write(files)
    repo.commit(message)
    repo.push()
    return repo.head


def results(state_dir: Path, result: str) -> list[Any]:
    return [r for r in history_rows(state_dir) if r["result"] == result]


def ready(svc) -> None:
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")


def test_refused_once_not_repeated_then_recovered(service, app_env, config_repo: WorkRepo, state_dir: Path,
                                                  receiver: Receiver):
    svc = service({**app_env, "SYNC_INTERVAL": "0.2", "NOTIFY_URL": f"{receiver.url}/hook/{NOTIFY_SECRET}",
                   "NOTIFY_REPEAT": "3600", "ADMIN_TOKEN": ADMIN_TOKEN, "PUBLIC_URL": PUBLIC_URL,
                   "REGISTER_WEBHOOK": "false"})
    ready(svc)
    bad = commit(config_repo, BROKEN, "broken pipe")
    wait_for(lambda: receiver.received, what="refused notification")
    path, body = receiver.received[0]
    assert path == f"/hook/{NOTIFY_SECRET}"
    assert body["event"] == "refused" and body["result"] == "refused" and body["app"] == "node"
    assert body["revision"] == bad and body["commit_message"] == "broken pipe" and body["target"] == "sesam"
    assert body["error"] == f"configuration at {bad[:12]} is not deployable"
    assert any("broken.conf.json" in p and "invalid JSON" in p for p in body["problems"])
    assert body["url"] == f"{PUBLIC_URL}/apps/node" and body["timestamp"].endswith("+00:00")
    assert body["text"].startswith("node: commit refused at " + bad[:7])

    # the same failure again (a manual retry of the same commit): recorded, not notified again
    answer = httpx.post(svc.url + "/api/apps/node/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 202
    wait_for(lambda: len(results(state_dir, "refused")) == 2, what="second refusal")
    wait_for(lambda: "notification not repeated" in svc.log(), what="repeat suppressed")
    time.sleep(0.5)
    assert receiver.events() == ["refused"]

    fixed = commit(config_repo, {"pipes/broken.conf.json": None}, "remove broken pipe")
    wait_for(lambda: len(receiver.received) == 2, what="recovered notification")
    recovered = receiver.bodies()[1]
    assert recovered["event"] == "recovered" and recovered["result"] in ("synced", "no-change")
    assert recovered["revision"] == fixed and recovered["error"] is None
    time.sleep(1)  # quiet polls and an applied sync are not news with NOTIFY_ON=failures
    extra = commit(config_repo, {"pipes/extra.conf.json": entity_json(pipe("extra"))}, "extra pipe")
    wait_for(lambda: any(r["revision"] == extra for r in results(state_dir, "synced")), what="applied sync")
    time.sleep(0.5)
    assert receiver.events() == ["refused", "recovered"]
    assert NOTIFY_SECRET not in svc.log()


def test_notify_on_all_in_slack_format(service, app_env, config_repo: WorkRepo, state_dir: Path,
                                       receiver: Receiver):
    svc = service({**app_env, "SYNC_INTERVAL": "0.2", "NOTIFY_URL": receiver.url + SLACK_PATH,
                   "NOTIFY_ON": "all", "NOTIFY_REPEAT": "0"})
    ready(svc)
    wait_for(lambda: receiver.received, what="startup sync announced")
    good = commit(config_repo, {"pipes/fresh.conf.json": entity_json(pipe("fresh"))}, "add <fresh> & co")
    wait_for(lambda: len(receiver.received) == 2, what="applied notification")
    for path, body in receiver.received:
        assert path == SLACK_PATH
        assert set(body) == {"text", "blocks"}, body  # Slack's format, not the plain document
        assert body["text"].startswith(":rocket: node: deployed: ")
    text, blocks = receiver.bodies()[1]["text"], receiver.bodies()[1]["blocks"]
    assert text == f":rocket: node: deployed: 1 added at {good[:7]} (add &lt;fresh&gt; &amp; co)"
    assert blocks[0]["type"] == "section" and "*applied*" in blocks[0]["text"]["text"]
    assert f"`{good[:12]}`" in blocks[1]["elements"][0]["text"]

    bad = commit(config_repo, BROKEN, "broken pipe")
    wait_for(lambda: len(receiver.received) == 3, what="refused notification")
    refused = receiver.bodies()[2]
    assert refused["text"].startswith(f":no_entry: node: commit refused at {bad[:7]}")
    assert "broken.conf.json" in refused["blocks"][0]["text"]["text"]
    commit(config_repo, {"pipes/broken.conf.json": None}, "fixed")
    wait_for(lambda: len(receiver.received) == 4, what="recovered notification")
    assert receiver.bodies()[3]["text"].startswith(":white_check_mark: node: recovered")
    assert NOTIFY_SECRET not in svc.log()


def test_delivery_failures_are_logged_and_never_fatal(service, app_env, config_repo: WorkRepo, state_dir: Path,
                                                      receiver: Receiver):
    receiver.status = 503
    svc = service({**app_env, "SYNC_INTERVAL": "0.2", "NOTIFY_URL": f"{receiver.url}/hook/{NOTIFY_SECRET}"})
    ready(svc)
    commit(config_repo, BROKEN, "broken pipe")
    wait_for(lambda: "HTTP 503" in svc.log(), what="non-2xx logged")

    receiver.delay = 8  # hangs: the 5 s timeout bounds the wait, and the sync is recorded regardless
    fixed = commit(config_repo, {"pipes/broken.conf.json": None}, "fixed")
    started = time.monotonic()
    wait_for(lambda: "timed out after 5 s" in svc.log(), timeout=15, what="timeout logged")
    assert 4 < time.monotonic() - started < 10
    assert history_rows(state_dir)[-1]["revision"] == fixed
    assert history_rows(state_dir)[-1]["result"] in ("synced", "no-change")

    down = f"http://127.0.0.1:{free_port()}/hook/{NOTIFY_SECRET}"  # nothing listens there
    svc.stop()
    svc = service({**app_env, "SYNC_INTERVAL": "0.2", "NOTIFY_URL": down})
    ready(svc)
    bad = commit(config_repo, BROKEN, "broken again")
    wait_for(lambda: "ConnectError" in svc.log(), what="connection failure logged")
    assert any(r["revision"] == bad for r in results(state_dir, "refused"))
    after = commit(config_repo, {"pipes/broken.conf.json": None, "pipes/x.conf.json": entity_json(pipe("x"))}, "x")
    wait_for(lambda: any(r["revision"] == after for r in results(state_dir, "synced")), what="sync goes on")
    assert svc.proc.poll() is None and httpx.get(svc.url + "/healthz").status_code == 200
    log = svc.log()
    assert "notification delivery failed" in log and "127.0.0.1" in log
    assert NOTIFY_SECRET not in log and "/hook/" not in log


def test_event_rules_and_slack_detection():
    assert event_for(Result.FAILED, None, "failures") == "failed"
    assert event_for(Result.REFUSED, Result.SYNCED, "failures") == "refused"
    assert event_for(Result.NO_CHANGE, Result.REFUSED, "failures") == "recovered"
    assert event_for(Result.SYNCED, Result.FAILED, "all") == "recovered"
    assert event_for(Result.SYNCED, Result.SYNCED, "failures") is None
    assert event_for(Result.SYNCED, None, "all") == "applied"
    assert event_for(Result.NO_CHANGE, Result.SYNCED, "all") is None
    assert is_slack("https://hooks.slack.com/services/T1/B2/abc")
    assert is_slack("http://127.0.0.1:9/services/T000/B000/XXXX")
    assert not is_slack("https://example.org/hooks/notify")


def test_a_failure_with_volatile_output_is_one_notification(service, tmp_path: Path, git_server, receiver: Receiver):
    """A deploy command that prints a new temporary path at every attempt fails the same way each time:
    one notification. Another reason or another revision is news; recovery is announced."""
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "deploy.git", tmp_path / "deploy-work")
    first = commit(repo, {"deploy/app.conf": "version=1\n"}, "version 1")
    mode = tmp_path / "exit-code"
    mode.write_text("1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    state_dir = tmp_path / "state"
    env = base_env(
        GIT_URL=git_server.url_for("acme/deploy.git"), GITHUB_TOKEN=GIT_TOKEN, TARGET="command", SYNC_ROOT="deploy",
        APP_NAME="deployer",
        STATE_DIR=str(state_dir), SYNC_INTERVAL="0.1", NOTIFY_URL=f"{receiver.url}/hook/{NOTIFY_SECRET}",
        NOTIFY_REPEAT="3600", ADMIN_TOKEN=ADMIN_TOKEN, COMMAND_SHELL="true",
        DEPLOY_COMMAND=f'd=$(mktemp -d -p {scratch}); echo "cannot write $d/release after 0.$$ s"; exit $(cat {mode})',
    )
    svc = service(env)

    def sync_now() -> None:
        answer = httpx.post(svc.url + "/api/apps/deployer/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 202

    wait_for(lambda: len(results(state_dir, "failed")) >= 5, timeout=30, what="five failed attempts")
    errors = {r["error"] for r in results(state_dir, "failed")}
    assert len(errors) >= 5, "each attempt's error quotes another temporary path"
    time.sleep(0.3)
    assert receiver.events() == ["failed"]
    assert receiver.bodies()[0]["revision"] == first
    assert receiver.bodies()[0]["error"].startswith("command exited with code 1")
    assert "notification not repeated" in svc.log()

    mode.write_text("3")  # another reason, same revision
    failed = len(results(state_dir, "failed"))
    sync_now()
    wait_for(lambda: len(receiver.received) == 2, what="notification of the new reason")
    assert receiver.bodies()[1]["error"].startswith("command exited with code 3")
    wait_for(lambda: len(results(state_dir, "failed")) >= failed + 3, timeout=30, what="more attempts")

    second = commit(repo, {"deploy/app.conf": "version=2\n"}, "version 2")  # same reason, a new revision
    sync_now()
    wait_for(lambda: len(receiver.received) == 3, what="notification of the new revision")
    assert receiver.bodies()[2]["revision"] == second and receiver.bodies()[2]["event"] == "failed"

    mode.write_text("0")
    sync_now()
    wait_for(lambda: len(receiver.received) == 4, what="recovered notification")
    assert receiver.bodies()[3]["event"] == "recovered" and receiver.bodies()[3]["revision"] == second

    mode.write_text("1")  # after a recovery the old failure is news again
    third = commit(repo, {"deploy/app.conf": "version=3\n"}, "version 3")
    sync_now()
    wait_for(lambda: len(receiver.received) == 5, what="failure after recovery")
    time.sleep(0.5)
    assert receiver.events() == ["failed", "failed", "failed", "recovered", "failed"]
    assert receiver.bodies()[4]["revision"] == third
