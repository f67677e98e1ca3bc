"""What a reporter is told about syncs; the reconciler calls every reporter and never fails because of one."""

from __future__ import annotations

from typing import Protocol

from ..config.loader import AppConfig
from ..model import CommitInfo, SyncResult, Trigger


class Reporter(Protocol):
    """Told about syncs: logs, metrics, commit statuses, notifications."""

    async def started(self, app: AppConfig, revision: str, trigger: Trigger) -> None: ...

    async def finished(self, app: AppConfig, result: SyncResult, commit: CommitInfo | None) -> None: ...
