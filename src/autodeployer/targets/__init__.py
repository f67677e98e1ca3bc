"""Deploy targets. Each module implements :class:`~autodeployer.targets.base.Target`.

Adding a target: write its module (see ``base.py`` for what it provides) and list it here.
"""

from __future__ import annotations

from types import ModuleType

from . import command, marathon, sesam

TARGETS: dict[str, ModuleType] = {module.KIND: module for module in (sesam, marathon, command)}
