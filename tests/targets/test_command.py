"""Command target end to end: the CLI as a subprocess, Git over smart HTTP, a real deploy command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autodeployer.logs import Redactor
from autodeployer.model import Tree
from autodeployer.sources.spec import SourceSpec
from autodeployer.targets.base import SyncContext, TargetDeps
from autodeployer.targets.command import Output, Spec, create
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

from ..helpers import GIT_TOKEN, MARATHON_TOKEN, base_env, history_rows, run_cli

# Exported with the tree and run by the target: records what the command saw, one JSON line per run.
RECORDER = """\
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd(),
                          "files": sorted(os.listdir("."))}) + "\\n")
print("deployed", os.environ.get("AUTODEPLOYER_REVISION"))
"""


@pytest.fixture
def deploy_repo(tmp_path: Path, git_server: GitHttpServer) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "deploy.git", tmp_path / "deploy-work")
    repo.write({"deploy/record.py": RECORDER, "deploy/app.conf": "version=1\n", "README.md": "outside\n"})
    repo.commit("initial")
    repo.push()
    return repo


@pytest.fixture
def runs_file(tmp_path: Path) -> Path:
    return tmp_path / "runs.jsonl"


@pytest.fixture
def env(tmp_path: Path, git_server: GitHttpServer, deploy_repo: WorkRepo, runs_file: Path) -> dict[str, str]:
    return base_env(
        GIT_URL=git_server.url_for("acme/deploy.git"),
        GITHUB_TOKEN=GIT_TOKEN,
        TARGET="command",
        SYNC_ROOT="deploy",
        DEPLOY_COMMAND=f"{sys.executable} record.py {runs_file}",
        APP_NAME="deployer",
        STATE_DIR=str(tmp_path / "state"),
        MARATHON_TOKEN=MARATHON_TOKEN,  # a secret of the service the command must not see
        EXTRA_SETTING="passed-through",
    )


def alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie stays until init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def push(repo: WorkRepo, files: dict[str, str | None], message: str) -> None:
    repo.write(files)
    repo.commit(message)
    repo.push()


def test_runs_once_per_subtree_revision_with_revision_variables_and_no_secrets(
    env, deploy_repo: WorkRepo, runs_file: Path, git_server: GitHttpServer
):
    first = run_cli({**env, "COMMAND_PASS_ENV": "EXTRA_SETTING"}, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "synced" in first.stdout
    [seen] = runs(runs_file)
    assert seen["env"]["AUTODEPLOYER_REVISION"] == deploy_repo.head
    assert seen["env"]["AUTODEPLOYER_BRANCH"] == "master"
    assert seen["env"]["AUTODEPLOYER_REF"] == "refs/heads/master"
    assert seen["env"]["AUTODEPLOYER_REPO"] == git_server.url_for("acme/deploy.git")
    assert seen["env"]["AUTODEPLOYER_APP"] == "deployer"
    assert seen["env"]["EXTRA_SETTING"] == "passed-through"  # listed in COMMAND_PASS_ENV
    everything = json.dumps(seen)
    assert GIT_TOKEN not in everything and MARATHON_TOKEN not in everything
    assert not {"GITHUB_TOKEN", "MARATHON_TOKEN", "GIT_URL", "STATE_DIR"} & set(seen["env"])
    assert seen["files"] == ["app.conf", "record.py"]  # SYNC_ROOT's files only, in a fresh directory
    assert not Path(seen["cwd"]).exists()  # and that directory is gone afterwards

    push(deploy_repo, {"README.md": "docs only\n"}, "outside SYNC_ROOT")
    outside = run_cli(env, "sync")
    assert outside.returncode == 0 and "no-change" in outside.stdout
    assert len(runs(runs_file)) == 1

    push(deploy_repo, {"deploy/app.conf": "version=2\n"}, "inside SYNC_ROOT")
    inside = run_cli(env, "sync")
    assert inside.returncode == 0 and "synced" in inside.stdout
    assert len(runs(runs_file)) == 2
    assert "EXTRA_SETTING" not in runs(runs_file)[1]["env"]  # not listed this time
    assert [r["result"] for r in history_rows(Path(env["STATE_DIR"]), "deployer")] == ["synced", "no-change", "synced"]


def test_failure_is_recorded_with_its_output_and_retried(env, runs_file: Path):
    failing = {**env, "COMMAND_SHELL": "true",
               "DEPLOY_COMMAND": "echo preparing; echo 'boom-marker: disk full' >&2; exit 3"}
    result = run_cli(failing, "sync")
    assert result.returncode == 2
    assert "command exited with code 3" in result.stdout
    row = history_rows(Path(env["STATE_DIR"]), "deployer")[-1]
    assert row["result"] == "failed"
    assert "preparing" in row["error"] and "boom-marker: disk full" in row["error"]

    fixed = run_cli(env, "sync")  # the same revision runs again until it succeeds
    assert fixed.returncode == 0 and "synced" in fixed.stdout
    assert len(runs(runs_file)) == 1


def test_timeout_kills_the_whole_process_group(env, tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    slow = {**env, "COMMAND_SHELL": "true", "COMMAND_TIMEOUT": "1",
            "DEPLOY_COMMAND": f"sleep 60 & echo $! > {pid_file}; echo started; wait"}
    started = time.monotonic()
    result = run_cli(slow, "sync")
    assert result.returncode == 2
    assert time.monotonic() - started < 15
    assert "command timed out after 1 s" in result.stdout
    assert "started" in history_rows(Path(env["STATE_DIR"]), "deployer")[-1]["error"]
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not alive(child)  # the background child died with the command


def test_configuration_errors_are_clear(env):
    missing = run_cli({k: v for k, v in env.items() if k != "DEPLOY_COMMAND"}, "sync")
    assert missing.returncode == 2 and "DEPLOY_COMMAND is required" in missing.stderr
    unbalanced = run_cli({**env, "DEPLOY_COMMAND": "echo 'oops"}, "sync")
    assert unbalanced.returncode == 2 and "cannot split the command" in unbalanced.stderr


# --------------------------------------------------------------------------- in-process: output capture
class _Source:
    """Stands in for GitSource.export: the tree is one script."""

    def __init__(self, script: str) -> None:
        self.script = script

    async def export(self, sha: str, dest: Path) -> None:
        (dest / "run.py").write_text(self.script)


class _App:
    name = "unit"

    source = SourceSpec(url="https://git.example.org/acme/deploy.git", branch="main")


def _apply(tmp_path: Path, script: str, **spec: Any) -> Any:
    deps = TargetDeps(http=None, redactor=Redactor(["topsecret-value-1"]), state_dir=tmp_path,  # type: ignore[arg-type]
                      source=_Source(script))  # type: ignore[arg-type]
    target = create(Spec(command=f"{sys.executable} run.py", **spec), deps)
    ctx = SyncContext(_App, Tree("ab" * 20, "tree-1", {}), {})  # type: ignore[arg-type]
    return asyncio.run(target.apply(asyncio.run(target.plan(ctx)), ctx))


def test_output_is_captured_capped_and_redacted(tmp_path: Path):
    report = _apply(tmp_path, "print('x' * 5000); print('topsecret-value-1 end')", output_limit=1024)
    assert report.memory == {"tree_id": "tree-1"}
    assert report.details["exit_code"] == 0 and report.details["output_truncated"] is True
    output = report.details["output"]
    assert output.startswith("[... ") and "truncated" in output.splitlines()[0]
    assert output.rstrip().endswith("*** end") and "topsecret-value-1" not in output


def test_output_buffer_keeps_the_tail():
    buffer = Output(limit=10)
    for chunk in (b"0123456789", b"abcdef"):
        buffer.add(chunk)
    assert bytes(buffer.data) == b"6789abcdef" and buffer.dropped == 6
