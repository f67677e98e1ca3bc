"""An operator's action from the CLI is saved, or the CLI says it was not: never a false "suspended"."""

from __future__ import annotations

import json
from pathlib import Path

from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import history_rows, run_cli
from .test_crashes import immutable


def test_suspend_with_a_read_only_state_dir_says_it_was_not_saved(app_env: dict[str, str], sesam: SesamEmulator,
                                                                   state_dir: Path) -> None:
    first = run_cli(app_env, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    assert history_rows(state_dir)
    immutable(state_dir, True)
    try:
        result = run_cli(app_env, "suspend", "--app", "node")
    finally:
        immutable(state_dir, False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "not suspended" in out and str(state_dir) in out, out
    status = run_cli(app_env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    apps = json.loads(status.stdout)
    rows = apps if isinstance(apps, list) else apps.get("apps", [])
    assert [row["suspended"] for row in rows if row["name"] == "node"] == [False], status.stdout
