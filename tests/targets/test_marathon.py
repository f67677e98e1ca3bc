"""Marathon target: spec parsing and diff in-process, then end to end over real Git HTTP and the
Marathon emulator, with the CLI as a subprocess (environment form) and a dploy project."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer.config.dploy import dploy_hook_url, load_dploy
from autodeployer.errors import Refused, TargetError
from autodeployer.logs import Redactor
from autodeployer.model import Result, SourceFile, Tree, Trigger
from autodeployer.runtime import build_runtime
from autodeployer.targets.base import SyncContext, TargetDeps
from autodeployer.targets.marathon import Spec, create
from autodeployer.targets.marathon.desired import parse_desired
from autodeployer.targets.marathon.diff import compared_view, removed_paths
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator

from ..helpers import GIT_TOKEN, MARATHON_TOKEN, base_env, history_rows, run_cli, wait_for

WEB = {"id": "web", "cmd": "python3 -m http.server 8080", "instances": 2, "cpus": 0.25, "env": {"MODE": "prod"},
       "upgradeStrategy": {"minimumHealthCapacity": 0.5}}
WORKER = {"id": "/worker", "cmd": "sleep 3600", "instances": 1,
          "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"}}]}
BACKEND = {"id": "/backend", "apps": [
    {"id": "api", "cmd": "serve-api", "instances": 2, "dependencies": ["db"]},
    {"id": "db", "cmd": "serve-db", "instances": 1},
]}
ALL_IDS = {"/web", "/worker", "/backend/api", "/backend/db"}


def spec_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2) + "\n"


def dploy_files(marathon_url: str, repo_url: str, app_name: str = "shop") -> dict[str, str]:
    return {
        "dploy.app": f"marathon_url: {marathon_url}\napp_name: {app_name}\nrepo_url: {repo_url}\n"
                     "public_node: 10.0.0.7\n",
        ".gitignore": ".pat\n",
        "specs/web.json": spec_json(WEB),
        "specs/worker.json": spec_json(WORKER),
        "specs/backend.json": spec_json(BACKEND),
        "README.md": "a dploy project\n",
    }


# --------------------------------------------------------------------------- in-process: parsing and diff
def tree_of(files: dict[str, str | bytes], root: str = "") -> Tree:
    def entry(path: str, data: str | bytes) -> SourceFile:
        raw = data.encode() if isinstance(data, str) else data
        return SourceFile(path, raw, "100644", len(raw))

    return Tree("c0ffee" * 6 + "abcd", "tree-1", {p: entry(p, d) for p, d in files.items()}, sync_root=root)


def test_desired_state_groups_by_structure_absolute_ids_and_label():
    files = {
        "specs/b-app.json": spec_json({"id": "mentions", "cmd": 'echo "groups" apps',
                                       "labels": {"DPLOY": "other", "team": "x"}}),
        "specs/a-group.json": spec_json({"id": "shop", "apps": [{"id": "web", "cmd": "w"}],
                                         "groups": [{"id": "inner", "apps": [{"id": "/shop/inner/db", "cmd": "d"}]}]}),
        "specs/nested/ignored.json": spec_json({"id": "ignored", "cmd": "i"}),
        "specs/notes.txt": "not a spec",
        "other/outside.json": spec_json({"id": "outside", "cmd": "o"}),
    }
    desired = parse_desired(tree_of(files), "specs", "shop")
    assert list(desired.apps) == ["/shop/web", "/shop/inner/db", "/mentions"]  # file-name order
    assert desired.apps["/mentions"].group is None  # the word "groups" in a string does not make a group
    assert desired.apps["/shop/inner/db"].group == "/shop"
    assert all(a.spec["labels"]["DPLOY"] == "shop" for a in desired.apps.values())
    assert desired.apps["/mentions"].spec["labels"] == {"DPLOY": "shop", "team": "x"}
    assert any("DPLOY='other' replaced by 'shop'" in w for w in desired.warnings)
    assert any("ignored 2 file(s)" in n for n in desired.notices)


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"specs/broken.json": '{"id": "x", '}, "specs/broken.json: invalid JSON"),
        ({"specs/bad.json": spec_json({"id": "Web_1", "cmd": "x"})}, "specs/bad.json: Web_1: invalid id"),
        ({"specs/noid.json": spec_json({"cmd": "x"})}, "specs/noid.json: app has no id"),
        ({"specs/g.json": spec_json({"id": "/shop", "apps": [{"id": "/elsewhere/web", "cmd": "x"}]})},
         "specs/g.json: /elsewhere/web: app id /elsewhere/web is not inside group /shop"),
        ({"specs/a.json": spec_json({"id": "web", "cmd": "x"}), "specs/b.json": spec_json({"id": "/web", "cmd": "y"})},
         "/web: app defined twice: in specs/a.json and in specs/b.json"),
        ({"specs/list.json": "[]"}, "specs/list.json: expected a JSON object"),
    ],
    ids=["invalid-json", "invalid-id", "missing-id", "child-outside-group", "duplicate", "not-an-object"],
)
def test_invalid_specs_are_refused_naming_the_file(files, expected):
    with pytest.raises(Refused) as caught:
        parse_desired(tree_of(files), "specs", "shop")
    assert expected in str(caught.value)


def test_subset_comparison_ignores_server_defaults_but_sees_removed_fields():
    want = {"id": "/web", "cmd": "x", "upgradeStrategy": {"minimumHealthCapacity": 0.5}, "labels": {"DPLOY": "shop"}}
    live = {"id": "/web", "cmd": "x", "instances": 1, "version": "2026-01-01T00:00:00.000Z",
            "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 1}, "labels": {"DPLOY": "shop"}}
    assert compared_view(live, want) == want
    # labels and env are maps: a key added in Marathon is a difference
    assert compared_view({**live, "labels": {"DPLOY": "shop", "x": "1"}}, want) != want
    # a field set by the last apply and deleted from Git since is a difference
    previous = {**want, "instances": 3, "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.2}}
    removed = removed_paths(previous, want)
    assert removed == [("upgradeStrategy", "maximumOverCapacity"), ("instances",)]
    assert compared_view(live, want, removed) != want


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def mara() -> Iterator[MarathonEmulator]:
    emulator = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=0.05)
    with emulator.serve() as server:
        emulator.url = server.url  # type: ignore[attr-defined]
        yield emulator


@pytest.fixture
def shop_repo(tmp_path: Path, git_server: GitHttpServer, mara: MarathonEmulator) -> WorkRepo:
    """acme/shop.git, a dploy project on its `dcos` branch, with an untracked .pat next to it."""
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "shop.git", tmp_path / "shop", branch="dcos")
    repo.write(dploy_files(mara.url, git_server.url_for("acme/shop.git")))  # type: ignore[attr-defined]
    repo.commit("dploy init")
    repo.push()
    (repo.work_dir / ".pat").write_text(GIT_TOKEN + "\n")
    return repo


@pytest.fixture
def env(tmp_path: Path, git_server: GitHttpServer, shop_repo: WorkRepo, mara: MarathonEmulator) -> dict[str, str]:
    return base_env(
        GIT_URL=git_server.url_for("acme/shop.git"),
        GITHUB_TOKEN=GIT_TOKEN,
        BRANCH="dcos",
        TARGET="marathon",
        MARATHON_URL=mara.url,  # type: ignore[attr-defined]
        MARATHON_TOKEN=MARATHON_TOKEN,
        APP_NAME="shop",
        DEPLOY_TIMEOUT="10",
        STATE_DIR=str(tmp_path / "state"),
    )


@pytest.fixture
def deployed(shop_repo: WorkRepo, mara: MarathonEmulator) -> MarathonEmulator:
    """The project already deployed, as a first sync leaves it (saves a CLI run per test)."""
    paths = ("specs/web.json", "specs/worker.json", "specs/backend.json")
    files = {p: (shop_repo.work_dir / p).read_text() for p in paths}
    for app in parse_desired(tree_of(files), "specs", "shop").apps.values():
        mara.load_app(app.spec)
    return mara


def push(repo: WorkRepo, files: dict[str, str | None], message: str = "update") -> None:
    repo.write(files)
    repo.commit(message)
    repo.push()


def sync(env: dict[str, str], **extra: str) -> Any:
    result = run_cli({**env, **extra}, "sync")
    result.output = result.stdout + result.stderr  # type: ignore[attr-defined]
    return result


def puts(mara: MarathonEmulator) -> list[str]:
    return [r.path for r in mara.requests if r.method == "PUT"]


def test_dploy_project_deployed_from_empty_then_second_sync_writes_nothing(
    tmp_path: Path, shop_repo: WorkRepo, mara: MarathonEmulator
):
    environ = base_env(MARATHON_TOKEN=MARATHON_TOKEN, STATE_DIR=str(tmp_path / "dploy-state"), PORT="8849",
                       COMMIT_STATUS="false")
    config = load_dploy(shop_repo.work_dir, environ)
    assert dploy_hook_url(config) == "http://10.0.0.7:8849/dploy"

    async def once() -> Any:
        runtime = build_runtime(config)
        try:
            return await runtime.reconcilers["shop"].sync(Trigger.MANUAL, force=True)
        finally:
            await runtime.aclose()

    first = asyncio.run(once())
    assert first.result is Result.SYNCED, (first.error, first.problems)
    assert first.revision == shop_repo.head
    apps = mara.apps()
    assert set(apps) == ALL_IDS
    assert all(app["labels"] == {"DPLOY": "shop"} for app in apps.values())
    assert apps["/backend/api"]["dependencies"] == ["/backend/db"]
    assert apps["/web"]["upgradeStrategy"] == {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 1}
    assert sorted(puts(mara)) == sorted(f"/v2/apps{i}" for i in ALL_IDS)
    assert all(r.query.get("partialUpdate") == "false" for r in mara.requests if r.method == "PUT")
    assert mara.count("POST") == 0 and mara.count("PUT", "/v2/groups") == 0
    for app_id in ALL_IDS:  # every deployment was followed to its end and the tasks are up
        status = mara.app_status(app_id)
        assert status["tasksRunning"] == status["instances"] and status["deployments"] == []

    second = asyncio.run(once())
    assert second.result is Result.NO_CHANGE, second.error  # the emulator's defaults are not drift
    assert len(puts(mara)) == 4


def test_changed_app_is_the_only_put_among_fifty(env, shop_repo: WorkRepo, mara: MarathonEmulator):
    many = {f"specs/app-{n:02d}.json": spec_json({"id": f"app-{n:02d}", "cmd": "run", "instances": 1})
            for n in range(46)}
    push(shop_repo, many, "46 more apps")
    first = sync(env)
    assert first.returncode == 0, first.output
    assert "50 added" in first.stdout
    assert len(mara.apps()) == 50

    mara.reset_log()
    push(shop_repo, {"specs/backend.json": spec_json(
        {**BACKEND, "apps": [{**BACKEND["apps"][0], "instances": 3}, BACKEND["apps"][1]]})}, "scale the api")
    changed = sync(env)
    assert changed.returncode == 0, changed.output
    assert "1 changed" in changed.stdout
    assert puts(mara) == ["/v2/apps/backend/api"]  # one app of a group: no group PUT, no sibling restarted
    assert mara.apps()["/backend/api"]["instances"] == 3
    assert mara.app_status("/backend/api")["tasksRunning"] == 3


def test_deployment_is_followed_to_its_end(env, mara: MarathonEmulator):
    mara.deploy_duration = 1.0
    started = time.monotonic()
    result = sync(env)
    assert result.returncode == 0, result.output
    assert time.monotonic() - started >= 1.0
    assert mara.deployments() == []
    polls = [r for r in mara.requests if r.method == "GET" and r.path == "/v2/deployments"]
    assert len(polls) >= 2  # polled while the deployments ran
    assert mara.app_status("/web")["tasksRunning"] == 2


def test_failing_deployment_is_reported_without_rollback(env, shop_repo, deployed):
    push(shop_repo, {"specs/web.json": spec_json({**WEB, "cmd": "broken-server"})})
    deployed.fail_next_deployment("/web")
    result = sync(env)
    assert result.returncode == 2
    assert "failed" in result.stdout
    assert "deployment failed for /web" in result.stdout
    assert "/web: 1 of 2 task(s) running" in result.stdout
    assert deployed.count("DELETE") == 0
    assert deployed.apps()["/web"]["cmd"] == "broken-server"  # left as Marathon has it
    row = history_rows(Path(env["STATE_DIR"]), "shop")[-1]
    assert row["result"] == "failed" and "1 of 2 task(s) running" in row["problems"]


def test_timed_out_deployment_is_rolled_back_when_asked(env, shop_repo, deployed):
    push(shop_repo, {"specs/web.json": spec_json({**WEB, "cmd": "never-ready"})})
    deployed.hang_next_deployment("/web")
    result = sync(env, DEPLOY_TIMEOUT="0.5", ROLLBACK_ON_FAILURE="true")
    assert result.returncode == 2, result.output
    assert "did not finish within 0.5 s" in result.stdout
    assert "rolled back" in result.stdout
    deletes = [r for r in deployed.requests if r.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].path.startswith("/v2/deployments/")
    assert deletes[0].query.get("force") is None  # a real rollback, not an abandoned deployment
    assert deployed.apps()["/web"]["cmd"] == WEB["cmd"]  # Marathon reverted the app
    assert deployed.deployments() == []
    row = history_rows(Path(env["STATE_DIR"]), "shop")[-1]
    assert row["result"] == "failed" and "rolled back" in row["error"]


def test_failed_deployment_of_an_update_is_rolled_back_to_the_previous_version(env, shop_repo, deployed):
    before = deployed.apps()["/web"]["version"]
    push(shop_repo, {"specs/web.json": spec_json({**WEB, "cmd": "crashes"})})
    deployed.fail_next_deployment("/web")
    result = sync(env, ROLLBACK_ON_FAILURE="true")
    assert result.returncode == 2
    assert f"rolled back: restored version {before}" in result.stdout
    assert deployed.apps()["/web"]["cmd"] == WEB["cmd"]
    assert deployed.app_status("/web")["tasksRunning"] == 2


def test_locked_app_waits_for_the_running_deployment(env, shop_repo, deployed):
    push(shop_repo, {"specs/web.json": spec_json({**WEB, "instances": 3})})
    foreign = deployed.start_foreign_deployment("/web", duration=60)
    deployed.reset_log()

    def end_foreign_deployment_once_refused() -> None:
        wait_for(lambda: any(r.status == 409 for r in deployed.requests), timeout=30, what="a locked 409")
        time.sleep(0.3)  # the deployer is now waiting on the lock
        headers = {"Authorization": f"token={MARATHON_TOKEN}"}
        httpx.delete(f"{deployed.url}/v2/deployments/{foreign}?force=true", headers=headers)  # type: ignore[attr-defined]

    helper = threading.Thread(target=end_foreign_deployment_once_refused)
    helper.start()
    result = sync(env)
    helper.join()
    assert result.returncode == 0, result.output
    calls = [(r.method, r.path, r.status) for r in deployed.requests]
    first_put = calls.index(("PUT", "/v2/apps/web", 409))
    released = calls.index(("DELETE", f"/v2/deployments/{foreign}", 202))
    assert ("GET", "/v2/deployments", 200) in calls[first_put:released]  # waited on the lock
    assert [c for c in calls if c[0] == "PUT"] == [("PUT", "/v2/apps/web", 409), ("PUT", "/v2/apps/web", 200)]
    assert calls.index(("PUT", "/v2/apps/web", 200)) > released  # retried only once it was released
    assert deployed.apps()["/web"]["instances"] == 3


def test_force_cancels_the_locking_deployment(env, shop_repo, deployed):
    push(shop_repo, {"specs/web.json": spec_json({**WEB, "instances": 3})})
    foreign = deployed.start_foreign_deployment("/web", duration=30)
    deployed.reset_log()
    result = sync(env, MARATHON_FORCE="true")
    assert result.returncode == 0, result.output
    [put] = [r for r in deployed.requests if r.method == "PUT"]
    assert put.status == 200 and put.query["force"] == "true"
    assert any(e.get("id") == foreign and e["eventType"] == "deployment_failed" for e in deployed.events)


def test_prune_off_warns_and_prune_on_removes_only_our_apps(env, shop_repo, deployed):
    deployed.load_app({"id": "/not-ours", "cmd": "x", "labels": {"DPLOY": "someone-else"}})
    push(shop_repo, {"specs/worker.json": None}, "drop the worker")

    kept = sync(env)
    assert kept.returncode == 0, kept.output
    assert "would prune /worker" in kept.output
    assert "/worker" in deployed.apps() and deployed.count("DELETE") == 0

    pruned = sync(env, PRUNE="true")
    assert pruned.returncode == 0, pruned.output
    assert "1 removed" in pruned.stdout
    assert set(deployed.apps()) == (ALL_IDS - {"/worker"}) | {"/not-ours"}

    push(shop_repo, {"specs": None}, "remove every spec")
    guarded = sync(env, PRUNE="true")
    assert guarded.returncode == 2 and "ALLOW_EMPTY" in guarded.stdout
    assert len(deployed.apps()) == 4
    emptied = sync(env, PRUNE="true", ALLOW_EMPTY="true")
    assert emptied.returncode == 0, emptied.output
    assert set(deployed.apps()) == {"/not-ours"}


def test_token_auth_is_required_and_never_shown(env, mara: MarathonEmulator):
    missing = sync({k: v for k, v in env.items() if k != "MARATHON_TOKEN"})
    assert missing.returncode == 2
    assert "401 unauthorized" in missing.stdout and "set MARATHON_TOKEN" in missing.stdout
    wrong = sync(env, MARATHON_TOKEN="dcos-wrong-token-0001")
    assert wrong.returncode == 2 and "rejected the DC/OS token" in wrong.stdout
    assert "dcos-wrong-token-0001" not in wrong.output
    assert mara.apps() == {}
    ok = sync(env, LOG_LEVEL="debug")  # the emulator accepts only 'Authorization: token=<t>'
    assert ok.returncode == 0, ok.output
    assert MARATHON_TOKEN not in ok.output


def test_field_removed_from_git_is_reset(env, shop_repo, mara: MarathonEmulator):
    assert sync(env).returncode == 0
    assert mara.apps()["/web"]["cpus"] == 0.25
    slim = {k: v for k, v in WEB.items() if k not in ("cpus", "upgradeStrategy")}
    push(shop_repo, {"specs/web.json": spec_json(slim)}, "use the default cpus and upgrade strategy")
    mara.reset_log()
    result = sync(env)
    assert result.returncode == 0, result.output
    assert "1 changed" in result.stdout
    assert '-  "cpus": 0.25' in history_rows(Path(env["STATE_DIR"]), "shop")[-1]["diff"]
    [put] = [r for r in mara.requests if r.method == "PUT"]
    assert put.path == "/v2/apps/web" and put.query["partialUpdate"] == "false"
    app = mara.apps()["/web"]
    assert app["cpus"] == 1.0 and app["upgradeStrategy"]["minimumHealthCapacity"] == 1
    again = sync(env)
    assert again.returncode == 0 and "no-change" in again.stdout


def test_invalid_spec_is_refused_and_marathon_untouched(env, shop_repo, deployed):
    push(shop_repo, {"specs/web.json": '{"id": "web", "cmd": ',
                     "specs/z.json": spec_json({"id": "Bad_Id", "cmd": "x"})})
    deployed.reset_log()
    result = sync(env)
    assert result.returncode == 2
    assert "refused" in result.stdout
    assert "specs/web.json: invalid JSON" in result.stdout
    assert "specs/z.json: Bad_Id: invalid id" in result.stdout
    assert deployed.count("PUT") == 0 and deployed.count("DELETE") == 0


# --------------------------------------------------------------------------- in-process against the emulator
class _App:
    name = "shop"


def _run_target(url: str, trees: list[Tree], **spec: Any) -> list[tuple[Any, Any]]:
    """Plan and apply each tree in turn with the target over real HTTP; (plan, report) per tree."""
    async def go() -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = []
        memory: dict[str, Any] = {}
        async with httpx.AsyncClient() as http:
            target = create(Spec(url=url, app_name="shop", **spec), TargetDeps(http, Redactor(), Path(".")))
            for tree in trees:
                ctx = SyncContext(_App, tree, dict(memory))  # type: ignore[arg-type]
                plan = await target.plan(ctx)
                report = await target.apply(plan, ctx) if not plan.empty else None
                if report is not None:
                    assert (await target.verify(plan, ctx)).empty
                    memory = report.memory
                out.append((plan, report))
        return out

    return asyncio.run(go())


def _tree(tree_id: str, specs: dict[str, dict[str, Any]]) -> Tree:
    return Tree("ab" * 20, tree_id, tree_of({f"specs/{n}": spec_json(s) for n, s in specs.items()}).files)


def test_group_dependencies_are_written_only_when_they_change():
    mara = MarathonEmulator(deploy_duration=0.01)
    group = {**BACKEND, "dependencies": ["/worker"]}
    trees = [
        _tree("t1", {"backend.json": group, "worker.json": WORKER}),
        _tree("t2", {"backend.json": group, "worker.json": WORKER}),
        _tree("t3", {"backend.json": BACKEND, "worker.json": WORKER}),  # dependencies deleted from Git
    ]
    with mara.serve() as server:
        (first, _), (second, _), (third, _) = _run_target(server.url, trees)
    assert [c.headline() for c in first.changes][-1] == "+ group /backend"
    assert second.empty
    assert [c.headline() for c in third.changes] == ["~ group /backend"]
    group_puts = [r for r in mara.requests if r.method == "PUT" and r.path.startswith("/v2/groups")]
    assert [r.body for r in group_puts] == [{"id": "/backend", "dependencies": ["/worker"]},
                                            {"id": "/backend", "dependencies": []}]
    assert set(mara.apps()) == {"/backend/api", "/backend/db", "/worker"}  # the group PUT kept its apps


def test_basic_auth_is_sent_when_configured():
    mara = MarathonEmulator(basic_auth=("ops", "pw-0123456789"), deploy_duration=0.01)
    with mara.serve() as server:
        [(plan, report)] = _run_target(server.url, [_tree("t1", {"web.json": WEB})],
                                       user="ops", password="pw-0123456789")
        assert plan.summary() == "1 added" and report is not None
        with pytest.raises(TargetError, match="set MARATHON_TOKEN"):
            _run_target(server.url, [_tree("t1", {"web.json": WEB})])


# --------------------------------------------------------------------------- the dploy CLI
def test_cli_serves_a_dploy_project_and_removes_its_hook(tmp_path: Path, shop_repo: WorkRepo, mara, github):
    """`sync --dploy DIR` reads dploy.app and .pat; `hooks register/remove --dploy` manage /dploy."""
    github.add_repo("acme", "shop", default_branch="dcos")
    env = base_env(MARATHON_TOKEN=MARATHON_TOKEN, STATE_DIR=str(tmp_path / "dploy-state"), DEPLOY_TIMEOUT="10",
                   GITHUB_API_URL=github.url, PORT="8123")  # .pat supplies the Git token
    synced = run_cli(env, "sync", "--dploy", str(shop_repo.work_dir))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert set(mara.apps()) == ALL_IDS
    assert all(app["labels"]["DPLOY"] == "shop" for app in mara.apps().values())
    assert GIT_TOKEN not in synced.stdout + synced.stderr

    registered = run_cli(env, "hooks", "register", "--dploy", str(shop_repo.work_dir))
    assert registered.returncode == 0, registered.stdout + registered.stderr
    [hook] = github.hooks("acme", "shop")
    assert hook["config"]["url"] == "http://10.0.0.7:8123/dploy"  # dploy's observer address, exactly
    removed = run_cli(env, "hooks", "remove", "--dploy", str(shop_repo.work_dir))
    assert removed.returncode == 0 and "removed hook" in removed.stdout
    assert github.hooks("acme", "shop") == []
