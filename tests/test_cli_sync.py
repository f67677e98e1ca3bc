"""`autodeployer sync` / `diff` end to end: CLI subprocess, Git over smart HTTP, Sesam emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autodeployer_emulators.gitserver import GitDaemon, GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import (
    BASE_METADATA,
    BASE_PIPES,
    BASE_SYSTEMS,
    GIT_TOKEN,
    entity_json,
    history_rows,
    pipe,
    run_cli,
    sesam_files,
    stripped,
    system,
)


def desired_ids() -> set[str]:
    return {e["_id"] for e in BASE_PIPES + BASE_SYSTEMS} | {"node"}


def test_first_sync_applies_everything_and_second_sync_uploads_nothing(app_env, sesam: SesamEmulator):
    first = run_cli(app_env, "sync")
    assert first.returncode == 0, first.stderr
    assert "synced" in first.stdout
    assert set(stripped(sesam.entities())) == desired_ids()
    assert stripped(sesam.entities())["orders"] == BASE_PIPES[0]
    assert sesam.put_count == 1

    second = run_cli(app_env, "sync")
    assert second.returncode == 0, second.stderr
    assert "no-change" in second.stdout
    assert sesam.put_count == 1  # nothing uploaded when nothing differs


def test_formatting_only_commit_uploads_nothing(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    assert run_cli(app_env, "sync").returncode == 0
    reordered = {"source": BASE_PIPES[0]["source"], "type": "pipe", "_id": "orders"}
    config_repo.write({"pipes/orders.conf.json": json.dumps(reordered, indent=7) + "\n\n"})
    config_repo.commit("reformat")
    config_repo.push()

    result = run_cli(app_env, "sync")
    assert result.returncode == 0, result.stderr
    assert "no-change" in result.stdout
    assert config_repo.head[:12] in result.stdout
    assert sesam.put_count == 1


def test_add_change_and_remove_pipes_and_systems(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    assert run_cli(app_env, "sync").returncode == 0
    config_repo.write(
        {
            "pipes/invoices.conf.json": entity_json(pipe("invoices", dataset="erp")),
            "systems/crm.conf.json": entity_json(system("crm", url="http://crm2.example.org/%s")),
            "pipes/customers.conf.json": None,
        }
    )
    config_repo.commit("add invoices, move crm, drop customers")
    config_repo.push()

    result = run_cli(app_env, "sync")
    assert result.returncode == 0, result.stderr
    assert "1 added, 1 changed, 1 removed" in result.stdout
    live = stripped(sesam.entities())
    assert "customers" not in live
    assert live["invoices"] == pipe("invoices", dataset="erp")
    assert live["crm"]["url_pattern"] == "http://crm2.example.org/%s"
    assert sesam.put_count == 4  # the first upload, then one write per changed entity (targets/sesam_apply.py)


def test_nested_folders_array_files_and_ignored_files(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    config_repo.write(
        {
            "pipes/sales/eu/orders-eu.conf.json": entity_json(pipe("orders-eu")),
            "systems/bundle.conf.json": json.dumps([system("s3"), system("s4")]),
            "pipes/.gitkeep": "",
            "pipes/notes.txt": "not config",
            "docs/pipes/x.conf.json": entity_json(pipe("not-deployed")),
        }
    )
    config_repo.commit("nested and arrays")
    config_repo.push()
    result = run_cli(app_env, "sync")
    assert result.returncode == 0, result.stderr
    live = stripped(sesam.entities())
    assert {"orders-eu", "s3", "s4"} <= set(live)
    assert "not-deployed" not in live


def test_sync_root_subdirectory(tmp_path: Path, git_server: GitHttpServer, sesam: SesamEmulator, app_env):
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "multi.git", tmp_path / "work-multi")
    files = sesam_files([pipe("prod-pipe")], [system("prod-sys")], BASE_METADATA, root="sesam-home/prod")
    files.update(sesam_files([pipe("test-pipe")], [], None, root="sesam-home/test"))
    repo.write(files)
    repo.commit("two nodes in one repo")
    repo.push()
    env = {**app_env, "GIT_URL": git_server.url_for("acme/multi.git"), "SYNC_ROOT": "/sesam-home/prod/"}
    result = run_cli(env, "sync")
    assert result.returncode == 0, result.stderr
    assert set(stripped(sesam.entities())) == {"prod-pipe", "prod-sys", "node"}


def test_missing_sync_root_is_refused(app_env, sesam: SesamEmulator):
    result = run_cli({**app_env, "SYNC_ROOT": "no/such/dir"}, "sync")
    assert result.returncode == 2
    assert "SYNC_ROOT 'no/such/dir' does not exist" in result.stdout
    assert sesam.put_count == 0


def test_git_daemon_source(tmp_path: Path, git_daemon: GitDaemon, config_repo: WorkRepo, app_env, sesam):
    env = {**app_env, "GIT_URL": git_daemon.url_for("acme/config.git")}
    env.pop("GITHUB_TOKEN")
    result = run_cli(env, "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(stripped(sesam.entities())) == desired_ids()


def test_wrong_git_token_is_a_clear_error_without_the_token(app_env, sesam):
    result = run_cli({**app_env, "GITHUB_TOKEN": "wrong-token-value-123"}, "sync")
    assert result.returncode == 2
    assert "failed" in result.stdout
    assert "wrong-token-value-123" not in result.stdout + result.stderr
    assert sesam.put_count == 0


def test_idle_sync_does_not_fetch(app_env, git_server: GitHttpServer, sesam):
    assert run_cli(app_env, "sync").returncode == 0
    git_server.reset_stats()
    assert run_cli(app_env, "sync").returncode == 0
    posts = [r for r in git_server.requests if r.method == "POST"]
    # protocol v2: the head check is one ls-refs POST; a fetch would be a second POST.
    assert len(posts) == 1, [(r.method, r.path) for r in git_server.requests]


# --------------------------------------------------------------------------- guards
@pytest.mark.parametrize(
    "files, expected",
    [
        ({"pipes/broken.conf.json": '{"_id": "broken", "type": "pipe",'}, "pipes/broken.conf.json: invalid JSON"),
        ({"pipes/noid.conf.json": '{"type": "pipe"}'}, "pipes/noid.conf.json: entity #1 has no _id"),
        ({"pipes/notype.conf.json": '{"_id": "notype"}'}, "pipes/notype.conf.json: notype: has no type"),
        (
            {"pipes/copy.conf.json": entity_json(pipe("orders"))},
            "_id defined twice: in pipes/copy.conf.json and in pipes/orders.conf.json",
        ),
        ({"systems/num.conf.json": "42"}, "systems/num.conf.json: expected an entity object or an array"),
    ],
    ids=["invalid-json", "missing-id", "missing-type", "duplicate-id", "not-an-object"],
)
def test_invalid_config_is_refused_and_node_untouched(app_env, config_repo, sesam, files, expected):
    assert run_cli(app_env, "sync").returncode == 0
    before = sesam.entities()
    config_repo.write(files)
    config_repo.commit("bad")
    config_repo.push()
    result = run_cli(app_env, "sync")
    assert result.returncode == 2
    assert "refused" in result.stdout
    assert expected in result.stdout
    assert sesam.entities() == before
    assert sesam.put_count == 1
    rows = history_rows(Path(app_env["STATE_DIR"]))
    assert rows[-1]["result"] == "refused"
    assert expected in rows[-1]["problems"]


def test_self_id_guard(app_env, config_repo, sesam):
    config_repo.write({"systems/watcher.conf.json": entity_json({"_id": "watcher", "type": "system:microservice",
                                                                 "docker": {"image": "x/y:1", "port": 5000}})})
    config_repo.commit("add the deployer itself")
    config_repo.push()
    env = {**app_env, "SELF_ID": "watcher"}
    assert run_cli(env, "sync").returncode == 0
    config_repo.write({"systems/watcher.conf.json": None})
    config_repo.commit("oops, the deployer is gone")
    config_repo.push()
    result = run_cli(env, "sync")
    assert result.returncode == 2
    assert "watcher: the deployer's own system (SELF_ID) is missing" in result.stdout
    assert "watcher" in stripped(sesam.entities())


def test_allow_empty_guard(app_env, config_repo, sesam):
    assert run_cli(app_env, "sync").returncode == 0
    config_repo.write({p: None for p in sesam_files(BASE_PIPES, BASE_SYSTEMS)})
    config_repo.commit("remove everything")
    config_repo.push()
    refused = run_cli(app_env, "sync")
    assert refused.returncode == 2
    assert "removes all 4 managed entities" in refused.stdout
    assert len(sesam.entities()) == 5

    allowed = run_cli({**app_env, "ALLOW_EMPTY": "yes"}, "sync")
    assert allowed.returncode == 0, allowed.stdout
    assert [e["_id"] for e in sesam.entities()] == ["node"]


def test_node_rejection_reports_each_validation_error(app_env, config_repo, sesam):
    assert run_cli(app_env, "sync").returncode == 0
    config_repo.write({"systems/svc.conf.json": entity_json({"_id": "svc", "type": "system:microservice"})})
    config_repo.commit("microservice without docker settings")
    config_repo.push()
    result = run_cli(app_env, "sync")
    assert result.returncode == 2
    assert "the node rejected the configuration" in result.stdout
    assert "svc: " in result.stdout  # '<_id>: <elements>: <msg>'
    assert "svc" not in stripped(sesam.entities())
    assert history_rows(Path(app_env["STATE_DIR"]))[-1]["result"] == "failed"


def test_node_unreachable_then_back(app_env, sesam: SesamEmulator):
    down = run_cli({**app_env, "SESAM_API_URL": "http://127.0.0.1:9/api"}, "sync")
    assert down.returncode == 2
    assert "GET http://127.0.0.1:9/api/config" in down.stdout
    sesam.fail_next(503, times=3)  # the first GET and its two retries
    busy = run_cli(app_env, "sync")
    assert busy.returncode == 2
    assert "503" in busy.stdout
    assert sesam.count("GET", "/api/config") == 3
    back = run_cli(app_env, "sync")
    assert back.returncode == 0, back.stdout
    assert set(stripped(sesam.entities())) == desired_ids()


def test_dry_run_and_diff_exit_codes(app_env, sesam, config_repo):
    planned = run_cli(app_env, "sync", "--dry-run")
    assert planned.returncode == 1
    assert "+ pipe orders" in planned.stdout
    assert sesam.put_count == 0
    diff = run_cli(app_env, "diff")
    assert diff.returncode == 1
    assert '+  "_id": "orders"' in diff.stdout
    assert run_cli(app_env, "sync").returncode == 0
    assert run_cli(app_env, "sync", "--dry-run").returncode == 0
    assert run_cli(app_env, "diff").returncode == 0
    config_repo.write({"pipes/orders.conf.json": "{"})
    config_repo.commit("broken")
    config_repo.push()
    assert run_cli(app_env, "diff").returncode == 2


def test_restart_keeps_history(app_env, config_repo):
    assert run_cli(app_env, "sync").returncode == 0
    config_repo.write({"pipes/extra.conf.json": entity_json(pipe("extra"))})
    config_repo.commit("extra")
    config_repo.push()
    assert run_cli(app_env, "sync").returncode == 0
    rows = history_rows(Path(app_env["STATE_DIR"]), "node")
    assert [r["result"] for r in rows] == ["synced", "synced"]
    assert rows[1]["revision"] == config_repo.head
    assert rows[1]["summary"] == "1 added"
    assert '"_id": "extra"' in rows[1]["diff"]


# --------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(
    "override, message",
    [
        ({"SESAM_FORCE": "flase"}, "SESAM_FORCE: expected true/false/1/0/yes/no, got 'flase'"),
        ({"ALLOW_EMPTY": "ja"}, "ALLOW_EMPTY: expected true/false/1/0/yes/no, got 'ja'"),
        ({"JWT": ""}, "JWT is required"),
        ({"GIT_URL": ""}, "no repository configured"),
        ({"SYNC_INTERVAL": "soon"}, "SYNC_INTERVAL: expected a number"),
        ({"SYNC_ROOT": "../outside"}, "SYNC_ROOT: must stay inside the repository"),
    ],
)
def test_configuration_errors_are_clear(app_env, override, message):
    result = run_cli({**app_env, **override}, "sync")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_config_serves_many_apps(tmp_path: Path, git_server, config_repo, app_env):
    second = SesamEmulator(jwt="other-jwt-value-0001")
    with second.serve() as node2:
        config = tmp_path / "apps.yaml"
        config.write_text(
            f"""
