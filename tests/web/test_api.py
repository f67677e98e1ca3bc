"""JSON API, admin actions, metrics, and the operator CLI against a running service."""

from __future__ import annotations

import httpx
import pytest

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import ADMIN_TOKEN, ALL_SECRETS, entity_json, pipe, run_cli, stripped, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def running(service, app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    svc = service({**app_env, "SYNC_INTERVAL": "0.3", "ADMIN_TOKEN": ADMIN_TOKEN})
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="ready")
    return svc


def add_pipe(repo: WorkRepo, name: str) -> str:
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push()
    return repo.head


def test_status_and_history_over_http(running, config_repo: WorkRepo, sesam):
    head = add_pipe(config_repo, "api-one")
    wait_for(lambda: httpx.get(running.url + "/api/apps/node").json()["live_revision"] == head, what="synced")
    apps = httpx.get(running.url + "/api/apps").json()["apps"]
    assert [a["name"] for a in apps] == ["node"]
    app = apps[0]
    assert app["status"] == "synced" and app["target"] == "sesam" and app["branch"] == "master"
    assert app["live_commit"]["message"] == "add api-one"
    assert app["next_poll_at"] is not None
    history = httpx.get(running.url + "/api/apps/node/history?limit=1").json()["history"]
    assert len(history) == 1 and history[0]["revision"] == head and '"_id": "api-one"' in history[0]["diff"]
    assert httpx.get(running.url + "/api/apps/nope").status_code == 404
    assert httpx.get(running.url + "/api/apps/node/history?limit=x").status_code == 400
    for bad in ("0", "-1", "-3"):
        answer = httpx.get(running.url + f"/api/apps/node/history?limit={bad}")
        assert answer.status_code == 400 and "limit must be a whole number of at least 1" in answer.json()["error"]
    assert len(httpx.get(running.url + "/api/apps/node/history?limit=100000").json()["history"]) >= 1
    body = httpx.get(running.url + "/api/apps").text + httpx.get(running.url + "/api/apps/node/history").text
    for secret in ALL_SECRETS:
        assert secret not in body


