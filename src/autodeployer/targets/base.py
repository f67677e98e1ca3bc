"""The Target protocol: what every deploy target implements.

A target module provides ``KIND``, its settings model ``Spec``, the environment ``VARIABLES`` it reads,
``SECRET_KEYS`` (YAML keys that may come from ``<key>_env`` / ``<key>_file``),
``spec_from_env(env, app_name)``, ``spec_from_yaml(data, where, app_name)`` and ``create(spec, deps)``. Registering it in ``targets/__init__.py`` is the only other change.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from ..logs import Redactor
from ..model import ApplyReport, Plan, Tree

if TYPE_CHECKING:
    from ..config import AppConfig
    from ..sources.git import GitSource


@dataclass
class SyncContext:
    """What a target may look at during one sync."""

    app: "AppConfig"
    tree: Tree
    memory: dict[str, Any] = field(default_factory=dict)  # kept from the last successful apply
    log: Any = None
    prefetched: "asyncio.Task[Any] | None" = None  # what the target's prefetch() started for plan()


@dataclass
class TargetDeps:
    """Shared services handed to targets: no target builds its own."""

    http: httpx.AsyncClient
    redactor: Redactor
    state_dir: Path
    source: "GitSource | None" = None


class Target(Protocol):
    kind: str

    def prefetch(self) -> "asyncio.Task[Any] | None":
        """Start reading the live state that does not depend on Git, so it overlaps the fetch.

        Called when a sync needs a new commit; the task reaches :meth:`plan` as ``ctx.prefetched``.
        Return None when there is nothing worth reading early. The reconciler cancels an unused task.
        """
        ...

    async def plan(self, ctx: SyncContext) -> Plan:
        """Desired state from the tree, live state from the target, and their semantic diff.

        Raises :class:`~autodeployer.errors.Refused` when the tree must not be deployed, and
        :class:`~autodeployer.errors.TargetError` when the target cannot be read.
        """
        ...

    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        """Make the target equal to the plan's desired state; the only write."""
        ...

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        """Read back; the returned plan lists what still differs (empty means synced)."""
        ...

    async def aclose(self) -> None: ...
