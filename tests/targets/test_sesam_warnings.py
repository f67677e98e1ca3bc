"""A warning the node returns with an accepted upload reaches the operator once, worded once."""

from __future__ import annotations

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import entity_json, run_cli


def test_node_warnings_are_shown_once_without_a_doubled_prefix(app_env: dict[str, str], config_repo: WorkRepo,
                                                               sesam: SesamEmulator) -> None:
    # The node warns (and still stores) a microservice whose id is not lower case.
    config_repo.write({"systems/Shouty.conf.json": entity_json(
        {"_id": "Shouty", "type": "system:microservice", "docker": {"image": "example/app:1", "port": 5000}})})
    config_repo.commit("an upper-case microservice id")
    config_repo.push()
    result = run_cli(app_env, "sync")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = [line for line in out.splitlines() if "lower case" in line]
    assert lines, out
    assert all("warning: warning:" not in line for line in lines), lines
    assert any("the node warned: Shouty" in line for line in lines), lines
