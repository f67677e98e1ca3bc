"""Deploy targets. Each module satisfies :class:`~autodeployer.targets.base.TargetModule` and
creates a :class:`~autodeployer.targets.base.Target`.

Adding a target: write its module (see ``base.py`` for what it provides) and list it here.
"""

from __future__ import annotations

from typing import Any

from . import command, marathon, sesam
from .base import TargetModule

_MODULES: tuple[TargetModule[Any], ...] = (sesam, marathon, command)
TARGETS: dict[str, TargetModule[Any]] = {module.KIND: module for module in _MODULES}
