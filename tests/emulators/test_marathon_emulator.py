"""The Marathon emulator over real HTTP: codes, shapes, timing, locking and failure injection."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from autodeployer_emulators.marathon import MarathonEmulator, canonical_id, parse_label_selector

DURATION = 0.1


def web(**extra: Any) -> dict[str, Any]:
    return {"id": "/web", "cmd": "python -m http.server", "instances": 2, **extra}


@pytest.fixture
def mara() -> MarathonEmulator:
    return MarathonEmulator(deploy_duration=DURATION)


@pytest.fixture
def client(mara: MarathonEmulator) -> Iterator[httpx.Client]:
    with mara.serve() as server, httpx.Client(base_url=server.url, timeout=5) as http:
        yield http


def wait_gone(client: httpx.Client, deployment_id: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [d["id"] for d in client.get("/v2/deployments").json()]
        if deployment_id not in ids:
            return
        time.sleep(0.02)
    raise AssertionError(f"deployment {deployment_id} still running")


def deploy(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.put(f"/v2/apps{spec['id']}", json=spec)
    assert response.status_code in (200, 201), response.text
    deployment_id = response.json()["deploymentId"]
    wait_gone(client, deployment_id)
    return deployment_id


# ------------------------------------------------------------------------------ basics and auth


def test_ping_and_info(client: httpx.Client) -> None:
    ping = client.get("/ping")
    assert ping.status_code == 200 and ping.text == "pong"
    info = client.get("/v2/info").json()
    assert info["name"] == "marathon" and info["elected"] is True
    assert {"version", "leader", "frameworkId", "marathon_config"} <= set(info)


def test_token_auth_accepts_token_form_only() -> None:
    mara = MarathonEmulator(token="s3cret", deploy_duration=0)
    with mara.serve() as server, httpx.Client(base_url=server.url) as http:
        missing = http.get("/v2/apps")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "acsjwt"
        assert "message" in missing.json()
        bearer = http.get("/v2/apps", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 401 and bearer.headers["WWW-Authenticate"] == "acsjwt"
        wrong = http.get("/v2/apps", headers={"Authorization": "token=nope"})
        assert wrong.status_code == 401
        ok = http.get("/v2/apps", headers={"Authorization": "token=s3cret"})
        assert ok.status_code == 200 and ok.json() == {"apps": []}
        assert http.get("/ping").status_code == 200
    # the request log never keeps the token
    assert all("s3cret" not in json.dumps(r.__dict__) for r in mara.requests)


def test_login_issues_expiring_tokens() -> None:
    mara = MarathonEmulator(token="static", deploy_duration=0, users={"alice": "pw"}, token_ttl=0.3)
    with mara.serve() as server, httpx.Client(base_url=server.url) as http:
        bad = http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": "wrong"})
        assert bad.status_code == 401
        login = http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": "pw"})
        assert login.status_code == 200
        token = login.json()["token"]
        assert token.count(".") == 2  # JWT-shaped
        assert http.get("/v2/apps", headers={"Authorization": f"token={token}"}).status_code == 200
        time.sleep(0.35)
        expired = http.get("/v2/apps", headers={"Authorization": f"token={token}"})
        assert expired.status_code == 401 and expired.headers["WWW-Authenticate"] == "acsjwt"
    logged = [r for r in mara.requests if r.path == "/acs/api/v1/auth/login"]
    assert all(r.body["password"] == "***" for r in logged)


def test_basic_auth_mode() -> None:
    mara = MarathonEmulator(basic_auth=("user", "pw"), deploy_duration=0)
    with mara.serve() as server:
        assert httpx.get(server.url + "/v2/apps").status_code == 401
        assert httpx.get(server.url + "/v2/apps", auth=("user", "bad")).status_code == 401
        assert httpx.get(server.url + "/v2/apps", auth=("user", "pw")).status_code == 200


def test_admin_router_prefix(client: httpx.Client) -> None:
    response = client.post("/service/marathon/v2/apps", json=web())
    assert response.status_code == 201
    assert response.headers["Location"].endswith("/service/marathon/v2/apps/web")
    assert client.get("/service/marathon/v2/apps/web").status_code == 200


# ------------------------------------------------------------------------------ apps


def test_post_creates_with_defaults_location_and_deployment(
    client: httpx.Client, mara: MarathonEmulator
) -> None:
    response = client.post("/v2/apps", json={"id": "web", "cmd": "sleep 1000"})
    assert response.status_code == 201
    assert response.headers["Location"] == str(client.base_url).rstrip("/") + "/v2/apps/web"
    deployment_id = response.headers["Marathon-Deployment-Id"]
    app = response.json()
    assert app["id"] == "/web"
    assert app["upgradeStrategy"] == {"minimumHealthCapacity": 1, "maximumOverCapacity": 1}
    assert app["instances"] == 1 and app["cpus"] == 1 and app["mem"] == 128
    assert app["labels"] == {} and app["env"] == {} and app["backoffSeconds"] == 1
    assert app["version"] and set(app["versionInfo"]) == {"lastScalingAt", "lastConfigChangeAt"}
    assert app["tasksRunning"] == 0 and app["tasksStaged"] == 1
    assert app["tasksHealthy"] == 0 and app["tasksUnhealthy"] == 0
    assert app["deployments"] == [{"id": deployment_id}]
    assert "/web" in mara.apps()


def test_deployment_listed_then_gone_and_counters_reach_instances(
    client: httpx.Client, mara: MarathonEmulator
) -> None:
    spec = web(healthChecks=[{"protocol": "HTTP", "path": "/"}])
    mara.deploy_duration = 1.0  # long enough to be listed on a busy machine (0.1 s was not, once)
    deployment_id = client.post("/v2/apps", json=spec).headers["Marathon-Deployment-Id"]
    listed = client.get("/v2/deployments").json()
    assert [d["id"] for d in listed] == [deployment_id]
    dep = listed[0]
    assert dep["affectedApps"] == ["/web"] and dep["affectedPods"] == []
    assert dep["steps"] == [{"actions": [{"action": "StartApplication", "app": "/web"}]}]
    assert dep["currentActions"] == [
        {"action": "StartApplication", "app": "/web", "readinessCheckResults": []}
    ]
    assert dep["currentStep"] == 1 and dep["totalSteps"] == 1
    wait_gone(client, deployment_id)
    app = client.get("/v2/apps/web").json()["app"]
    assert app["tasksRunning"] == 2 and app["tasksHealthy"] == 2 and app["tasksStaged"] == 0
    assert app["deployments"] == [] and len(app["tasks"]) == 2
    types = [(e["eventType"], e.get("id") or e["plan"]["id"]) for e in mara.events]
    assert types == [("deployment_info", deployment_id), ("deployment_success", deployment_id)]


def test_zero_duration_deployments_finish_on_next_request() -> None:
    mara = MarathonEmulator(deploy_duration=0)
    with mara.serve() as server, httpx.Client(base_url=server.url) as http:
        created = http.post("/v2/apps", json=web())
        assert created.json()["deployments"]  # visible in the creating response
        assert http.get("/v2/deployments").json() == []
        assert http.get("/v2/apps/web").json()["app"]["tasksRunning"] == 2


def test_duplicate_post_is_409_without_deployments(client: httpx.Client) -> None:
    assert client.post("/v2/apps", json=web()).status_code == 201
    duplicate = client.post("/v2/apps", json=web())
    assert duplicate.status_code == 409
    assert "message" in duplicate.json() and "deployments" not in duplicate.json()


def test_locked_409_lists_deployments_and_force_cancels(
    client: httpx.Client, mara: MarathonEmulator
) -> None:
    first = client.post("/v2/apps", json=web()).headers["Marathon-Deployment-Id"]
    locked = client.put("/v2/apps/web", json={"instances": 3})
    assert locked.status_code == 409
    assert locked.json()["deployments"] == [{"id": first}]
    assert "force=true" in locked.json()["message"]
    assert client.delete("/v2/apps/web").status_code == 409
    assert client.post("/v2/apps/web/restart").status_code == 409
    forced = client.put("/v2/apps/web", params={"force": "true"}, json={"instances": 3})
    assert forced.status_code == 200
    second = forced.json()["deploymentId"]
    assert forced.headers["Marathon-Deployment-Id"] == second
    assert [d["id"] for d in client.get("/v2/deployments").json()] == [second]
    failed = [e for e in mara.events if e["eventType"] == "deployment_failed"]
    assert [e["id"] for e in failed] == [first]
    wait_gone(client, second)
    assert client.get("/v2/apps/web").json()["app"]["tasksRunning"] == 3


def test_put_creates_201_then_updates_200(client: httpx.Client) -> None:
    created = client.put("/v2/apps/api", json={"cmd": "serve", "instances": 1})
    assert created.status_code == 201
    assert created.headers["Location"].endswith("/v2/apps/api")
    assert set(created.json()) == {"deploymentId", "version"}
    assert created.headers["Marathon-Deployment-Id"] == created.json()["deploymentId"]
    wait_gone(client, created.json()["deploymentId"])
    updated = client.put("/v2/apps/api", json={"cmd": "serve", "instances": 2})
    assert updated.status_code == 200 and "Location" not in updated.headers
    assert client.get("/v2/deployments").json()[0]["steps"][0]["actions"] == [
        {"action": "ScaleApplication", "app": "/api"}
    ]


def test_partial_update_default_true_vs_false(client: httpx.Client, mara: MarathonEmulator) -> None:
    deploy(client, web(labels={"team": "a"}, env={"X": "1"}))
    deploy_id = client.put("/v2/apps/web", json={"instances": 4}).json()["deploymentId"]
    wait_gone(client, deploy_id)
    kept = mara.apps()["/web"]
    assert kept["instances"] == 4 and kept["labels"] == {"team": "a"} and kept["env"] == {"X": "1"}
    full = client.put(
        "/v2/apps/web", params={"partialUpdate": "false"}, json={"cmd": "other", "instances": 1}
    )
    assert full.status_code == 200
    replaced = mara.apps()["/web"]
    assert replaced["labels"] == {} and replaced["env"] == {} and replaced["cmd"] == "other"
    assert client.get("/v2/deployments").json()[0]["steps"][0]["actions"][0]["action"] == (
        "RestartApplication"
    )


def test_versions_and_rollback(client: httpx.Client, mara: MarathonEmulator) -> None:
    deploy(client, web(cmd="v1"))
    deploy(client, web(cmd="v2"))
    versions = client.get("/v2/apps/web/versions").json()["versions"]
    assert len(versions) == 2 and versions == sorted(versions, reverse=True)
    oldest = versions[-1]
    assert client.get(f"/v2/apps/web/versions/{oldest}").json()["cmd"] == "v1"
    assert client.get("/v2/apps/web/versions/2000-01-01T00:00:00.000Z").status_code == 404
    mixed = client.put("/v2/apps/web", json={"version": oldest, "cmd": "x"})
    assert mixed.status_code == 422
    unknown = client.put("/v2/apps/web", json={"version": "2000-01-01T00:00:00.000Z"})
    assert unknown.status_code == 404
    rollback = client.put("/v2/apps/web", json={"version": oldest})
    assert rollback.status_code == 200 and "deploymentId" in rollback.json()
    assert mara.apps()["/web"]["cmd"] == "v1"
    assert len(client.get("/v2/apps/web/versions").json()["versions"]) == 3
    assert client.get("/v2/apps/nope/versions").status_code == 404


def test_versions_are_capped() -> None:
    mara = MarathonEmulator(deploy_duration=0, max_versions=3)
    with mara.serve() as server, httpx.Client(base_url=server.url) as http:
        for n in range(5):
            http.put("/v2/apps/web", json={"cmd": f"v{n}"})
        versions = http.get("/v2/apps/web/versions").json()["versions"]
        assert len(versions) == 3
        assert http.get(f"/v2/apps/web/versions/{versions[-1]}").json()["cmd"] == "v2"


def test_label_selectors_and_filters(client: httpx.Client, mara: MarathonEmulator) -> None:
    mara.load_app({"id": "/a", "cmd": "x", "labels": {"DPLOY": "shop", "tier": "web"}})
    mara.load_app({"id": "/b", "cmd": "y", "labels": {"DPLOY": "shop", "tier": "db"}})
    mara.load_app({"id": "/other/c", "cmd": "z", "labels": {"DPLOY": "blog"}})
    mara.load_app({"id": "/d", "cmd": "z"})

    def ids(**params: str) -> list[str]:
        response = client.get("/v2/apps", params=params)
        assert response.status_code == 200
        return [a["id"] for a in response.json()["apps"]]

    assert ids(label="DPLOY==shop") == ["/a", "/b"]
    assert ids(label="DPLOY") == ["/a", "/b", "/other/c"]
    assert ids(label="DPLOY!=shop") == ["/other/c"]
    assert ids(label="tier in (web,db)") == ["/a", "/b"]
    assert ids(label="tier notin (db)") == ["/a"]
    assert ids(label="DPLOY==shop,tier==db") == ["/b"]
    assert ids(id="other") == ["/other/c"]
    assert ids(cmd="y") == ["/b"]
    assert client.get("/v2/apps", params={"label": "a b c"}).status_code == 400
    listed = client.get("/v2/apps", params={"embed": "apps.tasks"}).json()["apps"][0]
    assert listed["tasksRunning"] == 1 and len(listed["tasks"]) == 1


def test_label_selector_parser_units() -> None:
    assert parse_label_selector("k==v")({"k": "v"})
    assert not parse_label_selector("k!=v")({})
    assert parse_label_selector("k in (a, b)")({"k": "b"})
    assert parse_label_selector(r"\!\! in (\-\-, x), c")({"!!": "--", "c": ""})
    assert not parse_label_selector("k notin (a)")({})
    with pytest.raises(ValueError):
        parse_label_selector("==v")


def test_delete_and_restart(client: httpx.Client, mara: MarathonEmulator) -> None:
    deploy(client, web())
    before = mara.apps()["/web"]["version"]
    restart = client.post("/v2/apps/web/restart")
    assert restart.status_code == 200 and restart.headers["Marathon-Deployment-Id"]
    assert client.get("/v2/deployments").json()[0]["steps"][0]["actions"] == [
        {"action": "RestartApplication", "app": "/web"}
    ]
    wait_gone(client, restart.json()["deploymentId"])
    assert mara.apps()["/web"]["version"] != before
    deleted = client.delete("/v2/apps/web")
    assert deleted.status_code == 200 and set(deleted.json()) == {"deploymentId", "version"}
    assert client.get("/v2/apps/web").status_code == 404
    missing = client.delete("/v2/apps/web")
    assert missing.status_code == 404 and "/web" in missing.json()["message"]
    assert client.post("/v2/apps/nope/restart").status_code == 404


# ------------------------------------------------------------------------------ validation


def test_invalid_ids_are_422_on_id(client: httpx.Client) -> None:
    for bad_id in ["/Web", "/web-", "/-web", "/we_b", "/a/.b", "/a..b", "/a.-b", "/"]:
        response = client.post("/v2/apps", json={"id": bad_id, "cmd": "x"})
        assert response.status_code == 422, bad_id
        body = response.json()
        assert body["message"] == "Object is not valid"
        assert [d["path"] for d in body["details"]] == ["/id"]
    assert client.put("/v2/apps/Bad_Id", json={"cmd": "x"}).json()["details"][0]["path"] == "/id"
    assert client.post("/v2/apps", json={"id": "a.b-c/d1", "cmd": "x"}).json()["id"] == "/a.b-c/d1"


def test_valid_and_relative_ids() -> None:
    assert canonical_id("a.b-c/d1") == "/a.b-c/d1"
    assert canonical_id("web", "/prod") == "/prod/web"
    assert canonical_id("../x", "/prod/sub") == "/prod/x"
    assert canonical_id("/a.-b") is None


def test_invalid_json_and_type_errors_are_400(client: httpx.Client) -> None:
    broken = client.post(
        "/v2/apps", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["message"] == "Invalid JSON" and broken.json()["details"]
    wrong_type = client.post("/v2/apps", json={"id": 5, "cmd": "x"})
    assert wrong_type.status_code == 400
    assert wrong_type.json()["details"] == [{"path": "/id", "errors": ["error.expected.jsstring"]}]
    labels = client.post("/v2/apps", json={"id": "/w", "cmd": "x", "labels": {"a": 1}})
    assert labels.json()["details"][0]["path"] == "/labels/a"


def test_semantic_errors_are_422_with_details(client: httpx.Client) -> None:
    response = client.post(
        "/v2/apps",
        json={"id": "/w", "cmd": "x", "upgradeStrategy": {"minimumHealthCapacity": 1.5}},
    )
    assert response.status_code == 422
    paths = [d["path"] for d in response.json()["details"]]
    assert paths == ["/upgradeStrategy/minimumHealthCapacity"]
    no_cmd = client.post("/v2/apps", json={"id": "/w"})
    assert no_cmd.status_code == 422 and no_cmd.json()["details"][0]["path"] == "/"
    assert client.get("/v2/apps/nothing").status_code == 404


# ------------------------------------------------------------------------------ groups


def group_spec() -> dict[str, Any]:
    return {
        "id": "/shop",
        "apps": [
            {"id": "front", "cmd": "a", "instances": 1},
            {"id": "/shop/api", "cmd": "b", "instances": 2},
        ],
        "groups": [{"id": "data", "apps": [{"id": "db", "cmd": "c"}]}],
    }


def test_group_post_get_and_relative_ids(client: httpx.Client, mara: MarathonEmulator) -> None:
    created = client.post("/v2/groups", json=group_spec())
    assert created.status_code == 201
    assert created.headers["Location"].endswith("/v2/groups/shop")
    assert set(created.json()) == {"deploymentId", "version"}
    assert created.headers["Marathon-Deployment-Id"] == created.json()["deploymentId"]
    assert sorted(mara.apps()) == ["/shop/api", "/shop/data/db", "/shop/front"]
    dep = client.get("/v2/deployments").json()[0]
    assert dep["affectedApps"] == ["/shop/api", "/shop/data/db", "/shop/front"]
    group = client.get("/v2/groups/shop").json()
    assert [a["id"] for a in group["apps"]] == ["/shop/api", "/shop/front"]
    assert group["groups"][0]["id"] == "/shop/data"
    assert group["groups"][0]["apps"][0]["id"] == "/shop/data/db"
    root = client.get("/v2/groups").json()
    assert root["id"] == "/" and root["groups"][0]["id"] == "/shop"
    again = client.post("/v2/groups", json=group_spec())
    assert again.status_code == 409 and "deployments" not in again.json()
    assert client.get("/v2/groups/missing").status_code == 404


def test_group_put_removes_omitted_apps(client: httpx.Client, mara: MarathonEmulator) -> None:
    wait_gone(client, client.post("/v2/groups", json=group_spec()).json()["deploymentId"])
    version_before = mara.apps()["/shop/api"]["version"]
    spec = group_spec()
    spec["apps"] = [{"id": "/shop/api", "cmd": "b", "instances": 2}]
    dry = client.put("/v2/groups/shop", params={"dryRun": "true"}, json=spec)
    assert dry.status_code == 200
    assert dry.json()["steps"] == [
        {"actions": [{"action": "StopApplication", "app": "/shop/front"}]}
    ]
    assert "/shop/front" in mara.apps()
    response = client.put("/v2/groups/shop", json=spec)
    assert response.status_code == 200 and response.headers["Marathon-Deployment-Id"]
    apps = mara.apps()
    assert sorted(apps) == ["/shop/api", "/shop/data/db"]
    assert apps["/shop/api"]["version"] == version_before  # unchanged apps are not redeployed
    assert client.get("/v2/deployments").json()[0]["affectedApps"] == ["/shop/front"]


def test_group_child_outside_is_422(client: httpx.Client) -> None:
    spec = {"id": "/shop", "apps": [{"id": "/elsewhere/x", "cmd": "a"}]}
    response = client.post("/v2/groups", json=spec)
    assert response.status_code == 422
    assert response.json()["details"][0]["path"] == "/apps(0)/id"
    nested = {"id": "/shop", "groups": [{"id": "sub", "apps": [{"id": "/shop/x", "cmd": "a"}]}]}
    assert client.put("/v2/groups/shop", json=nested).json()["details"][0]["path"] == (
        "/groups(0)/apps(0)/id"
    )


def test_group_versions_rollback_and_delete(client: httpx.Client, mara: MarathonEmulator) -> None:
    first = client.post("/v2/groups", json=group_spec()).json()
    wait_gone(client, first["deploymentId"])
    spec = group_spec()
    spec["apps"] = []
    wait_gone(client, client.put("/v2/groups/shop", json=spec).json()["deploymentId"])
    assert sorted(mara.apps()) == ["/shop/data/db"]
    versions = client.get("/v2/groups/shop/versions").json()
    assert isinstance(versions, list) and first["version"] in versions
    rollback = client.put("/v2/groups/shop", json={"version": first["version"]})
    assert rollback.status_code == 200
    assert sorted(mara.apps()) == ["/shop/api", "/shop/data/db", "/shop/front"]
    wait_gone(client, rollback.json()["deploymentId"])
    scaled = client.put("/v2/groups/shop", json={"scaleBy": 2})
    assert scaled.status_code == 200
    assert mara.apps()["/shop/api"]["instances"] == 4
    wait_gone(client, scaled.json()["deploymentId"])
    deleted = client.delete("/v2/groups/shop")
    assert deleted.status_code == 200 and deleted.headers["Marathon-Deployment-Id"]
    assert mara.apps() == {}
    assert client.get("/v2/groups/shop").status_code == 404


# ------------------------------------------------------------------------------ deployments


def test_delete_deployment_rolls_back(client: httpx.Client, mara: MarathonEmulator) -> None:
    deploy(client, web(cmd="old"))
    change = client.put("/v2/apps/web", json={"cmd": "new"}).json()["deploymentId"]
    cancelled = client.delete(f"/v2/deployments/{change}")
    assert cancelled.status_code == 200
    rollback_id = cancelled.json()["deploymentId"]
    assert rollback_id != change and cancelled.headers["Marathon-Deployment-Id"] == rollback_id
    assert [d["id"] for d in client.get("/v2/deployments").json()] == [rollback_id]
    assert mara.apps()["/web"]["cmd"] == "old"
    assert client.delete("/v2/deployments/not-a-deployment").status_code == 404


def test_delete_deployment_force_is_202_empty(client: httpx.Client, mara: MarathonEmulator) -> None:
    deploy(client, web(cmd="old"))
    change = client.put("/v2/apps/web", json={"cmd": "new"}).json()["deploymentId"]
    forced = client.delete(f"/v2/deployments/{change}", params={"force": "true"})
    assert forced.status_code == 202 and forced.content == b""
    assert client.get("/v2/deployments").json() == []
    assert mara.apps()["/web"]["cmd"] == "new"


def test_rollback_of_a_creation_removes_the_app(
    client: httpx.Client, mara: MarathonEmulator
) -> None:
    created = client.post("/v2/apps", json=web()).headers["Marathon-Deployment-Id"]
    assert client.delete(f"/v2/deployments/{created}").status_code == 200
    assert "/web" not in mara.apps()


def test_too_many_deployments_is_403() -> None:
    mara = MarathonEmulator(deploy_duration=5, max_running_deployments=1)
    with mara.serve() as server, httpx.Client(base_url=server.url) as http:
        assert http.post("/v2/apps", json=web()).status_code == 201
        response = http.post("/v2/apps", json=web(id="/other"))
        assert response.status_code == 403 and "message" in response.json()


# ------------------------------------------------------------------------------ failure injection


def test_fail_next_deployment(client: httpx.Client, mara: MarathonEmulator) -> None:
    mara.fail_next_deployment("web")
    deployment_id = client.post("/v2/apps", json=web(instances=3)).headers["Marathon-Deployment-Id"]
    wait_gone(client, deployment_id)
    app = client.get("/v2/apps/web").json()["app"]
    assert app["deployments"] == [] and app["tasksRunning"] < app["instances"]
    failed = [e for e in mara.events if e["eventType"] == "deployment_failed"]
    assert [e["id"] for e in failed] == [deployment_id]
    # only the next deployment fails
    deploy(client, web(instances=3, cmd="again"))
    assert client.get("/v2/apps/web").json()["app"]["tasksRunning"] == 3


def test_hang_next_deployment_until_cancelled(client: httpx.Client, mara: MarathonEmulator) -> None:
    mara.hang_next_deployment("/web")
    deployment_id = client.post("/v2/apps", json=web()).headers["Marathon-Deployment-Id"]
    time.sleep(DURATION * 3)
    assert [d["id"] for d in mara.deployments()] == [deployment_id]
    assert client.put("/v2/apps/web", json={"instances": 5}).status_code == 409
    assert (
        client.delete(f"/v2/deployments/{deployment_id}", params={"force": "true"}).status_code
        == 202
    )
    assert mara.deployments() == []


def test_make_unhealthy(client: httpx.Client, mara: MarathonEmulator) -> None:
    mara.make_unhealthy("/web")
    deploy(client, web(healthChecks=[{"protocol": "COMMAND", "command": {"value": "true"}}]))
    app = client.get("/v2/apps/web").json()["app"]
    assert app["tasksRunning"] == 2 and app["tasksHealthy"] == 0 and app["tasksUnhealthy"] == 2


def test_fail_next_and_delay(client: httpx.Client, mara: MarathonEmulator) -> None:
    mara.fail_next(status=503, times=2, path_prefix="/v2/apps")
    assert client.get("/v2/info").status_code == 200
    assert client.get("/v2/apps").status_code == 503
    assert client.get("/v2/apps").status_code == 503
    assert client.get("/v2/apps").status_code == 200
    mara.set_delay(0.3, path_prefix="/v2/info")
    started = time.monotonic()
    client.get("/v2/info")
    assert time.monotonic() - started >= 0.3
    mara.set_delay(0, path_prefix="/v2/info")
    started = time.monotonic()
    client.get("/v2/info")
    assert time.monotonic() - started < 0.3
    assert [r.status for r in mara.requests if r.path == "/v2/apps"] == [503, 503, 200]


def test_foreign_deployment_locks_the_app(client: httpx.Client, mara: MarathonEmulator) -> None:
    mara.load_app(web())
    foreign = mara.start_foreign_deployment("/web", duration=0.3)
    response = client.put("/v2/apps/web", json={"instances": 1})
    assert response.status_code == 409 and response.json()["deployments"] == [{"id": foreign}]
    wait_gone(client, foreign)
    assert client.put("/v2/apps/web", json={"instances": 1}).status_code == 200


def test_request_log_and_count(client: httpx.Client, mara: MarathonEmulator) -> None:
    client.post("/v2/apps", json=web())
    client.get("/v2/apps", params={"label": "DPLOY==x"})
    record = mara.requests[0]
    assert (record.method, record.path, record.status) == ("POST", "/v2/apps", 201)
    assert record.body["id"] == "/web"
    assert mara.requests[1].query == {"label": "DPLOY==x"}
    assert mara.count("POST", "/v2/apps") == 1 and mara.count("GET", "/v2") == 1
    mara.reset_log()
    assert mara.requests == []


def test_load_app_is_already_deployed(client: httpx.Client, mara: MarathonEmulator) -> None:
    stored = mara.load_app({"id": "nested/app", "cmd": "x", "instances": 3})
    assert stored["id"] == "/nested/app"
    app = client.get("/v2/apps/nested/app").json()["app"]
    assert app["tasksRunning"] == 3 and app["deployments"] == []
    assert client.get("/v2/groups/nested").status_code == 200
    with pytest.raises(ValueError):
        mara.load_app({"id": "/Bad", "cmd": "x"})


def test_event_stream(client: httpx.Client, mara: MarathonEmulator) -> None:
    seen: list[str] = []
    with client.stream("GET", "/v2/events", headers={"Accept": "text/event-stream"}) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: event_stream_attached"
        client.post("/v2/apps", json=web())
        for line in lines:
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if "deployment_success" in seen:
                break
    assert seen[:2] == ["deployment_info", "deployment_success"]


def test_control_endpoints(client: httpx.Client, mara: MarathonEmulator) -> None:
    assert client.post("/_emulator/fail_next", json={"status": 500}).status_code == 200
    assert client.get("/v2/apps").status_code == 500
    assert client.get("/_emulator/requests").json()[0]["status"] == 500
