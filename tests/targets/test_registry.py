"""The target registry: every registered module keeps the TargetModule contract, under its own kind."""

from __future__ import annotations

import pytest

from autodeployer.targets import TARGETS
from autodeployer.targets.base import TargetModule


def test_registry_holds_the_three_targets():
    assert sorted(TARGETS) == ["command", "marathon", "sesam"]


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_module_keeps_the_contract_under_its_kind(kind: str):
    module = TARGETS[kind]
    assert isinstance(module, TargetModule)
    assert kind == module.KIND
    assert module.Spec.model_fields["kind"].default == kind  # the config union is discriminated by it
    assert all(v.name.isupper() for v in module.VARIABLES)
    assert all(isinstance(key, str) for key in module.SECRET_KEYS)
