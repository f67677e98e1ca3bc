"""The operator verbs as a person sees them: narrow terminals, colour, options, quiet output."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import httpx

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator

from .helpers import GIT_TOKEN, MARATHON_TOKEN, base_env, run_cli

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-8]|9[0-7])[0-9;]*m")  # a foreground colour, not bold


def break_config(repo: WorkRepo) -> None:
    repo.write({"pipes/broken.conf.json": '{"_id": "broken", "type": "pipe",'})
    repo.commit("broken")
    repo.push()


def in_a_terminal(env: dict[str, str], *args: str) -> str:
    """Run the CLI with its stdout on a pseudo-terminal, as a person would."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "autodeployer", *args], env=env, stdout=follower,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_status_in_80_columns_is_readable_and_names_the_problem_file(app_env, config_repo: WorkRepo):
    assert run_cli(app_env, "sync").returncode == 0
    break_config(config_repo)
    assert run_cli(app_env, "sync").returncode == 2
    result = run_cli({**app_env, "COLUMNS": "80"}, "status")
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert any("pipes/broken.conf.json" in line for line in lines), result.stdout  # whole, not folded
    assert "refused" in result.stdout


def test_no_color_is_honoured(app_env):
    coloured = in_a_terminal(app_env, "sync")
    assert COLOUR.search(coloured), coloured  # the terminal gets colour without NO_COLOR...
    plain = in_a_terminal({**app_env, "NO_COLOR": "1"}, "sync")
    assert "no-change" in plain or "synced" in plain
    assert not COLOUR.search(plain), plain  # ...and none with it
    status = in_a_terminal({**app_env, "NO_COLOR": "1"}, "status")
    assert "synced" in status and not COLOUR.search(status), status


def test_history_limit_must_be_positive(app_env, service):
    for bad in ("0", "-3"):
        result = run_cli(app_env, "history", "--limit", bad)
        assert result.returncode == 2 and "--limit" in result.stderr
    svc = service(app_env)
    answer = httpx.get(svc.url + "/api/apps/node/history?limit=-1")
    assert answer.status_code == 400 and "limit" in answer.json()["error"]
    assert httpx.get(svc.url + "/api/apps/node/history?limit=1").status_code == 200


def test_config_after_the_verb(app_env, tmp_path: Path, sesam):
    config = tmp_path / "apps.yaml"
    config.write_text(f"""
apps:
  - name: from-yaml
    source: {{url: "{app_env['GIT_URL']}", token_env: GITHUB_TOKEN}}
    target: {{kind: sesam, api_url: "{app_env['SESAM_API_URL']}", jwt_env: JWT}}
""")
    before = run_cli(app_env, "--config", str(config), "diff")
    after = run_cli(app_env, "diff", "--config", str(config))
    assert before.returncode == after.returncode == 1, after.stderr
    assert after.stdout.startswith("from-yaml: ") and before.stdout.startswith("from-yaml: ")


def test_human_verbs_print_no_log_lines(app_env, config_repo: WorkRepo):
    ok = run_cli(app_env, "sync")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    break_config(config_repo)
    refused = run_cli(app_env, "sync")
    assert refused.returncode == 2 and refused.stderr == "", refused.stderr
    assert run_cli(app_env, "status").stderr == ""
    logged = run_cli({**app_env, "LOG_LEVEL": "info"}, "sync")
    assert "sync finished" in logged.stderr  # still there when asked for


def test_history_does_not_repeat_the_summary_as_reason(app_env):
    failing = {**app_env, "SESAM_API_URL": "http://127.0.0.1:9/api"}
    assert run_cli(failing, "sync").returncode == 2
    out = run_cli(app_env, "history").stdout
    [head] = [line for line in out.splitlines() if " failed " in line]
    summary = head.split(": ", 1)[1]
    assert f"reason: {summary}" not in out, out


def test_history_json_is_the_api_rows(app_env):
    failing = {**app_env, "SESAM_API_URL": "http://127.0.0.1:9/api"}
    assert run_cli(failing, "sync").returncode == 2
    assert run_cli(app_env, "sync").returncode == 0
    result = run_cli(app_env, "history", "--json", "--limit", "5")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["result"], r["reason"]) for r in rows] == [("synced", None), ("failed", "target-unavailable")]
    assert rows[0]["revision"] and isinstance(rows[0]["details"], dict) and "+ " in rows[0]["diff"]


def test_top_level_help_is_not_truncated(app_env):
    out = run_cli(app_env, "--help").stdout
    assert "..." not in out.split("Commands:")[1], out
    assert "until SIGTERM" in " ".join(out.split())


def test_dploy_on_every_verb(tmp_path: Path, git_server, config_repo: WorkRepo):
    """A Marathon user with a dploy project is never told that JWT is required."""
    marathon = MarathonEmulator(token=MARATHON_TOKEN)
    with marathon.serve() as server:
        project = tmp_path / "project"
        project.mkdir()
        (project / "dploy.app").write_text(f"marathon_url: {server.url}\napp_name: shop\n"
                                           f"repo_url: {git_server.url_for('acme/config.git')}\n"
                                           "trigger_branch: master\n")
        (project / ".pat").write_text(GIT_TOKEN + "\n")
        env = base_env(STATE_DIR=str(tmp_path / "state"), MARATHON_TOKEN=MARATHON_TOKEN)
        for args in (["diff"], ["status"], ["history"], ["suspend", "--app", "shop"], ["resume", "--app", "shop"],
                     ["rollback", "--app", "shop", "--to", config_repo.head]):
            result = run_cli(env, *args, "--dploy", str(project))
            output = result.stdout + result.stderr
            assert "No such option" not in output and "JWT" not in output, f"{args}: {output}"
            assert "Traceback" not in output, f"{args}: {output}"
