"""The package's module names: none may be mistaken for (or shadow) a standard-library module."""

from __future__ import annotations

import pkgutil
import sys

import autodeployer


def test_no_module_is_named_like_the_standard_library():
    names = {info.name.rsplit(".", 1)[-1] for info in pkgutil.walk_packages(autodeployer.__path__, "autodeployer.")}
    assert "transport" in names  # the walk sees the targets package
    assert sorted(names & set(sys.stdlib_module_names)) == []
