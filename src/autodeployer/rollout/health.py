"""Health after deploy: a synced revision is watched in the background for the app's health window.

Why in the background: the window is minutes long, and the app's worker must stay free, so a new push
deploys at once (and its deploy supersedes the watch of the previous one). The watcher asks the
target (:class:`~autodeployer.targets.base.HealthCheck`) every ``health_poll`` seconds; the first
degraded reading decides at once (that is what makes a rollback come within one poll), and a window
that ends without one is healthy, unless the last reading was still undecided (a deployment running,
the target unreadable), which is degraded too: "healthy" must have been seen.

The verdict goes to two places: ``AppState.health`` (the last deployed revision; promotion reads it)
and the ``health`` key of the attempt's history row (``Store.annotate``). A degraded verdict is handed
to :class:`~autodeployer.rollout.autorollback.AutoRollback`, which decides what to do about it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config.loader import AppConfig
from ..errors import AutodeployerError
from ..model import Action, Change, Health, HealthReport, Plan, Result, SyncResult, Trigger
from ..store import AppState, Store
from ..targets.base import HealthCheck, HealthRequest, Target
from .autorollback import AutoRollback

HEALTH_KEY = "health"  # the key of the history row's details, and the AppState field
MAX_EVIDENCE = 10  # readings kept as evidence (each names its entity)
KEPT_KEYS = ("last_healthy", "rolled_back", "rollback")  # AppState.health keys that outlive one deploy
WATCH_KEY = "watch"  # AppState.health while checking: what a restarted process needs to resume the watch
MAX_WATCHED = 2_000  # changes kept for a resumed watch (a larger deploy is watched by its first ones)


@dataclass(frozen=True)
class Deploy:
    """A synced revision being watched: what was deployed, by which attempt, and when."""

    revision: str
    plan: Plan
    attempt_id: int | None
    trigger: Trigger
    started_at: float
    deployed_at: float  # when the deploy was verified: the window starts here


def watch_record(deploy: Deploy) -> dict[str, Any]:
    """The part of a deploy a resumed watch needs: who deployed it, when, and what it changed."""
    return {"attempt_id": deploy.attempt_id, "trigger": deploy.trigger.value, "started_at": deploy.started_at,
            "changes": [[c.action.value, c.id, c.kind] for c in deploy.plan.changes[:MAX_WATCHED]]}


def resumed_deploy(health: dict[str, Any]) -> Deploy | None:
    """The deploy a `checking` health record was watching, or None when it cannot be rebuilt."""
    watch = health.get(WATCH_KEY)
    if not isinstance(watch, dict):
        return None
    try:
        changes = [Change(Action(action), str(_id), str(kind)) for action, _id, kind in watch["changes"]]
        return Deploy(str(health["revision"]), Plan(changes=changes), watch.get("attempt_id"),
                      Trigger(watch["trigger"]), float(watch["started_at"]), float(health["since"]))
    except (KeyError, TypeError, ValueError):
        return None


def verdict(state: Health, deploy: Deploy, evidence: Sequence[str], now: float) -> dict[str, Any]:
    """The health record, as AppState.health and the history row keep it."""
    return {"revision": deploy.revision, "state": state.value, "since": deploy.deployed_at, "checked_at": now,
            "evidence": list(evidence)[:MAX_EVIDENCE]}


class HealthWatcher:
    """One per app, owned by its Reconciler: watches the newest synced deploy (one at a time)."""

    def __init__(self, app: AppConfig, target: Callable[[], Target], store: Store, rollback: AutoRollback, log: Any, *,
                 redact: Callable[[str], str] = str, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.app = app
        self._target = target  # the reconciler's target as it is now (a test may swap it)
        self.store = store
        self.rollback = rollback
        self.log = log
        self._redact = redact  # evidence quotes the target (a pipe's error text): secrets never reach a record
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._ended = "superseded"  # why the current watch was cancelled: a newer deploy, or the process stops
        self._resume_checked = False  # a watch a restart interrupted is looked for once per process

    @property
    def target(self) -> Target:
        return self._target()

    @property
    def enabled(self) -> bool:
        """The target can tell, and the app asks for a window."""
        target = self.target
        return self.app.policy.health_window > 0 and isinstance(target, HealthCheck) and target.watches_health()

    def after_sync(self, result: SyncResult, plan: Plan | None, attempt_id: int | None) -> None:
        """Called by the reconciler after every recorded sync: a synced deploy is watched (the watch of
        the previous one ends), and the end of an automatic rollback is reported."""
        if not self.enabled or result.revision is None:
            return
        rollback_done = result.trigger is Trigger.ROLLBACK and self._rollback_pending(result.revision)
        deployed = result.result is Result.SYNCED and plan is not None
        if not deployed and not rollback_done:
            return
        deploy = None
        if deployed and plan is not None:
            deploy = Deploy(result.revision, plan, attempt_id, result.trigger, result.started_at,
                            result.started_at + result.duration)
        self.cancel()
        if deploy is not None:  # at once: whoever reads the state next (promotion) sees it is being checked
            self._record(deploy, Health.CHECKING, (), history=True)
        self._task = asyncio.get_running_loop().create_task(self._follow(result, deploy),
                                                            name=f"health-{self.app.name}")

    def resume(self, state: AppState) -> bool:
        """Once per process, at the app's first sync: a watch that a restart (or a take-over by another
        replica) interrupted goes on for what is left of its window, at least one look. Without this the
        deploy would stay `checking` for ever and never be promoted or rolled back."""
        if self._resume_checked:
            return False
        self._resume_checked = True
        health = state.health or {}
        if (self._task is not None or not self.enabled or health.get("state") != Health.CHECKING.value
                or health.get("revision") != state.last_synced_revision):
            return False
        deploy = resumed_deploy(health)
        if deploy is None:
            return False
        self.log.info("resuming the health watch a restart interrupted", revision=deploy.revision[:12],
                      left=max(0.0, deploy.deployed_at + self.app.policy.health_window - self._clock()))
        self._task = asyncio.get_running_loop().create_task(self._resumed(deploy), name=f"health-{self.app.name}")
        return True

    async def _resumed(self, deploy: Deploy) -> None:
        try:
            await self.watch(deploy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("health watch failed", error=str(exc))

    def _rollback_pending(self, revision: str) -> bool:
        try:
            return self.rollback.pending_for(revision)
        except Exception as exc:  # the store is away: the sync's own record stands, nothing is raised into it
            self.log.error("cannot read the app state for the automatic rollback", error=str(exc))
            return False

    def cancel(self, why: str = "superseded") -> None:
        if self._task is not None and not self._task.done():
            self._ended = why
            self._task.cancel()
        self._task = None

    async def aclose(self) -> None:
        """Stop watching (the service stops): a HEALTH_COMMAND running is killed with its group."""
        task = self._task
        self.cancel("stopped")
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=5)

    async def wait(self) -> None:
        """Until the current watch has ended (tests, and a one-shot CLI run that wants the verdict)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def _follow(self, result: SyncResult, deploy: Deploy | None) -> None:
        try:
            if result.trigger is Trigger.ROLLBACK:
                await self.rollback.finished(result)
            if deploy is not None:
                await self.watch(deploy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not stop the service; the deploy itself is recorded
            self.log.exception("health watch failed", error=str(exc))

    async def watch(self, deploy: Deploy) -> Health:
        """Look every health_poll seconds until degraded or the window ends; record and act on the verdict."""
        deadline = deploy.deployed_at + self.app.policy.health_window
        request = HealthRequest(self.app, deploy.revision, deploy.plan, deploy.deployed_at, deploy.started_at)
        try:
            while True:
                report = await self._look(request)
                now = self._clock()
                if report.state is Health.DEGRADED or now >= deadline:
                    return await self._decide(deploy, report, now)
                self._record(deploy, Health.CHECKING, report.evidence)
                await self._sleep(max(0.0, min(self.app.policy.health_poll, deadline - now)))
        except asyncio.CancelledError:  # a newer deploy supersedes this one, or the process stops: undecided
            self._annotate(deploy, {**verdict(Health.CHECKING, deploy, (), self._clock()), "ended": self._ended})
            raise

    async def _look(self, request: HealthRequest) -> HealthReport:
        """One reading; a target that cannot be read is undecided, not degraded (it may come back)."""
        target = self.target
        assert isinstance(target, HealthCheck)
        try:
            report = await target.health(request)
        except AutodeployerError as exc:
            report = HealthReport(Health.CHECKING, (f"cannot read the target's health: {str(exc)[:300]}",))
        return HealthReport(report.state, tuple(self._redact(e) for e in report.evidence))

    async def _decide(self, deploy: Deploy, report: HealthReport, now: float) -> Health:
        if report.state is Health.HEALTHY:
            self._record(deploy, Health.HEALTHY, (), history=True, last_healthy=True)
            self.log.info("deploy healthy", revision=deploy.revision[:12],
                          window=self.app.policy.health_window)
            return Health.HEALTHY
        evidence = list(report.evidence)
        if report.state is Health.CHECKING:
            evidence.append(f"not healthy within the health window of {self.app.policy.health_window:g} s")
        self._record(deploy, Health.DEGRADED, evidence, history=True)
        self.log.warning("deploy degraded", revision=deploy.revision[:12], evidence=evidence)
        await self.rollback.degraded(deploy.revision, deploy.trigger, tuple(evidence))
        return Health.DEGRADED

    # ------------------------------------------------------------------ recording
    def _record(self, deploy: Deploy, state: Health, evidence: Sequence[str], *, history: bool = False,
                last_healthy: bool = False) -> None:
        record = verdict(state, deploy, evidence, self._clock())
        watching = {WATCH_KEY: watch_record(deploy)} if state is Health.CHECKING else {}

        def change(current: Any) -> dict[str, Any]:
            kept = {k: v for k, v in (current.health or {}).items() if k in KEPT_KEYS}
            if last_healthy:
                kept["last_healthy"] = deploy.revision
            return {"health": {**kept, **record, **watching}}

        try:
            self.store.update_state(self.app.name, change)
        except Exception as exc:  # disk full, PostgreSQL away: the watch goes on, the log says so
            self.log.error("cannot save the health of the deploy", error=str(exc))
        if history:
            self._annotate(deploy, record)

    def _annotate(self, deploy: Deploy, record: dict[str, Any]) -> None:
        if deploy.attempt_id is None:
            return
        try:
            self.store.annotate(deploy.attempt_id, HEALTH_KEY, record)
        except Exception as exc:
            self.log.error("cannot record the health on the history row", error=str(exc))
