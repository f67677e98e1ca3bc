"""The product's sync against a node that refuses unknown ``$ENV`` names and one that accepts them.

What a real node does with an unknown ``$ENV`` name is not known (reference section 3), so the
emulator's behaviour is a switch and the product must be right under both: the commit is not
deployed, the sync fails naming the variable, and the node keeps its last good configuration.
"""

from __future__ import annotations

import pytest

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import entity_json, pipe, run_cli, stripped


def broken_commit(config_repo: WorkRepo) -> None:
    bad = pipe("orders", url="http://$ENV(no_such_variable)/x")
    config_repo.write({"pipes/orders.conf.json": entity_json(bad)})
    config_repo.commit("orders reads an undefined variable")
    config_repo.push()


@pytest.mark.parametrize(
    "node_refuses",
    [
        pytest.param(True, id="node-refuses"),
        pytest.param(False, id="node-accepts"),
    ],
)
def test_unknown_env_never_reaches_the_node(app_env: dict[str, str], config_repo: WorkRepo,
                                            sesam: SesamEmulator, node_refuses: bool) -> None:
    sesam.refuse_unknown_env = node_refuses
    assert run_cli(app_env, "sync").returncode == 0
    before = stripped(sesam.entities())["orders"]
    broken_commit(config_repo)
    result = run_cli(app_env, "sync")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "no_such_variable" in output
    assert stripped(sesam.entities())["orders"] == before
