"""Sync windows and promotion end to end: `autodeployer run` as a real process, Sesam emulators, Git over
loopback. A revision pushed inside a deny window is held (API, page, metrics) and deployed when the
window closes without a new push; an override through the API deploys and is recorded; prod follows
test only after a 3-second soak, and a revision test refuses never reaches prod."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import entity_json, history_rows, pipe, run_cli, stripped, wait_for, window_at

ADMIN = "admin-token-for-rollout-0001"


def app_status(url: str, app: str) -> dict[str, object]:
    return httpx.get(f"{url}/api/apps/{app}", timeout=5).json()  # type: ignore[no-any-return]


def test_a_push_inside_a_deny_window_is_held_then_deployed_and_override_is_recorded(
        service, app_env, config_repo: WorkRepo, sesam: SesamEmulator, state_dir: Path) -> None:
    now = time.time()
    first, second = window_at(now - 1, 7), window_at(now + 11, 600)  # held at start; a later long freeze
    svc = service({**app_env, "SYNC_INTERVAL": "0.3", "ADMIN_TOKEN": ADMIN,
                   "SYNC_WINDOWS": json.dumps([first, second])})
    initial = config_repo.head
    held = wait_for(lambda: app_status(svc.url, "node")["status"] == "held" and app_status(svc.url, "node"),
                    what="the initial revision held")
    rollout = held["rollout"]
    assert held["last_revision"] == initial and "orders" not in stripped(sesam.entities())
    assert rollout["held"]["reason"].startswith("held by window deny") and "until" in rollout["held"]["reason"]
    page = httpx.get(svc.url + "/", timeout=5).text
    assert "held by window deny" in page and "b-held" in page
    metrics = httpx.get(svc.url + "/metrics", timeout=5).text
    assert 'autodeployer_app_held{app="node"} 1.0' in metrics

    # deployed at the window's end, without a new push; held recorded once, not at every poll
    wait_for(lambda: "orders" in stripped(sesam.entities()), timeout=20, what="deployed when the window closed")
    assert time.time() >= int(now - 1) + 7  # not before the window's end
    rows = wait_for(lambda: (found := history_rows(state_dir, "node"))[-1]["result"] != "running" and found,
                    what="the deploy recorded")
    assert [r["result"] for r in rows] == ["held", "synced"] and rows[1]["revision"] == initial

    # the second window: a push is held; the API's override deploys it anyway, recorded as such
    wait_for(lambda: time.time() > int(now + 11) + 0.5, timeout=20, what="the second window")
    config_repo.write({"pipes/urgent.conf.json": entity_json(pipe("urgent"))})
    config_repo.commit("urgent fix")
    config_repo.push()
    wait_for(lambda: app_status(svc.url, "node")["last_revision"] == config_repo.head
             and app_status(svc.url, "node")["status"] == "held", what="the push held")
    assert "urgent" not in stripped(sesam.entities())
    response = httpx.post(f"{svc.url}/api/apps/node/sync?override_window=true",
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert response.status_code == 202 and response.json()["override_window"] is True
    wait_for(lambda: "urgent" in stripped(sesam.entities()), what="the override deployed")
    history = wait_for(lambda: (found := httpx.get(f"{svc.url}/api/apps/node/history", timeout=5).json()["history"])
                       [0]["result"] != "running" and found, what="the override recorded")
    assert history[0]["result"] == "synced" and history[0]["details"]["window_override"]["overridden"] is True
    assert [h["result"] for h in history].count("held") == 2
    assert app_status(svc.url, "node")["status"] == "synced"


def test_prod_follows_test_after_the_soak_and_never_gets_what_test_refused(
        service, app_env, git_server: GitHttpServer, config_repo: WorkRepo, sesam: SesamEmulator,
        tmp_path: Path) -> None:
    prod_node = SesamEmulator(jwt="prod-jwt-value-0001")
    with prod_node.serve() as node:
        config = tmp_path / "apps.yaml"
        config.write_text(f"""
service:
  state_dir: {tmp_path / 'chain-state'}
defaults:
  source:
    url: {git_server.url_for('acme/config.git')}
    token_env: GITHUB_TOKEN
apps:
  - name: test
    target: {{kind: sesam, api_url: "{app_env['SESAM_API_URL']}", jwt_env: JWT}}
    policy: {{interval: 0.3}}
  - name: prod
    target: {{kind: sesam, api_url: "{node.url}/api", jwt_env: PROD_JWT}}
    policy: {{interval: 0.3, promote_from: test, soak: 3s}}
""")
        env = {k: v for k, v in app_env.items() if k not in ("GIT_URL", "STATE_DIR", "APP_NAME")}
        svc = service({**env, "PROD_JWT": "prod-jwt-value-0001"}, "--config", str(config))
        state_dir = tmp_path / "chain-state"
        good = config_repo.head
        upstream_live = rf"test: {good[:7]} (live|checking|healthy) "  # checking: its health window is open
        wait_for(lambda: "orders" in stripped(sesam.entities()), what="test deployed")
        synced_on_test = time.time()
        waiting = wait_for(lambda: (row := app_status(svc.url, "prod"))["status"] == "held"
                           and re.match(upstream_live, row["rollout"]["summary"]) and row,
                           what="prod waiting for the soak")
        assert "orders" not in stripped(prod_node.entities())
        assert re.match(rf"test: {good[:7]} (live|checking|healthy) ", waiting["rollout"]["summary"])
        assert "waiting for test" in waiting["rollout"]["held"]["reason"]
        status = run_cli({**env, "PROD_JWT": "prod-jwt-value-0001"}, "--config", str(config), "status")
        assert "held" in status.stdout and re.search(rf"test: {good[:7]} (live|checking|healthy)", status.stdout), (
            status.stdout + status.stderr)
        wait_for(lambda: "orders" in stripped(prod_node.entities()), timeout=20, what="prod followed test")
        assert time.time() - synced_on_test >= 2.5  # not before the soak (less the time test's sync took)
        wait_for(lambda: (rows := history_rows(state_dir, "prod"))[-1]["result"] == "synced"
                 and rows[-1]["revision"] == good, what="prod's sync recorded")
        assert re.match(upstream_live, app_status(svc.url, "prod")["rollout"]["summary"])

        # a commit test refuses (a pipe file that is not JSON) never reaches prod
        config_repo.write({"pipes/broken.conf.json": "{ not json"})
        config_repo.commit("broken pipe")
        config_repo.push()
        bad = config_repo.head
        wait_for(lambda: app_status(svc.url, "test")["last_result"] == "refused", what="test refused it")
        time.sleep(4.0)  # longer than the soak: prod still must not take it
        assert all(r["revision"] != bad for r in history_rows(state_dir, "prod"))
        assert app_status(svc.url, "prod")["live_revision"] == good
        assert "broken" not in stripped(prod_node.entities())