service:
  state_dir: {tmp_path / 'yaml-state'}
defaults:
  source:
    url: {git_server.url_for('acme/config.git')}
    token_env: GITHUB_TOKEN
apps:
  - name: first
    target: {{kind: sesam, api_url: "{app_env['SESAM_API_URL']}", jwt_env: JWT}}
  - name: second
    target: {{kind: sesam, api_url: "{node2.url}/api", jwt_env: SECOND_JWT}}
    policy: {{interval: 0.5}}
"""
        )
        env = {k: v for k, v in app_env.items() if k not in ("GIT_URL", "STATE_DIR", "APP_NAME")}
        env["SECOND_JWT"] = "other-jwt-value-0001"
        result = run_cli(env, "--config", str(config), "sync")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "first: synced" in result.stdout and "second: synced" in result.stdout
        assert set(stripped(second.entities())) == desired_ids()
        only = run_cli(env, "--config", str(config), "sync", "--app", "second")
        assert only.returncode == 0 and "first" not in only.stdout
        unknown = run_cli(env, "--config", str(config), "sync", "--app", "nope")
        assert unknown.returncode == 2 and "no app named 'nope'" in unknown.stderr


def test_git_token_reaches_git_only_through_the_environment(app_env, git_server: GitHttpServer):
    result = run_cli({**app_env, "LOG_LEVEL": "debug"}, "sync")
    assert result.returncode == 0
    assert GIT_TOKEN not in result.stdout + result.stderr
    # the server saw authenticated requests: the token did reach git
    assert all(r.status != 401 for r in git_server.requests)
