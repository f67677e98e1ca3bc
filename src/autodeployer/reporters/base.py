"""What a reporter is told about syncs; the reconciler calls every reporter and never fails because of one."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..config.loader import AppConfig
from ..model import CommitInfo, HealthNotice, SyncResult, Trigger


class Reporter(Protocol):
    """Told about syncs: logs, metrics, commit statuses, notifications."""

    async def started(self, app: AppConfig, revision: str, trigger: Trigger) -> None: ...

    async def finished(self, app: AppConfig, result: SyncResult, commit: CommitInfo | None) -> None: ...


@runtime_checkable
class HealthReporter(Protocol):
    """Optional: told when a deployed revision turned degraded (rollout/autorollback.py), once per event."""

    async def health(self, app: AppConfig, notice: HealthNotice) -> None: ...
