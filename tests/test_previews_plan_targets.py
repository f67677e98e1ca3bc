"""`autodeployer plan` (what previews run) for the Marathon and command targets: prune candidates, what the
deploy command would receive, and nothing written or run. CLI subprocess against the Marathon emulator and a
real deploy command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator

from .helpers import GIT_TOKEN, base_env, run_cli
from .targets.test_command import RECORDER, runs
from .targets.test_marathon import deployed, env, mara, push, shop_repo  # noqa: F401  (fixtures)


def test_marathon_plan_lists_prune_candidates_and_writes_nothing(env: dict[str, str], shop_repo: WorkRepo,  # noqa: F811
                                                                 deployed: MarathonEmulator) -> None:  # noqa: F811
    deployed.load_app({"id": "/not-ours", "cmd": "x", "labels": {"DPLOY": "someone-else"}})
    push(shop_repo, {"specs/worker.json": None}, "drop the worker")
    kept = run_cli(env, "plan", "--format", "json")
    [report] = json.loads(kept.stdout)["apps"]
    assert kept.returncode == 0, kept.stderr  # PRUNE=false: nothing to change, a warning
    assert any("would prune /worker" in w for w in report["warnings"])
    pruned = run_cli({**env, "PRUNE": "true"}, "plan", "--format", "json")
    [report] = json.loads(pruned.stdout)["apps"]
    assert pruned.returncode == 1
    assert [(c["action"], c["id"]) for c in report["changes"]] == [("remove", "/worker")]
    assert report["reason"] is None and report["revision"] == shop_repo.head
    assert deployed.count("PUT") == 0 and deployed.count("DELETE") == 0


@pytest.fixture
def command_repo(tmp_path: Path, git_server: GitHttpServer) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "deploy.git", tmp_path / "deploy-work")
    repo.write({"deploy/record.py": RECORDER, "deploy/app.conf": "version=1\n", "README.md": "outside\n"})
    repo.commit("initial")
    repo.push()
    return repo


@pytest.fixture
def command_env(tmp_path: Path, git_server: GitHttpServer, command_repo: WorkRepo) -> dict[str, str]:
    return base_env(GIT_URL=git_server.url_for("acme/deploy.git"), GITHUB_TOKEN=GIT_TOKEN, TARGET="command",
                    SYNC_ROOT="deploy", DEPLOY_COMMAND=f"{sys.executable} record.py {tmp_path / 'runs.jsonl'}",
                    APP_NAME="deployer", STATE_DIR=str(tmp_path / "state"))


def test_command_plan_says_what_the_command_would_receive_and_runs_nothing(
        command_env: dict[str, str], command_repo: WorkRepo, tmp_path: Path) -> None:
    runs_file = tmp_path / "runs.jsonl"
    first = json.loads(run_cli(command_env, "plan", "--format", "json").stdout)["apps"][0]
    assert first["exit_code"] == 1 and first["command"]["changed_paths"] is None  # nothing live yet
    assert runs(runs_file) == []
    assert run_cli(command_env, "sync").returncode == 0
    assert len(runs(runs_file)) == 1
    repo = command_repo
    repo.write({"deploy/app.conf": "version=2\n", "README.md": "outside, changed\n"})
    head = repo.commit("version 2")
    repo.push()
    planned = run_cli(command_env, "plan", "--format", "json")
    [report] = json.loads(planned.stdout)["apps"]
    assert planned.returncode == 1
    assert report["command"] == {"revision": head, "ref": "refs/heads/master", "changed_paths": ["app.conf"],
                                 "runs": True}
    text = run_cli(command_env, "plan").stdout
    assert f"deploy command would receive {head[:12]} of refs/heads/master; changed paths: app.conf" in text
    assert len(runs(runs_file)) == 1  # a plan never runs the deploy command
