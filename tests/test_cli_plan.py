"""`autodeployer plan` end to end: CLI subprocess, Git over smart HTTP, Sesam emulator; nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import history_rows, run_cli


def test_plan_exit_codes_formats_revisions_and_nothing_written(app_env, sesam: SesamEmulator,
                                                               config_repo: WorkRepo):
    text = run_cli(app_env, "plan")
    assert text.returncode == 1, text.stderr
    assert "+ pipe orders" in text.stdout
    as_json = json.loads(run_cli(app_env, "plan", "--format", "json").stdout)
    assert as_json["apps"][0]["exit_code"] == 1
    assert any(c["id"] == "orders" for c in as_json["apps"][0]["changes"])
    markdown = run_cli(app_env, "plan", "--format", "markdown").stdout
    assert "<details>" in markdown and "```diff" in markdown
    assert sesam.put_count == 0
    assert not (Path(app_env["STATE_DIR"]) / "history.sqlite3").exists() or _rows(app_env) == 0

    assert run_cli(app_env, "sync").returncode == 0
    rows = _rows(app_env)
    assert run_cli(app_env, "plan").returncode == 0
    old = config_repo.head
    config_repo.write({"pipes/orders.conf.json": "{"})
    config_repo.commit("broken")
    config_repo.push()
    broken = run_cli(app_env, "plan")
    assert broken.returncode == 2
    assert "orders.conf.json" in broken.stdout
    assert run_cli(app_env, "plan", "--revision", old).returncode == 0
    assert sesam.put_count == 1
    assert _rows(app_env) == rows


def _rows(app_env: dict[str, str]) -> int:
    return len(history_rows(Path(app_env["STATE_DIR"])))


def test_plan_of_a_branch_leaves_the_followed_branch_alone(app_env, sesam: SesamEmulator, config_repo: WorkRepo):
    assert run_cli(app_env, "sync").returncode == 0
    followed = config_repo.head
    config_repo.git("checkout", "-q", "-b", "feature")
    config_repo.write({"pipes/extra.conf.json": '{"_id": "extra", "type": "pipe"}'})
    config_repo.commit("extra pipe")
    config_repo.push("feature")
    planned = run_cli(app_env, "plan", "--revision", "feature")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert "+ pipe extra" in planned.stdout
    assert run_cli(app_env, "plan").returncode == 0  # the followed branch still at its head
    assert config_repo.git("rev-parse", "master").strip() == followed
    assert sesam.put_count == 1


def test_markdown_cuts_a_long_diff_and_links_the_full_plan():
    from autodeployer.model import Action, Change, Plan
    from autodeployer.plans import PlanReport, render_markdown

    report = PlanReport(app="node", revision="a" * 40,
                        plan=Plan(changes=[Change(Action.CHANGE, "orders", "pipe", "+x\n" * 500)]))
    text = render_markdown(report, limit=100, link="https://ci.example/plan")
    assert text.startswith("**node**: 1 changed")
    assert "(truncated; full plan: https://ci.example/plan)" in text
    assert len(text) < 400