def test_admin_actions_need_the_token(running):
    for action in ("sync", "suspend", "resume", "rollback"):
        url = f"{running.url}/api/apps/node/{action}"
        assert httpx.post(url).status_code == 401
        assert httpx.post(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert httpx.post(url, headers={"Authorization": f"Basic {ADMIN_TOKEN}"}).status_code == 401
    assert httpx.post(f"{running.url}/api/apps/node/sync", headers=AUTH).status_code == 202
    assert httpx.post(f"{running.url}/api/apps/node/explode", headers=AUTH).status_code == 404


def test_admin_actions_disabled_without_token(service, app_env):
    svc = service(app_env)
    response = httpx.post(svc.url + "/api/apps/node/sync", headers=AUTH)
    assert response.status_code == 403
    assert "ADMIN_TOKEN" in response.json()["error"]


def test_rollback_then_resume_returns_to_branch_head(running, config_repo: WorkRepo, sesam: SesamEmulator):
    first = add_pipe(config_repo, "rb-one")
    wait_for(lambda: "rb-one" in stripped(sesam.entities()), what="rb-one")
    second = add_pipe(config_repo, "rb-two")
    wait_for(lambda: "rb-two" in stripped(sesam.entities()), what="rb-two")

    answer = httpx.post(running.url + "/api/apps/node/rollback", headers=AUTH, json={"revision": first[:10]})
    assert answer.status_code == 202 and answer.json()["revision"] == first
    wait_for(lambda: "rb-two" not in stripped(sesam.entities()), what="rolled back")
    app = httpx.get(running.url + "/api/apps/node").json()
    assert app["status"] == "suspended" and app["pinned_revision"] == first and app["live_revision"] == first
    third = add_pipe(config_repo, "rb-three")  # a new commit must not undo the rollback
    import time

    time.sleep(1.2)
    assert "rb-three" not in stripped(sesam.entities())

    bad = httpx.post(running.url + "/api/apps/node/rollback", headers=AUTH, json={"revision": "deadbeef99"})
    assert bad.status_code == 422 and "not found" in bad.json()["error"]
    assert httpx.post(running.url + "/api/apps/node/rollback", headers=AUTH, content=b"x").status_code == 400

    assert httpx.post(running.url + "/api/apps/node/resume", headers=AUTH).status_code == 202
    wait_for(lambda: httpx.get(running.url + "/api/apps/node").json()["live_revision"] == third, what="back at head")
    assert {"rb-one", "rb-two", "rb-three"} <= set(stripped(sesam.entities()))
    assert second != third


def test_operator_cli_local_and_remote(running, app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    first = add_pipe(config_repo, "cli-one")
    wait_for(lambda: "cli-one" in stripped(sesam.entities()), what="cli-one")
    add_pipe(config_repo, "cli-two")
    wait_for(lambda: "cli-two" in stripped(sesam.entities()), what="cli-two")
    env = {**app_env, "ADMIN_TOKEN": ADMIN_TOKEN}

    status = run_cli(env, "status")
    assert status.returncode == 0 and "node" in status.stdout and "synced" in status.stdout
    remote_status = run_cli(env, "status", "--server", running.url, "--json")
    assert remote_status.returncode == 0 and '"status": "synced"' in remote_status.stdout
    history = run_cli(env, "history", "--app", "node", "--limit", "2")
    assert history.returncode == 0 and "cli-two" in history.stdout and "synced" in history.stdout

    rolled = run_cli(env, "rollback", "--server", running.url, "--app", "node", "--to", first[:12])
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "auto-sync suspended" in rolled.stdout
    assert "cli-two" not in stripped(sesam.entities())
    suspended = run_cli(env, "status")
    assert "suspended" in suspended.stdout
    resumed = run_cli(env, "resume", "--server", running.url, "--app", "node")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_for(lambda: "cli-two" in stripped(sesam.entities()), what="resumed to head")

    no_token = run_cli({k: v for k, v in env.items() if k != "ADMIN_TOKEN"}, "suspend", "--server", running.url,
                       "--app", "node")
    assert no_token.returncode == 2 and "401" in no_token.stderr


def test_metrics_exposition(running, config_repo: WorkRepo, sesam):
    add_pipe(config_repo, "metric")
    wait_for(lambda: "metric" in stripped(sesam.entities()), what="sync")
    text = httpx.get(running.url + "/metrics").text
    for name in (
        'autodeployer_sync_total{app="node",result="synced"}',
        'autodeployer_sync_duration_seconds_bucket{app="node"',
        'autodeployer_app_info{app="node",revision=',
        'autodeployer_last_sync_timestamp_seconds{app="node",result="synced"}',
        'autodeployer_git_requests_total{kind="ls-remote",result="ok"}',
        "autodeployer_pending_syncs",
    ):
        assert name in text, name
    assert 'sync_status="synced"' in text


def test_openapi_matches_the_routes(running):
    spec = httpx.get(running.url + "/openapi.json").json()
    paths = set(spec["paths"])
    for path in ("/api/apps", "/api/apps/{app}", "/api/apps/{app}/history", "/api/apps/{app}/sync",
                 "/api/apps/{app}/suspend", "/api/apps/{app}/resume", "/api/apps/{app}/rollback",
                 "/healthz", "/readyz", "/metrics", "/webhook"):
        assert path in paths
        concrete = path.replace("{app}", "node")
        method = next(iter(spec["paths"][path]))
        answer = httpx.request(method.upper(), running.url + concrete)
        assert answer.status_code != 404 or path == "/webhook", path
        assert answer.status_code != 405, path


def test_metrics_have_no_created_series(running, config_repo: WorkRepo, sesam):
    add_pipe(config_repo, "metric")
    wait_for(lambda: "metric" in stripped(sesam.entities()), what="sync")
    text = httpx.get(running.url + "/metrics").text
    assert "autodeployer_sync_total{" in text and "autodeployer_sync_duration_seconds_count{" in text
    assert "_created" not in text


def test_openapi_describes_dploy_and_the_history_rows(running, config_repo: WorkRepo):
    spec = httpx.get(running.url + "/openapi.json").json()
    assert spec["paths"]["/dploy"]["post"]["responses"].keys() == spec["paths"]["/webhook"]["post"]["responses"].keys()
    assert httpx.post(running.url + "/dploy").status_code == 401  # served, and refused unsigned
    add_pipe(config_repo, "described")
    history = wait_for(lambda: httpx.get(running.url + "/api/apps/node/history").json()["history"], what="history")
    answer = spec["paths"]["/api/apps/{app}/history"]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"]["properties"]["history"]["items"] == {"$ref": "#/components/schemas/HistoryRow"}
    schema = spec["components"]["schemas"]["HistoryRow"]
    for row in history:
        assert set(row) == set(schema["properties"]), "the schema lists exactly the fields of a history row"
        assert row["result"] in schema["properties"]["result"]["enum"]
        assert row["trigger"] in schema["properties"]["trigger"]["enum"]
    app = httpx.get(running.url + "/api/apps/node").json()
    assert set(app) == set(spec["components"]["schemas"]["App"]["properties"])


def test_a_failed_rollback_through_the_service_says_so(running, app_env, config_repo: WorkRepo,
                                                       sesam: SesamEmulator):
    first = add_pipe(config_repo, "fr-one")
    wait_for(lambda: "fr-one" in stripped(sesam.entities()), what="fr-one")
    add_pipe(config_repo, "fr-two")
    wait_for(lambda: "fr-two" in stripped(sesam.entities()), what="fr-two")
    sesam.set_token("rotated-elsewhere")  # the node now refuses the deployer's token
    env = {**app_env, "ADMIN_TOKEN": ADMIN_TOKEN}
    rolled = run_cli(env, "rollback", "--server", running.url, "--app", "node", "--to", first[:12])
    assert rolled.returncode == 2, rolled.stdout + rolled.stderr
    assert f"node: rollback to {first[:12]} failed: " in rolled.stdout
    assert "done" not in rolled.stdout
    assert "fr-two" in stripped(sesam.entities())  # nothing changed on the node
