"""The Marathon emulator driven by marathon-python 0.13, Marathon's independent Python client.

The calls are those the product and its tests make (apps, groups, deployments, versions, info),
plus the error cases (bad token, 404, 409 locked and duplicate, 422 validation) and the task and
health fields a safe rollout reads.
"""

from __future__ import annotations

import collections
import collections.abc
from collections.abc import Iterator

import pytest

# marathon 0.13 still uses collections.Iterable, removed in Python 3.10; the shim is test-only.
collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]

from marathon import MarathonClient  # noqa: E402
from marathon.exceptions import ConflictError, MarathonHttpError, NotFoundError  # noqa: E402
from marathon.models import MarathonApp, MarathonHealthCheck  # noqa: E402

from autodeployer_emulators.marathon import FAIL_ENV, UNHEALTHY_ENV, MarathonEmulator  # noqa: E402

from ..helpers import MARATHON_TOKEN, wait_for  # noqa: E402


@pytest.fixture
def mara() -> Iterator[tuple[MarathonEmulator, MarathonClient]]:
    emulator = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=0.2)
    with emulator.serve() as server:
        yield emulator, MarathonClient(server.url, auth_token=MARATHON_TOKEN, timeout=10)


def web(instances: int = 2, **env: str) -> MarathonApp:
    check = MarathonHealthCheck(protocol="HTTP", path="/health", port_index=0)
    return MarathonApp(cmd="serve", instances=instances, cpus=0.1, mem=64, env=dict(env),
                       health_checks=[check], labels={"DPLOY": "shop"})


def settled(client: MarathonClient) -> bool:
    return not client.list_deployments()


def test_info_ping_and_auth(mara: tuple[MarathonEmulator, MarathonClient]) -> None:
    emulator, client = mara
    info = client.get_info()  # the client rejects http_port inside marathon_config
    assert info.name == "marathon" and info.http_config.http_port > 0
    assert info.zookeeper_config.zk_max_versions == emulator.max_versions
    assert client.ping() is not None
    stranger = MarathonClient(client.servers[0], auth_token="not-a-token")
    with pytest.raises(MarathonHttpError) as refused:
        stranger.list_apps()
    assert refused.value.status_code == 401


def test_app_lifecycle_and_errors(mara: tuple[MarathonEmulator, MarathonClient]) -> None:
    _, client = mara
    created = client.create_app("web", web())
    assert created.id == "/web" and created.deployments
    with pytest.raises(ConflictError):  # locked: a deployment of /web is running
        client.update_app("web", web(instances=3))
    wait_for(lambda: settled(client), timeout=10, what="deployment")
    with pytest.raises(ConflictError):  # duplicate id
        client.create_app("web", web())
    client.update_app("web", web(instances=3))
    wait_for(lambda: settled(client), timeout=10, what="deployment")
    app = client.get_app("web")
    assert (app.instances, app.tasks_running, app.tasks_healthy) == (3, 3, 3)
    assert len(client.list_versions("web")) == 2
    assert [a.id for a in client.list_apps(label="DPLOY==shop")] == ["/web"]
    with pytest.raises(NotFoundError):
        client.get_app("absent")
    with pytest.raises(MarathonHttpError) as invalid:
        client.create_app("worker", web(instances=-1))
    assert invalid.value.status_code == 422
    assert invalid.value.error_details[0]["path"] == "/instances"
    client.delete_app("web")
    wait_for(lambda: settled(client), timeout=10, what="deployment")
    assert client.list_apps() == []


def test_put_v2_apps_creates_and_updates_in_one_deployment(
        mara: tuple[MarathonEmulator, MarathonClient]) -> None:
    _, client = mara
    first, second = web(), web(instances=1)
    first.id, second.id = "/shop/web", "/shop/worker"
    result = client.update_apps([first, second])
    assert set(result) == {"deploymentId", "version"}
    [deployment] = client.list_deployments()
    assert deployment.id == result["deploymentId"]
    assert sorted(deployment.affected_apps) == ["/shop/web", "/shop/worker"]
    wait_for(lambda: settled(client), timeout=10, what="deployment")
    assert client.get_app("shop/worker").tasks_running == 1


def test_tasks_health_and_kills(mara: tuple[MarathonEmulator, MarathonClient]) -> None:
    _, client = mara
    client.create_app("web", web(instances=2))
    wait_for(lambda: settled(client), timeout=10, what="deployment")
    tasks = client.list_tasks()  # GET /v2/tasks
    assert len(tasks) == 2 and {t.app_id for t in tasks} == {"/web"}
    assert all(t.health_check_results[0].alive for t in tasks)
    killed = client.kill_task("web", tasks[0].id)  # DELETE /v2/apps/web/tasks/{id}
    assert killed.id == tasks[0].id
    after = {t.id for t in client.list_tasks("web")}
    assert len(after) == 2 and tasks[0].id not in after  # replaced by a new task
    client.kill_task("web", tasks[1].id, scale=True)
    wait_for(lambda: settled(client), timeout=10, what="scale-down")
    assert client.get_app("web").instances == 1
    assert len(client.kill_tasks("web")) == 1  # DELETE /v2/apps/web/tasks
    with pytest.raises(NotFoundError):
        client.kill_task("web", "web.no-such-task")


def test_unhealthy_and_failing_apps_by_spec(mara: tuple[MarathonEmulator, MarathonClient]) -> None:
    _, client = mara
    client.create_app("sick", web(instances=2, **{UNHEALTHY_ENV: "1"}))
    client.create_app("crashy", web(instances=2, **{FAIL_ENV: "1"}))
    wait_for(lambda: settled(client), timeout=10, what="deployments")
    sick = client.get_app("sick")
    assert (sick.tasks_running, sick.tasks_healthy, sick.tasks_unhealthy) == (2, 0, 2)
    result = sick.tasks[0].health_check_results[0]
    assert result.alive is False and result.consecutive_failures > 0 and result.last_failure_cause
    crashy = client.get_app("crashy")
    assert crashy.tasks_running < crashy.instances
    assert crashy.last_task_failure is not None
    assert crashy.last_task_failure.state == "TASK_FAILED"
    # The client leaves empty maps out and Marathon's update is partial: switch it off explicitly.
    client.update_app("sick", web(instances=2, **{UNHEALTHY_ENV: "0"}))
    wait_for(lambda: settled(client), timeout=10, what="deployment")
    assert client.get_app("sick").tasks_healthy == 2
