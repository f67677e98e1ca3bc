"""One sync of one app: resolve -> read -> plan -> guard -> apply -> verify -> record -> report.

Nothing is written to the target unless the plan is non-empty and every guard passed. Every error is
caught here, turned into a recorded result, and never escapes to stop the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config.loader import AppConfig
from .errors import AutodeployerError, OwnershipLost, Refused, SourceError, TargetError
from .logs import Redactor, get_logger
from .model import Action, CommitInfo, Plan, Problem, Result, SyncResult, Tree, Trigger
from .reporters.base import Reporter
from .sources.git import GitSource
from .store import AppState, StateChange, Store
from .targets.base import SyncContext, Target

LOCK_WAIT = 30.0  # seconds a sync waits for another process's sync of the app (the worker passes 0)
LOCK_RETRY = 1.0  # seconds after which the worker tries again when the app was locked elsewhere


@dataclass
class Outcome:
    """Internal: a finished pipeline before it is recorded."""

    result: Result
    plan: Plan | None = None
    error: str | None = None
    problems: list[Problem] | None = None
    warnings: list[str] | None = None
    memory: dict[str, Any] | None = None
    tree_id: str | None = None
    attempt_id: int | None = None  # history row opened before the apply
    not_applied: OwnershipLost | None = None  # another replica owns the app: nothing applied or recorded
    details: dict[str, Any] | None = None  # what the target reported (e.g. a command's output)


class Reconciler:
    def __init__(
        self,
        app: AppConfig,
        source: GitSource,
        target: Target,
        store: Store,
        *,
        reporters: Sequence[Reporter] = (),
        redactor: Redactor | None = None,
    ) -> None:
        self.app = app
        self.source = source
        self.target = target
        self.store = store
        self.reporters = list(reporters)
        self.redact = redactor or Redactor()
        self.log = get_logger(app=app.name)
        self._tree: Tree | None = None  # the last tree read: commits are immutable, so it stays valid
        self._started: asyncio.Task[None] | None = None  # reporters being told that a sync started
        self._drift_checked_at: float | None = None  # the last quiet drift check (kept in memory only)
        self.lock = store.app_lock(app.name)  # one apply at a time per app, across processes

    # ------------------------------------------------------------------ public
    async def sync(
        self,
        trigger: Trigger,
        *,
        dry_run: bool | None = None,
        revision: str | None = None,
        force: bool = False,
        lock_wait: float = LOCK_WAIT,
    ) -> SyncResult:
        """Reconcile once. `force` skips the idle fast path; `revision` pins a commit (rollback).

        Holds the app's apply lock for the whole sync (a dry run applies nothing and takes none). Held
        elsewhere for `lock_wait` seconds more: nothing is done, and the result says "not applied" and
        who holds it, with a `retry_after` the worker honours.
        """
        dry_run = self.app.policy.dry_run if dry_run is None else dry_run
        if dry_run:
            return await self._sync(trigger, True, revision, force)
        if not await self.lock.acquire(lock_wait):
            busy = OwnershipLost(self.lock.busy_message(self.app.name), retry_after=LOCK_RETRY)
            return self._not_applied(trigger, revision or "", busy, time.time(), time.perf_counter())
        try:
            return await self._sync(trigger, False, revision, force)
        finally:
            self.lock.release()

    async def _sync(self, trigger: Trigger, dry_run: bool, revision: str | None, force: bool) -> SyncResult:
        started, clock = time.time(), time.perf_counter()
        state = self.store.get_state(self.app.name)
        try:
            head = revision or state.pinned_revision or await self.source.head()
        except SourceError as exc:
            return await self._finish(trigger, None, Outcome(Result.FAILED, error=str(exc)), started, clock)

        if not force and trigger is Trigger.POLL and self._idle(state, head, started):
            return SyncResult(self.app.name, trigger, Result.NO_CHANGE, revision=head, started_at=started,
                              duration=time.perf_counter() - clock, summary="head unchanged")

        drift_check = head == state.last_synced_revision and state.last_result in _OK
        outcome, sha = await self._pipeline(head, state, trigger, dry_run, drift_check, started)
        if outcome.not_applied is not None:
            return self._not_applied(trigger, sha, outcome.not_applied, started, clock)
        if drift_check and outcome.result is Result.NO_CHANGE and trigger is Trigger.POLL:
            # A quiet drift check writes nothing (no history row, no state write): it is the most frequent
            # sync of all, and the time of the last one only decides when the next is due.
            self._drift_checked_at = started
            return SyncResult(self.app.name, trigger, Result.NO_CHANGE, revision=sha, started_at=started,
                              duration=time.perf_counter() - clock, summary="no drift")
        result = await self._finish(trigger, sha, outcome, started, clock, drift=drift_check)
        return result

    async def pin(self, revision: str) -> str:
        """Rollback, step one: pin an earlier commit and suspend auto-sync so polls leave it alone.

        Only the fields a rollback owns are written: a sync in flight keeps its own bookkeeping, and the
        pinned revision is what the next sync deploys (the worker runs it once the current one ends).
        """
        sha = await self.source.resolve(revision)
        reason = f"rollback to {sha[:12]} requested; resume to follow {self.app.source.branch} again"
        self.store.update_state(self.app.name, lambda _: {"pinned_revision": sha, "suspended": True,
                                                          "suspended_reason": reason})
        self.log.warning("rollback: auto-sync suspended", revision=sha[:12])
        return sha

    async def rollback(self, revision: str) -> SyncResult:
        """Pin and deploy an earlier commit (the scheduler does the same in two steps)."""
        sha = await self.pin(revision)
        return await self.sync(Trigger.ROLLBACK, revision=sha, force=True)

    # The admin actions raise when their write fails: an operator must not be told "suspended" when it is not.
    def suspend(self, reason: str = "suspended by an operator") -> None:
        self.store.update_state(self.app.name, lambda _: {"suspended": True, "suspended_reason": reason})
        self.log.warning("auto-sync suspended", reason=reason)

    def resume(self) -> None:
        """Follow the branch again; the caller triggers the sync that returns to its head."""
        self.store.update_state(self.app.name, lambda _: {"suspended": False, "suspended_reason": None,
                                                          "pinned_revision": None})
        self.log.info("auto-sync resumed")

    async def plan_only(self) -> tuple[str, Plan]:
        """The plan against the branch head, for `autodeployer diff`; records nothing."""
        head = await self.source.head()
        sha = await self.source.fetch(head)
        tree = await self.source.read(sha)
        if not tree.tree_id:
            raise Refused(self._missing_root(sha))
        state = self.store.get_state(self.app.name)
        plan = await self.target.plan(SyncContext(self.app, tree, state.memory, self.log))
        self._guard(plan)
        return sha, plan

    # ------------------------------------------------------------------ steps
    def _idle(self, state: AppState, head: str, now: float) -> bool:
        """Nothing to do: head already synced and no drift check due, or head already refused."""
        if head == state.last_revision and state.last_result == Result.REFUSED.value:
            return True  # a refusal is about the commit; a new commit (or a manual sync) retries it
        if head != state.last_synced_revision or state.last_result not in _OK:
            return False
        interval = self.app.policy.drift_interval
        if interval is None:  # every poll at the seed's 60 s; faster polling does not multiply reads of the target
            interval = max(self.app.policy.interval, DEFAULT_DRIFT_INTERVAL)
        if interval == 0:
            return True  # drift checks switched off
        checked = max(state.last_drift_check_at or 0.0, self._drift_checked_at or 0.0)
        # Due once the interval has passed, give or take the polls' jitter (so 60 s polls drift-check each time).
        return bool(checked) and now - checked < interval - DRIFT_SLACK * self.app.policy.interval

    async def _pipeline(
        self, head: str, state: AppState, trigger: Trigger, dry_run: bool, drift_check: bool,
        started: float,
    ) -> tuple[Outcome, str]:
        sha = head
        prefetched: asyncio.Task[Any] | None = None
        try:
            cached = self._tree
            if cached is not None and cached.revision == head:
                tree = cached  # a drift check or retry of the same commit: Git has nothing new to say
            else:
                prefetched = self.target.prefetch()  # the target reads its live state meanwhile
                sha = await self.source.fetch(head)
                tree = await self.source.read(sha)
                self._tree = tree
            if not drift_check and not dry_run:
                self._report_started(sha, trigger)
            if not tree.tree_id:
                raise Refused(self._missing_root(sha))
            ctx = SyncContext(self.app, tree, dict(state.memory), self.log, prefetched)
            plan = await self.target.plan(ctx)
            self._guard(plan)
            if plan.empty:
                return Outcome(Result.NO_CHANGE, plan=plan, tree_id=tree.tree_id), sha
            if dry_run:
                return Outcome(Result.PLANNED, plan=plan, tree_id=tree.tree_id), sha
            if drift_check:
                self.log.warning("drift detected on the target; reverting to Git", revision=sha[:12],
                                 summary=plan.summary())
            # Open the history row before the write, so a crash mid-apply leaves a trace.
            attempt = self._begin(trigger, sha, started)
            try:
                report = await self.target.apply(plan, ctx)
                remaining = await self.target.verify(plan, ctx)
            except (Refused, SourceError, TargetError) as exc:
                return self._error_outcome(exc, plan, attempt), sha
            warnings = plan.warnings + report.warnings
            if not remaining.empty:
                return Outcome(Result.FAILED, plan=plan, warnings=warnings, tree_id=tree.tree_id, attempt_id=attempt,
                               error=f"verification failed: the target still differs ({remaining.summary()})",
                               details=report.details), sha
            return Outcome(Result.SYNCED, plan=plan, warnings=warnings, memory=report.memory,
                           tree_id=tree.tree_id, attempt_id=attempt, details=report.details), sha
        except (Refused, SourceError, TargetError) as exc:
            return self._error_outcome(exc, None, None), sha
        except OwnershipLost as exc:
            return Outcome(Result.NO_CHANGE, error=str(exc), not_applied=exc), sha
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not stop the service
            self.log.exception("internal error during sync")
            return Outcome(Result.FAILED, error=f"internal error: {type(exc).__name__}: {exc}"), sha
        finally:
            _discard(prefetched)

    @staticmethod
    def _error_outcome(exc: AutodeployerError, plan: Plan | None, attempt: int | None) -> Outcome:
        problems = getattr(exc, "problems", [])
        if isinstance(exc, Refused):
            return Outcome(Result.REFUSED, plan=plan, error=exc.args[0], problems=problems, attempt_id=attempt)
        return Outcome(Result.FAILED, plan=plan, error=str(exc), problems=problems, attempt_id=attempt)

    def _begin(self, trigger: Trigger, sha: str, started: float) -> int | None:
        try:
            return self.store.begin(self.app.name, trigger.value, sha, started)
        except OwnershipLost:
            raise  # a shared store could not prove this replica owns the app: do not apply
        except Exception as exc:
            self.log.error("cannot record history", error=str(exc))
            return None

    def _not_applied(self, trigger: Trigger, sha: str, exc: OwnershipLost, started: float,
                     clock: float) -> SyncResult:
        """Another replica owns the app (or ownership cannot be proven): no apply, no failure recorded."""
        self.log.warning("not applied", reason=str(exc), revision=sha[:12], trigger=trigger.value)
        details: dict[str, Any] = {"not_applied": str(exc)}
        if exc.retry_after is not None:
            details["retry_after"] = exc.retry_after
        return SyncResult(self.app.name, trigger, Result.NO_CHANGE, revision=sha, started_at=started,
                          duration=time.perf_counter() - clock, summary=f"not applied: {exc}", details=details)

    def _guard(self, plan: Plan) -> None:
        if plan.empties_target and not self.app.policy.allow_empty:
            raise Refused(
                f"the plan removes all {plan.count(Action.REMOVE)} managed entities from the target and adds none; "
                "set ALLOW_EMPTY=true if that is intended"
            )

    def _missing_root(self, sha: str) -> str:
        root = self.app.source.sync_root or "/"
        return f"SYNC_ROOT {root!r} does not exist (or is not a directory) at {sha[:12]}"

    # ------------------------------------------------------------------ recording
    async def _finish(
        self, trigger: Trigger, sha: str | None, outcome: Outcome,
        started: float, clock: float, drift: bool = False,
    ) -> SyncResult:
        plan = outcome.plan
        result = SyncResult(
            app=self.app.name,
            trigger=trigger,
            result=outcome.result,
            revision=sha,
            summary=self.redact(plan.summary() if plan else (outcome.error or "").split("\n")[0]),
            diff=self.redact(plan.render()) if plan and outcome.result is not Result.NO_CHANGE else "",
            error=self.redact(outcome.error) if outcome.error else None,
            warnings=[self.redact(w) for w in (outcome.warnings or (plan.warnings if plan else []))],
            problems=[Problem(self.redact(p.message), p.file, p.entity) for p in outcome.problems or []],
            started_at=started,
            duration=time.perf_counter() - clock,
            drift=drift and outcome.result in (Result.SYNCED, Result.FAILED),
        )
        commit = await self._commit_info(sha)
        if commit:
            result.details["commit"] = {"message": commit.message, "author": commit.author}
        if plan and plan.notices:
            result.details["notices"] = plan.notices
        if outcome.details:
            result.details.update(self.redact.value(outcome.details))
        self._update_state(result, outcome)
        self._record(result, outcome.attempt_id)
        self._log(result)
        await self._report_finished(result, commit)
        return result

    def _update_state(self, result: SyncResult, outcome: Outcome) -> None:
        """Record the sync's own bookkeeping, never the operator's fields (suspended, its reason, the pin):
        an admin action may have changed those while this sync ran, and they must survive its end."""
        def change(state: AppState) -> dict[str, Any]:
            fields: dict[str, Any] = {"last_attempt_at": result.started_at, "last_result": result.result.value,
                                      "last_revision": result.revision}
            if result.result in (Result.SYNCED, Result.NO_CHANGE):
                fields.update(last_synced_revision=result.revision, last_synced_tree=outcome.tree_id,
                              last_success_at=result.started_at + result.duration,
                              last_drift_check_at=result.started_at, last_error=None, failures=0)
                if "commit" in result.details:
                    fields["live_commit"] = dict(result.details["commit"])
                if outcome.memory is not None:
                    fields["memory"] = outcome.memory
            elif result.result in (Result.FAILED, Result.REFUSED):
                fields.update(failures=state.failures + 1, last_error=result.error)
            if state.suspended and state.pinned_revision and state.pinned_revision == result.revision:
                # This sync deployed (or failed to deploy) the rollback still asked for: say which.
                fields["suspended_reason"] = self._rollback_reason(result)
            return fields

        self._change_state(change)

    def _rollback_reason(self, result: SyncResult) -> str:
        sha, branch = (result.revision or "")[:12], self.app.source.branch
        if result.result in (Result.SYNCED, Result.NO_CHANGE):
            return f"rolled back to {sha}; resume to follow {branch} again"
        reason = (result.error or result.summary or result.result.value).split("\n")[0]
        return f"rollback to {sha} failed: {reason}; roll back again, or resume to follow {branch} again"

    def _change_state(self, change: StateChange) -> None:
        try:
            self.store.update_state(self.app.name, change)
        except Exception as exc:  # disk full, read-only STATE_DIR, PostgreSQL away: report, keep serving
            self.log.error("cannot save app state", error=str(exc))

    def _record(self, result: SyncResult, attempt_id: int | None) -> None:
        try:
            if attempt_id is None:
                attempt_id = self.store.begin(self.app.name, result.trigger.value, result.revision, result.started_at)
            self.store.finish(attempt_id, result)
        except OwnershipLost as exc:  # a shared store: another replica owns the app now
            self.log.warning("history not recorded", reason=str(exc))
        except Exception as exc:
            self.log.error("cannot record history", error=str(exc))

    def _log(self, result: SyncResult) -> None:
        fields: dict[str, Any] = {
            "trigger": result.trigger.value,
            "revision": (result.revision or "")[:12] or None,
            "result": result.result.value,
            "summary": result.summary,
            "duration_ms": round(result.duration * 1000, 1),
        }
        if result.result.ok:
            self.log.info("sync finished", **fields)
        else:
            self.log.error("sync finished", error=result.error, problems=[str(p) for p in result.problems], **fields)
        for warning in result.warnings:
            self.log.warning("sync warning", warning=warning)

    async def _commit_info(self, sha: str | None) -> CommitInfo | None:
        if not sha:
            return None
        try:
            return await self.source.commit_info(sha)
        except AutodeployerError:
            return None

    def _report_started(self, sha: str, trigger: Trigger) -> None:
        """Reported in the background (a commit status is a round trip to GitHub); finished() waits for it."""
        if self.reporters:
            self._started = asyncio.get_running_loop().create_task(self._tell_started(sha, trigger))

    async def _tell_started(self, sha: str, trigger: Trigger) -> None:
        for reporter in self.reporters:
            try:
                await reporter.started(self.app, sha, trigger)
            except Exception as exc:
                self.log.warning("reporter failed", reporter=type(reporter).__name__, error=str(exc))

    async def _report_finished(self, result: SyncResult, commit: CommitInfo | None) -> None:
        started, self._started = self._started, None
        if started is not None:
            await started  # a `pending` status must not land after the final one
        for reporter in self.reporters:
            try:
                await reporter.finished(self.app, result, commit)
            except Exception as exc:
                self.log.warning("reporter failed", reporter=type(reporter).__name__, error=str(exc))


_OK = (Result.SYNCED.value, Result.NO_CHANGE.value)
DEFAULT_DRIFT_INTERVAL = 60.0  # seconds; DRIFT_INTERVAL unset means max(SYNC_INTERVAL, this)
DRIFT_SLACK = 0.15  # of SYNC_INTERVAL: more than the scheduler's ±10 % poll jitter


def _discard(task: asyncio.Task[Any] | None) -> None:
    """Cancel a prefetch the plan did not use; a failure it had was reported by plan() or does not matter."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
