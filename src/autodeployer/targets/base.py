"""The target contract: what a deploy target module provides (:class:`TargetModule`) and what the
target it creates implements (:class:`Target`).

Registering a module in ``targets/__init__.py`` is the only other change a new target needs; the
registry is typed by :class:`TargetModule`, so a module that misses part of the contract fails the
type check instead of a sync.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import httpx

from ..config.variables import EnvReader, Frozen, Variable
from ..logs import Redactor
from ..model import ApplyReport, HealthReport, Plan, Tree

if TYPE_CHECKING:
    from ..config.loader import AppConfig
    from ..sources.git import GitSource


@dataclass
class SyncContext:
    """What a target may look at during one sync."""

    app: AppConfig
    tree: Tree
    memory: dict[str, Any] = field(default_factory=dict)  # kept from the last successful apply
    log: Any = None
    prefetched: asyncio.Task[Any] | None = None  # what the target's prefetch() started for plan()


@dataclass
class TargetDeps:
    """Shared services handed to targets: no target builds its own."""

    http: httpx.AsyncClient
    redactor: Redactor
    state_dir: Path
    source: GitSource | None = None


class Target(Protocol):
    kind: str

    def prefetch(self) -> asyncio.Task[Any] | None:
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


@runtime_checkable
class Caching(Protocol):
    """Optional part of a target: it keeps parsed desired state between syncs and can forget it."""

    def drop_cache(self) -> None: ...


@dataclass(frozen=True)
class HealthRequest:
    """What a health look is about: the deploy of `revision` that `plan` made, verified at `deployed_at`
    (epoch seconds; failures the target dates before it are not news). `started_at` is when the sync began."""

    app: AppConfig
    revision: str
    plan: Plan
    deployed_at: float
    started_at: float


@runtime_checkable
class HealthCheck(Protocol):
    """Optional part of a target: how healthy a deploy is, read from the target itself (rollout/health.py
    polls it during the app's health window, in the background)."""

    def watches_health(self) -> bool:
        """False when this app's target has nothing to look at (a command target without HEALTH_COMMAND)."""
        ...

    async def health(self, request: HealthRequest) -> HealthReport:
        """One look: healthy, degraded with the evidence (entity and fact), or checking (not decided yet).

        Raises :class:`~autodeployer.errors.TargetError` when the target cannot be read."""
        ...


SpecT = TypeVar("SpecT", bound=Frozen)


@runtime_checkable
class TargetModule(Protocol[SpecT]):
    """What a target module provides at module level; ``SpecT`` is the module's settings model.

    Members are read-only properties so that a module's plain constants and functions satisfy them.
    """

    @property
    def KIND(self) -> str:
        """The ``kind`` of the app's target (``TARGET`` / ``target.kind``) that selects this module."""
        ...

    @property
    def Spec(self) -> type[SpecT]:
        """The settings model, a member of the configuration's union discriminated by ``kind``."""
        ...

    @property
    def VARIABLES(self) -> tuple[Variable, ...]:
        """The environment variables the module reads (``autodeployer settings``, the docs table)."""
        ...

    @property
    def SECRET_KEYS(self) -> tuple[str, ...]:
        """YAML keys whose value may come from ``<key>_env`` / ``<key>_file`` instead."""
        ...

    def spec_from_env(self, env: EnvReader, app_name: str | None = None) -> SpecT:
        """The settings of the one app configured by environment variables."""
        ...

    def spec_from_yaml(self, data: dict[str, Any], where: str, app_name: str | None = None) -> SpecT:
        """The settings of one app of a YAML file; `where` names its place in errors."""
        ...

    def create(self, spec: SpecT, deps: TargetDeps) -> Target:
        """The target of one app, built on the shared services."""
        ...
