"""Section 5 of issue 8: recognisable secrets never leave the places they belong.

Every service test of this suite already ends with `check_no_leaks` (log, API, status pages,
/metrics, every file under STATE_DIR but secrets/webhook-secret). This file adds what those cannot
show: wrong credentials (their error messages), a notification URL, the CLI's own output, and `ps`
samples of the service and its git children taken while it works.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import (
    ADMIN_TOKEN,
    ALL_SECRETS,
    GIT_TOKEN,
    entity_json,
    history_rows,
    pipe,
    run_cli,
    stripped,
    wait_for,
)
from .support import PsSampler, check_no_leaks, leaked

WRONG_JWT = "sesamjwt-SECRET-wrong-4e5f6a7b8c9d"
WRONG_GIT_TOKEN = "gittok-SECRET-wrong-0a1b2c3d4e5f"
WRONG_ADMIN = "admin-SECRET-wrong-6a7b8c9d0e1f"
NOTIFY_PATH = "/hooks/notify-SECRET-1a2b3c4d5e6f"
EVERY = (*ALL_SECRETS, WRONG_JWT, WRONG_GIT_TOKEN, WRONG_ADMIN, NOTIFY_PATH.rsplit("/", 1)[1])


class Receiver(ThreadingHTTPServer):
    """Collects notification POSTs; answers 200, or 500 once `failing` is set."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.failing = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.bodies.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
                self.send_response(500 if owner.failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{NOTIFY_PATH}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def commit(repo: WorkRepo, name: str) -> None:
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push()


def test_secrets_never_leak_while_working_failing_and_notifying(service, rel_env, config_repo: WorkRepo,
                                                                sesam: SesamEmulator, github: GitHubEmulator,
                                                                receiver: Receiver, state_dir: Path, results,
                                                                git_server: GitHttpServer):
    """All secrets set (Git token, JWT, webhook secret, admin token, notification URL), commits
    applied, a bad commit refused, the node rejecting a rotated JWT, GitHub rejecting the token, a
    wrong admin token, failing notifications: no secret in logs, ps, history, API, pages or files."""
    env = {**rel_env, "NOTIFY_URL": receiver.url, "NOTIFY_ON": "all", "GITHUB_API_URL": github.url,
           "LOG_LEVEL": "debug"}
    github.token = "a-token-the-service-does-not-have"  # every GitHub call is refused: 401
    with PsSampler() as ps:
        # a slow Git server keeps the start-up clone's git processes alive long enough to be sampled: pushes
        # are fetched without a git process of ours (sources/smartfetch.py), so few git children remain
        git_server.set_delay(0.3)
        svc = service(env)
        for name in ("leak1", "leak2"):
            commit(config_repo, name)
            wait_for(lambda name=name: name in stripped(sesam.entities()), what=name)
            git_server.set_delay(0)
        config_repo.write({"pipes/leak2.conf.json": "{ not json"})
        config_repo.commit("broken")
        config_repo.push()
        wait_for(lambda: any(r["result"] == "refused" for r in history_rows(state_dir)), what="refused")
        config_repo.write({"pipes/leak2.conf.json": entity_json(pipe("leak2"))})
        config_repo.commit("fixed")
        config_repo.push()
        receiver.failing = True
        sesam.set_token(WRONG_JWT)  # the node's token was rotated: the service's JWT is now refused
        commit(config_repo, "leak3")
        wait_for(lambda: any("403" in (r["error"] or "") for r in history_rows(state_dir)), what="403 from the node")
        denied = httpx.post(svc.url + "/api/apps/node/sync", headers={"Authorization": f"Bearer {WRONG_ADMIN}"})
        also = httpx.post(svc.url + "/api/apps/node/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"})
        time.sleep(1.0)
        sesam.set_token(ALL_SECRETS[1])
        wait_for(lambda: "leak3" in stripped(sesam.entities()), what="recovered after the JWT is back")
    assert denied.status_code == 401 and also.status_code == 401
    assert any(b'"event": "refused"' in body or b"refused" in body for body in receiver.bodies)
    log = svc.log()
    assert "403" in log and "commit status not posted" in log and "notification delivery failed" in log
    texts = [denied.text, also.text, *(b.decode("utf-8", "replace") for b in receiver.bodies)]
    checked = check_no_leaks(svc.url, log, state_dir, secrets=EVERY, extra=texts)
    snapshots = ps.check(EVERY)
    git_seen = ps.git_children_seen()
    assert git_seen, "no git child process was sampled"
    results("secrets", "service: working, refusing, 403 from the node, 401 from GitHub, failing notifications",
            secrets=len(EVERY), places_checked=checked["places"], state_files=checked["state_files"],
            ps_snapshots=snapshots, ps_snapshots_with_git=git_seen, notifications=len(receiver.bodies), leaks=0)


def test_cli_output_and_errors_never_show_a_secret(app_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                   tmp_path: Path, results):
    """`sync` with a wrong Git token and with a wrong JWT, a configuration error next to secrets,
    `settings`, `status` and `history`: exit codes as documented, no secret in stdout or stderr."""
    env = {**app_env, "STATE_DIR": str(tmp_path / "cli-state"), "WEBHOOK_SECRET": ALL_SECRETS[3],
           "ADMIN_TOKEN": ADMIN_TOKEN}
    runs = {
        "sync (wrong Git token)": run_cli({**env, "GITHUB_TOKEN": WRONG_GIT_TOKEN}, "sync"),
        "sync (wrong JWT)": run_cli({**env, "JWT": WRONG_JWT}, "sync"),
        "sync (token in GIT_URL, bad VERIFY_TLS)": run_cli(
            {**env, "GIT_URL": env["GIT_URL"].replace("http://", f"http://x-access-token:{GIT_TOKEN}@"),
             "VERIFY_TLS": "maybe"}, "sync"),
        "sync (token in GIT_URL)": run_cli(
            {**{k: v for k, v in env.items() if k != "GITHUB_TOKEN"},
             "GIT_URL": env["GIT_URL"].replace("http://", f"http://x-access-token:{GIT_TOKEN}@")}, "sync"),
        "settings": run_cli(env, "settings"),
        "status": run_cli(env, "status"),
        "history": run_cli(env, "history"),
    }
    assert runs["sync (wrong Git token)"].returncode == 2
    assert "401" in runs["sync (wrong Git token)"].stdout
    assert runs["sync (wrong JWT)"].returncode == 2 and "403" in runs["sync (wrong JWT)"].stdout
    assert runs["sync (token in GIT_URL, bad VERIFY_TLS)"].returncode == 2
    assert "VERIFY_TLS" in runs["sync (token in GIT_URL, bad VERIFY_TLS)"].stderr
    assert runs["sync (token in GIT_URL)"].returncode == 0, runs["sync (token in GIT_URL)"].stdout
    for name, done in runs.items():
        hits = leaked(done.stdout + done.stderr, EVERY)
        assert not hits, f"{name}: {hits}"
    for path in (tmp_path / "cli-state").rglob("*"):
        if path.is_file() and path.name != "webhook-secret":
            assert not leaked(path.read_bytes(), EVERY), path
    results("secrets", "CLI: wrong tokens, configuration error, settings, status, history",
            commands=len(runs), exit_codes={k: v.returncode for k, v in runs.items()}, leaks=0)
    _ = json  # keep the import for readers of results
