"""Automatic rollback: what happens when a deploy turns degraded within its health window.

With ``rollback_on: degraded`` the app goes back to the last healthy revision through the same path an
operator's rollback takes (``Reconciler.pin`` suspends the app and pins the revision; the app's
worker deploys it), and once that sync has ended: the app's suspension reason names the evidence, one
notification goes out, and the bad revision's commit status says "rolled back: <evidence>".

It never loops. Each revision is rolled back automatically at most once (``AppState.health["rolled_back"]``
lists them); a rollback whose own deploy turns degraded is not rolled back again: the app stays
suspended and an alert says both are degraded. ``resume`` lets the next push deploy normally.

Without ``rollback_on`` (the default) a degraded deploy stays where it is: the verdict is recorded,
notified once and put on the commit status.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..config.loader import AppConfig
from ..model import HealthNotice, Result, SyncResult, Trigger
from ..reporters.base import HealthReporter
from ..store import AppState, Store

MAX_ROLLED_BACK = 50  # revisions remembered as rolled back automatically (newest kept)


class AutoRollback:
    """One per app. `pin(sha)` is Reconciler.pin; `deploy_pinned()` queues the sync of the pinned
    revision on the app's worker (never run here: the watcher must not hold the worker)."""

    def __init__(self, app: AppConfig, store: Store, reporters: Sequence[Any], log: Any, *,
                 pin: Callable[[str], Awaitable[str]], deploy_pinned: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.store = store
        self.reporters = reporters
        self.log = log
        self._pin = pin
        self._deploy_pinned = deploy_pinned
        self._clock = clock

    # ------------------------------------------------------------------ decisions
    async def degraded(self, revision: str, trigger: Trigger, evidence: tuple[str, ...]) -> None:
        """The deploy of `revision` is degraded: roll back, or stop and alert, or only tell."""
        health = self.store.get_state(self.app.name).health or {}
        pending = health.get("rollback") or {}
        if trigger is Trigger.ROLLBACK and pending.get("to") == revision:
            reason = (f"automatic rollback to {revision[:12]} is degraded too ({_short(evidence)}); fix the "
                      f"configuration, then resume to follow {self.app.source.follows} again")
            await self._stop(reason, HealthNotice(self.app.name, "rollback-degraded", revision, evidence,
                                                  detail=f"after rolling back {str(pending.get('of'))[:12]}"))
            return
        if trigger is Trigger.ROLLBACK:  # an operator's rollback: their choice is not overridden, only stopped
            reason = (f"the rollback to {revision[:12]} is degraded ({_short(evidence)}); roll back to another "
                      "revision, or fix and resume")
            await self._stop(reason, HealthNotice(self.app.name, "degraded", revision, evidence, detail=reason))
            return
        if self.app.policy.rollback_on != "degraded":
            await self._tell(HealthNotice(self.app.name, "degraded", revision, evidence))
            return
        if revision in (health.get("rolled_back") or []):
            reason = (f"{revision[:12]} is degraded again after an automatic rollback ({_short(evidence)}); "
                      "not rolled back a second time")
            await self._stop(reason, HealthNotice(self.app.name, "degraded", revision, evidence, detail=reason))
            return
        good = self.last_healthy(revision, health)
        if good is None:
            reason = f"{revision[:12]} is degraded ({_short(evidence)}) and no earlier healthy revision is known"
            await self._stop(reason, HealthNotice(self.app.name, "degraded", revision, evidence, detail=reason))
            return
        await self._roll_back(revision, good, evidence)

    def last_healthy(self, bad: str, health: dict[str, Any]) -> str | None:
        """The revision to go back to: the last one whose window ended healthy, else the newest other
        revision the history shows synced (an app deployed before health was watched)."""
        known = health.get("last_healthy")
        if isinstance(known, str) and known != bad:
            return known
        rows = self.store.history(self.app.name, limit=200)
        for row in rows:
            if row.revision and row.revision != bad and (row.details.get("health") or {}).get("state") == "healthy":
                return row.revision
        for row in rows:
            if row.revision and row.revision != bad and row.result in (Result.SYNCED.value, Result.NO_CHANGE.value):
                return row.revision
        return None

    async def _roll_back(self, bad: str, good: str, evidence: tuple[str, ...]) -> None:
        def change(state: AppState) -> dict[str, Any]:
            health = dict(state.health or {})
            rolled = [r for r in health.get("rolled_back") or [] if r != bad][-(MAX_ROLLED_BACK - 1):]
            health["rolled_back"] = [*rolled, bad]
            health["rollback"] = {"of": bad, "to": good, "evidence": list(evidence), "at": self._clock(),
                                  "done": False}
            return {"health": health}

        self.store.update_state(self.app.name, change)
        await self._pin(good)
        self.log.warning("automatic rollback", revision=bad[:12], to=good[:12], evidence=list(evidence))
        self._deploy_pinned()

    # ------------------------------------------------------------------ the rollback's own sync
    def pending_for(self, revision: str) -> bool:
        """An automatic rollback to `revision` waits for its sync to be reported."""
        pending = (self.store.get_state(self.app.name).health or {}).get("rollback") or {}
        return pending.get("to") == revision and not pending.get("done")

    async def finished(self, result: SyncResult) -> None:
        """The rollback's sync has ended: say so once, on the app, the commit status, a notification."""
        if result.revision is None or not self.pending_for(result.revision):
            return
        pending = dict((self.store.get_state(self.app.name).health or {}).get("rollback") or {})
        bad, evidence = str(pending.get("of")), tuple(pending.get("evidence") or ())
        ok = result.result in (Result.SYNCED, Result.NO_CHANGE)
        if ok:
            reason = (f"automatic rollback: {bad[:12]} was degraded ({_short(evidence)}); rolled back to "
                      f"{result.revision[:12]}; resume to follow {self.app.source.follows} again")
            notice = HealthNotice(self.app.name, "rolled-back", bad, evidence, rollback_to=result.revision)
        else:
            error = (result.error or result.result.value).split("\n")[0]
            reason = (f"automatic rollback of {bad[:12]} to {result.revision[:12]} failed: {error}; "
                      f"{bad[:12]} was degraded ({_short(evidence)})")
            notice = HealthNotice(self.app.name, "rollback-failed", bad, evidence, rollback_to=result.revision,
                                  detail=error)

        def change(state: AppState) -> dict[str, Any]:
            health = dict(state.health or {})
            health["rollback"] = {**pending, "done": True, "result": result.result.value}
            fields: dict[str, Any] = {"health": health}
            if state.suspended:  # an operator may have resumed meanwhile: then the app stays resumed
                fields["suspended_reason"] = reason
            return fields

        self.store.update_state(self.app.name, change)
        await self._tell(notice)

    # ------------------------------------------------------------------ telling
    async def _stop(self, reason: str, notice: HealthNotice) -> None:
        """Suspend the app (no pin: it stays on what it runs) and alert."""
        self.store.update_state(self.app.name, lambda _: {"suspended": True, "suspended_reason": reason})
        self.log.error("auto-sync suspended: deploy degraded", reason=reason)
        await self._tell(notice)

    async def _tell(self, notice: HealthNotice) -> None:
        for reporter in self.reporters:
            if not isinstance(reporter, HealthReporter):
                continue
            try:
                await reporter.health(self.app, notice)
            except Exception as exc:
                self.log.warning("reporter failed", reporter=type(reporter).__name__, error=str(exc))


def _short(evidence: Sequence[str], limit: int = 300) -> str:
    text = "; ".join(evidence) or "health check failed"
    return text if len(text) <= limit else text[: limit - 1] + "…"
