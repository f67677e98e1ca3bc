"""One sync of one app, as named steps: resolve -> fetch -> read -> plan -> guard -> apply -> verify -> record.

Each step is a method returning a typed value (the way Flux's controllers read). Nothing is written to
the target unless the plan is non-empty and every guard passed. Every error is caught here, turned
into a recorded result with its `Reason`, and never escapes to stop the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config.loader import AppConfig
from .errors import AutodeployerError, OwnershipLost, Refused, SourceError, TargetError
from .headstart import HeadStart
from .logs import Redactor, get_logger
from .model import Action, ApplyReport, CommitInfo, Plan, Problem, Reason, Result, SyncResult, Tree, Trigger
from .reporters.base import Reporter
from .rollout import Hold
from .rollout.autorollback import AutoRollback
from .rollout.gate import RolloutGate
from .rollout.health import HealthWatcher
from .sources.git import GitSource
from .sources.signatures import CommitVerifier, UnsignedCommit
from .store import AppState, StateChange, Store
from .targets.base import Caching, SyncContext, Target
from .timings import DETAILS_KEY, StepTimings

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
    reason: Reason | None = None  # why it did not end in sync


@dataclass
class Fetched:
    """The fetch step's value: the commit to deploy, and the target's live state being read meanwhile."""

    sha: str
    prefetched: asyncio.Task[Any] | None = None


@dataclass
class Planned:
    """The plan step's value: what would change, and the context the apply and verify steps need."""

    plan: Plan
    ctx: SyncContext


@dataclass
class Applied:
    """The apply step's value: what the target said, and the history row opened before the write."""

    report: ApplyReport
    attempt_id: int | None


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
        signatures: CommitVerifier | None = None,
        gate: RolloutGate | None = None,
    ) -> None:
        self.app = app
        self.signatures = signatures  # VERIFY_COMMITS: None when off
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
        self._not_applied_said: str | None = None  # the last "not applied" logged (a held lock retries every second)
        self.gate = gate or RolloutGate(app, store)  # sync windows and promotion (rollout/)
        self.request_sync: Callable[[Trigger], None] | None = None  # set by the app's worker (scheduling.py)
        self._rollback_task: asyncio.Task[SyncResult] | None = None  # an automatic rollback without a worker
        rollback = AutoRollback(app, store, self.reporters, self.log, pin=self.pin, deploy_pinned=self._deploy_pinned)
        self.health = HealthWatcher(app, lambda: self.target, store, rollback, self.log, redact=self.redact)

    # ------------------------------------------------------------------ public
    async def sync(
        self,
        trigger: Trigger,
        *,
        dry_run: bool | None = None,
        revision: str | None = None,
        force: bool = False,
        lock_wait: float = LOCK_WAIT,
        override_window: bool = False,
        commit_hint: str | None = None,
        state: AppState | None = None,
    ) -> SyncResult:
        """Reconcile once. `force` skips the idle fast path; `revision` pins a commit (rollback);
        `commit_hint` (a delivery's `after`) is fetched while the head is checked (headstart.py).
        `state`: the app's state the caller has just read (the worker reads it before every run), so a
        poll reads it from the store once, not twice.

        Holds the app's apply lock for the whole sync (a dry run applies nothing and takes none). Held
        elsewhere for `lock_wait` seconds more: nothing is done, and the result says "not applied" and
        who holds it, with a `retry_after` the worker honours.
        """
        dry_run = self.app.policy.dry_run if dry_run is None else dry_run
        if dry_run:
            return await self._sync(trigger, True, revision, force, state=state)
        if not await self.lock.acquire(lock_wait):
            busy = OwnershipLost(self.lock.busy_message(self.app.name), retry_after=LOCK_RETRY)
            return self._not_applied(trigger, revision or "", busy, time.time(), time.perf_counter())
        self._not_applied_said = None
        try:
            return await self._sync(trigger, False, revision, force, override_window, commit_hint, state)
        finally:
            self.lock.release()

    async def _sync(self, trigger: Trigger, dry_run: bool, revision: str | None, force: bool,
                    override_window: bool = False, commit_hint: str | None = None,
                    state: AppState | None = None) -> SyncResult:
        started, clock = time.time(), time.perf_counter()
        times = StepTimings()  # per-step durations: details["timings"] and the step histogram
        if state is None:
            state = self.store.get_state(self.app.name)
        if not dry_run:
            self.health.resume(state)  # a watch a restart interrupted (once per process)
        start = self._head_start(commit_hint, revision, state)
        try:
            return await self._sync_from(trigger, dry_run, revision, force, override_window, start, state, times,
                                         started, clock)
        finally:
            if start is not None:
                start.abandon()  # a no-op once the fetch step took it over

    def _head_start(self, hint: str | None, revision: str | None, state: AppState) -> HeadStart | None:
        """The delivered commit's fetch and the live read, started before the head check (headstart.py)."""
        if hint is None or revision or state.pinned_revision:
            return None
        return HeadStart.begin(hint, self.source.fetch, self.target.prefetch)

    async def _sync_from(self, trigger: Trigger, dry_run: bool, revision: str | None, force: bool,
                         override_window: bool, start: HeadStart | None, state: AppState, times: StepTimings,
                         started: float, clock: float) -> SyncResult:
        """The sync after its head start: resolve, the idle paths, then the pipeline."""
        gated = self.gate.active and not revision and not state.pinned_revision  # a rollback is never held
        try:
            if gated and self.gate.upstream is not None:
                promoted, waiting = self.gate.promoted_revision()
                if waiting is not None:  # the upstream has nothing verified yet: there is no revision to fetch
                    return await self._held(trigger, state, None, waiting, force, started, clock)
                revision = promoted
            head = await times.timed("resolve", self._resolve(state, revision, trigger))
        except SourceError as exc:
            return await self._record(trigger, None, self._error_outcome(exc, None, None), started, clock, times=times)
        if gated and not force and not dry_run and state.last_result is Result.HELD and head == state.last_revision:
            still = self.gate.check(state, head, drift=head == state.last_synced_revision)
            if still is not None:  # recorded once when first held: polls while it stays held write nothing
                return self._quiet_hold(trigger, head, still, started, clock)

        if not force and trigger is Trigger.POLL and self._idle(state, head, started):
            return SyncResult(self.app.name, trigger, Result.NO_CHANGE, revision=head, started_at=started,
                              duration=time.perf_counter() - clock, summary="head unchanged",
                              details={DETAILS_KEY: times.as_details()})

        drift_check = head == state.last_synced_revision and state.last_result in _OK
        outcome, sha = await self._pipeline(head, state, trigger, dry_run, drift_check, started,
                                            gated=gated, override_window=override_window, times=times, start=start)
        if outcome.not_applied is not None:
            return self._not_applied(trigger, sha, outcome.not_applied, started, clock)
        if drift_check and outcome.result is Result.NO_CHANGE and trigger is Trigger.POLL:
            # A quiet drift check writes nothing (no history row, no state write): it is the most frequent
            # sync of all, and the time of the last one only decides when the next is due.
            self._drift_checked_at = started
            return SyncResult(self.app.name, trigger, Result.NO_CHANGE, revision=sha, started_at=started,
                              duration=time.perf_counter() - clock, summary="no drift",
                              details={DETAILS_KEY: times.as_details()})
        return await self._record(trigger, sha, outcome, started, clock, drift=drift_check, times=times)

    async def pin(self, revision: str) -> str:
        """Rollback, step one: pin an earlier commit and suspend auto-sync so polls leave it alone.

        Only the fields a rollback owns are written: a sync in flight keeps its own bookkeeping, and the
        pinned revision is what the next sync deploys (the worker runs it once the current one ends).
        """
        sha = await self.source.resolve(revision)
        reason = f"rollback to {sha[:12]} requested; resume to follow {self.app.source.follows} again"
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

    def drop_caches(self) -> None:
        """Forget the tree, its blobs and the target's parsed files: the next sync of a commit reads and
        parses everything again, as the first one after a restart does (the large-configuration benchmark)."""
        self._tree = None
        self.source.drop_cache()
        if isinstance(self.target, Caching):
            self.target.drop_cache()

    async def plan_only(self) -> tuple[str, Plan]:
        """The plan against the branch head, for `autodeployer diff`; records nothing."""
        head = await self.source.head()
        sha = await self.source.fetch(head)
        tree = await self.source.read(sha)
        state = self.store.get_state(self.app.name)
        planned = await self._plan(tree, state, None)
        return sha, self._guard(planned.plan)

    async def check_signatures(self, sha: str) -> None:
        """The signed-commits guard for read-only plans (`autodeployer plan`, previews): raises as a sync would."""
        await self._check_signatures(sha, self.store.get_state(self.app.name))

    async def plan_tree(self, tree: Tree) -> Plan:
        """The guarded plan of `tree` against the live target, for read-only plans (`autodeployer plan`,
        pull-request previews): takes no lock, records nothing; refusals raise Refused as in a sync."""
        planned = await self._plan(tree, self.store.get_state(self.app.name), None)
        return self._guard(planned.plan)

    # ------------------------------------------------------------------ steps
    def _idle(self, state: AppState, head: str, now: float) -> bool:
        """Nothing to do: head already synced and no drift check due, or head already refused."""
        if head == state.last_revision and state.last_result is Result.REFUSED:
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
        self, head: str, state: AppState, trigger: Trigger, dry_run: bool, drift_check: bool, started: float,
        *, gated: bool = False, override_window: bool = False, times: StepTimings | None = None,
        start: HeadStart | None = None,
    ) -> tuple[Outcome, str]:
        """The steps from fetch to verify; every failure becomes an Outcome with its Reason."""
        times = times or StepTimings()
        fetched = Fetched(head)
        try:
            fetched = await times.timed("fetch", self._fetch(head, start))
            await self._check_signatures(fetched.sha, state)
            tree = await times.timed("read", self._read(fetched.sha))
            if not drift_check and not dry_run:
                self._report_started(fetched.sha, trigger)
            planned = await times.timed("plan", self._plan(tree, state, fetched.prefetched))
            with times.step("guard"):
                plan = self._guard(planned.plan)
            if plan.empty:
                return Outcome(Result.NO_CHANGE, plan=plan, tree_id=tree.tree_id), fetched.sha
            if dry_run:
                return Outcome(Result.PLANNED, plan=plan, tree_id=tree.tree_id), fetched.sha
            hold, overridden = self._rollout(gated, state, fetched.sha, drift_check, override_window)
            if hold is not None:
                return Outcome(Result.HELD, plan=plan, error=hold.reason, tree_id=tree.tree_id, reason=Reason.HELD,
                               details=hold.details()), fetched.sha
            if drift_check:
                self.log.warning("drift detected on the target; reverting to Git", revision=fetched.sha[:12],
                                 summary=plan.summary())
            # Open the history row before the write, so a crash mid-apply leaves a trace.
            attempt = self._begin(trigger, fetched.sha, started)
            try:
                applied = await times.timed("apply", self._apply(planned, attempt))
                remaining = await times.timed("verify", self._verify(planned))
            except OwnershipLost:
                raise
            except Exception as exc:  # recorded on the row opened above, which must not stay "running"
                return self._error_outcome(exc, plan, attempt), fetched.sha
            return self._with_override(self._verified(planned, tree, applied, remaining), overridden), fetched.sha
        except OwnershipLost as exc:
            return Outcome(Result.NO_CHANGE, error=str(exc), not_applied=exc, reason=Reason.NOT_OWNER), fetched.sha
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not stop the service
            return self._error_outcome(exc, None, None), fetched.sha
        finally:
            _discard(fetched.prefetched)

    # ------------------------------------------------------------------ rollout (rollout/gate.py)
    def _rollout(self, gated: bool, state: AppState, sha: str, drift: bool,
                 override_window: bool) -> tuple[Hold | None, Hold | None]:
        """The guard of the app's rollout policy, just before the apply: (the hold, the window hold an
        override let through). Only a plan with changes gets here, so a held row always has a diff."""
        if not gated:
            return None, None
        hold = self.gate.check(state, sha, drift=drift, override_window=override_window)
        if hold is not None or not override_window:
            return hold, None
        return None, self.gate.window_hold(drift=drift)

    @staticmethod
    def _with_override(outcome: Outcome, overridden: Hold | None) -> Outcome:
        """An apply a window would have held, recorded as overridden (details["window_override"])."""
        if overridden is not None:
            outcome.details = {**(outcome.details or {}),
                               "window_override": {"overridden": True, "would_hold": overridden.reason}}
        return outcome

    async def _held(self, trigger: Trigger, state: AppState, sha: str | None, hold: Hold, force: bool,
                    started: float, clock: float) -> SyncResult:
        """A hold found before anything could be fetched: recorded once, quiet while it lasts."""
        if not force and state.last_result is Result.HELD and state.last_revision == sha:
            return self._quiet_hold(trigger, sha, hold, started, clock)
        outcome = Outcome(Result.HELD, error=hold.reason, reason=Reason.HELD, details=hold.details())
        return await self._record(trigger, sha, outcome, started, clock)

    def _quiet_hold(self, trigger: Trigger, sha: str | None, hold: Hold, started: float,
                    clock: float) -> SyncResult:
        return SyncResult(self.app.name, trigger, Result.HELD, revision=sha, started_at=started,
                          duration=time.perf_counter() - clock, summary=hold.reason, error=hold.reason,
                          reason=Reason.HELD, wake_at=hold.until, details=hold.details())

    async def _resolve(self, state: AppState, revision: str | None, trigger: Trigger | None = None) -> str:
        """The commit this sync is about: the one asked for, the rollback pinned, else the branch head.

        A poll may take the head another app following the same branch checked within one poll
        interval (sources/sharedhead.py); every other trigger checks afresh."""
        if revision or state.pinned_revision:
            return revision or state.pinned_revision or ""
        if trigger is Trigger.POLL:
            return await self.source.head(max_age=self.app.policy.interval)
        return await self.source.head()

    async def _fetch(self, head: str, start: HeadStart | None = None) -> Fetched:
        """Make the commit available locally; the target starts reading its live state meanwhile.

        A commit whose tree is cached (a drift check, a retry) needs neither: commits are immutable.
        A head start (headstart.py) that guessed the head has both under way already."""
        if start is not None and start.sha == head:
            taken, start.prefetched = start.prefetched, None  # the pipeline discards it from now on
            try:
                return Fetched(await start.fetch, taken)
            except BaseException:
                _discard(taken)
                raise
        prefetched: asyncio.Task[Any] | None = None
        if start is not None:  # a wrong guess: its fetch ends first (a killed git leaves lock files)
            await start.settle()
            prefetched, start.prefetched = start.prefetched, None  # the live state is still good
        if self._tree is not None and self._tree.revision == head:
            return Fetched(head, prefetched)
        prefetched = prefetched or self.target.prefetch()
        try:
            return Fetched(await self.source.fetch(head), prefetched)
        except BaseException:
            _discard(prefetched)
            raise

    async def _check_signatures(self, sha: str, state: AppState) -> None:
        """The signed-commits guard (VERIFY_COMMITS), before anything is planned or applied: raises
        UnsignedCommit naming the first commit not signed by a trusted key."""
        if self.signatures is not None:
            await self.signatures.check(self.source.mirror, sha, state.last_synced_revision)

    async def _read(self, sha: str) -> Tree:
        """The files under SYNC_ROOT at the commit (the cached tree when it is the same commit)."""
        if self._tree is not None and self._tree.revision == sha:
            return self._tree
        self._tree = await self.source.read(sha)
        return self._tree

    async def _plan(self, tree: Tree, state: AppState, prefetched: asyncio.Task[Any] | None) -> Planned:
        """Desired state from the tree against the live state: what would change (target-specific
        refusals raise Refused here, naming file and entity)."""
        if not tree.tree_id:
            raise Refused(self._missing_root(tree.revision))
        ctx = SyncContext(self.app, tree, dict(state.memory), self.log, prefetched)
        return Planned(await self.target.plan(ctx), ctx)

    def _guard(self, plan: Plan) -> Plan:
        """The plan, if the app's policy lets it through; raises Refused otherwise."""
        if plan.empties_target and not self.app.policy.allow_empty:
            raise Refused(
                f"the plan removes all {plan.count(Action.REMOVE)} managed entities from the target and adds none; "
                "set ALLOW_EMPTY=true if that is intended"
            )
        return plan

    async def _apply(self, planned: Planned, attempt_id: int | None) -> Applied:
        """The one write to the target."""
        return Applied(await self.target.apply(planned.plan, planned.ctx), attempt_id)

    async def _verify(self, planned: Planned) -> Plan:
        """Read the target back: what still differs from Git (empty when the apply took)."""
        return await self.target.verify(planned.plan, planned.ctx)

    @staticmethod
    def _verified(planned: Planned, tree: Tree, applied: Applied, remaining: Plan) -> Outcome:
        """Synced only when the read-back found nothing left to change; otherwise drift is the reason."""
        plan, report = planned.plan, applied.report
        warnings = plan.warnings + report.warnings
        if not remaining.empty:
            return Outcome(Result.FAILED, plan=plan, warnings=warnings, tree_id=tree.tree_id,
                           attempt_id=applied.attempt_id, reason=Reason.DRIFT, details=report.details,
                           error=f"verification failed: the target still differs ({remaining.summary()})")
        return Outcome(Result.SYNCED, plan=plan, warnings=warnings, memory=report.memory, tree_id=tree.tree_id,
                       attempt_id=applied.attempt_id, details=report.details)

    def _error_outcome(self, exc: Exception, plan: Plan | None, attempt: int | None) -> Outcome:
        """A failed step as a result: its Reason says which kind of failure it was."""
        problems: list[Problem] = list(getattr(exc, "problems", []))
        if isinstance(exc, UnsignedCommit):
            return Outcome(Result.REFUSED, plan=plan, error=exc.args[0], attempt_id=attempt, reason=Reason.UNSIGNED)
        if isinstance(exc, Refused):
            return Outcome(Result.REFUSED, plan=plan, error=exc.args[0], problems=problems, attempt_id=attempt,
                           reason=Reason.REFUSED)
        if isinstance(exc, (SourceError, TargetError)):
            return Outcome(Result.FAILED, plan=plan, error=str(exc), problems=problems, attempt_id=attempt,
                           reason=reason_for(exc))
        self.log.exception("internal error during sync")
        return Outcome(Result.FAILED, plan=plan, error=f"internal error: {type(exc).__name__}: {exc}",
                       attempt_id=attempt, reason=Reason.INTERNAL)

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
        """Another replica owns the app (or ownership cannot be proven): no apply, no failure recorded.

        Said once as a warning; the same reason again (the worker retries every second while a CLI sync
        holds the lock) only at debug level, until something else happens."""
        said = str(exc)
        log = self.log.debug if said == self._not_applied_said else self.log.warning
        log("not applied", reason=said, revision=sha[:12], trigger=trigger.value)
        self._not_applied_said = said
        return SyncResult(self.app.name, trigger, Result.NO_CHANGE, revision=sha, started_at=started,
                          duration=time.perf_counter() - clock, summary=f"not applied: {exc}",
                          reason=Reason.NOT_OWNER, retry_after=exc.retry_after)

    def _missing_root(self, sha: str) -> str:
        root = self.app.source.sync_root or "/"
        return f"SYNC_ROOT {root!r} does not exist (or is not a directory) at {sha[:12]}"

    # ------------------------------------------------------------------ recording
    async def _record(
        self, trigger: Trigger, sha: str | None, outcome: Outcome,
        started: float, clock: float, drift: bool = False, times: StepTimings | None = None,
    ) -> SyncResult:
        """The record step: the result into app state and history, the log, and every reporter.

        Its timing covers building the result, the commit lookup and the state write: the history row
        that stores the timings is written after it (and the reporters are told after that)."""
        record_started = time.perf_counter()
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
            reason=outcome.reason,
        )
        commit = await self._commit_info(sha)
        if commit:
            result.details["commit"] = {"message": commit.message, "author": commit.author}
        if plan and plan.notices:
            result.details["notices"] = plan.notices
        signature = self.signatures.known(sha) if self.signatures is not None else None
        if signature is not None:
            result.details["signature"] = signature.to_dict()
        if outcome.details:
            result.details.update(self.redact.value(outcome.details))
        if outcome.result is Result.HELD:
            result.summary = result.error or result.summary  # the row says why, its diff what waits
            result.wake_at = (result.details.get("held") or {}).get("until")
        self._update_state(result, outcome)
        if times is not None:
            times.add("record", time.perf_counter() - record_started)
            result.details[DETAILS_KEY] = times.as_details()
        self._write_history(result, outcome.attempt_id)
        self._log(result)
        await self._report_finished(result, commit)
        self.health.after_sync(result, plan, outcome.attempt_id)
        return result

    def _deploy_pinned(self) -> None:
        """Deploy the revision an automatic rollback pinned: on the app's worker (single flight), or, when
        there is none (a one-shot CLI run), as a task of its own; never inside the health watch."""
        if self.request_sync is not None:
            self.request_sync(Trigger.ROLLBACK)
        else:
            self._rollback_task = asyncio.get_running_loop().create_task(self.sync(Trigger.ROLLBACK, force=True))

    def _update_state(self, result: SyncResult, outcome: Outcome) -> None:
        """Record the sync's own bookkeeping, never the operator's fields (suspended, its reason, the pin):
        an admin action may have changed those while this sync ran, and they must survive its end."""
        def change(state: AppState) -> dict[str, Any]:
            fields: dict[str, Any] = {"last_attempt_at": result.started_at, "last_result": result.result,
                                      "last_reason": result.reason, "last_revision": result.revision}
            if result.result in (Result.SYNCED, Result.NO_CHANGE):
                fields.update(last_synced_revision=result.revision, last_synced_tree=outcome.tree_id,
                              last_success_at=result.started_at + result.duration,
                              last_drift_check_at=result.started_at, last_error=None, failures=0)
                if "commit" in result.details:
                    fields["live_commit"] = dict(result.details["commit"])
                    if "signature" in result.details:  # who signed what is live (VERIFY_COMMITS)
                        fields["live_commit"]["signature"] = dict(result.details["signature"])
                if outcome.memory is not None:
                    fields["memory"] = outcome.memory
            elif result.result in (Result.FAILED, Result.REFUSED):
                fields.update(failures=state.failures + 1, last_error=result.error)
            elif result.result is Result.HELD:
                fields["last_error"] = result.error  # why it is held (the status view shows it live)
            if state.suspended and state.pinned_revision and state.pinned_revision == result.revision:
                # This sync deployed (or failed to deploy) the rollback still asked for: say which.
                fields["suspended_reason"] = self._rollback_reason(result)
            return fields

        new = self._change_state(change)
        result.failures = new.failures if new is not None else None

    def _rollback_reason(self, result: SyncResult) -> str:
        sha, branch = (result.revision or "")[:12], self.app.source.follows
        if result.result in (Result.SYNCED, Result.NO_CHANGE):
            return f"rolled back to {sha}; resume to follow {branch} again"
        reason = (result.error or result.summary or result.result.value).split("\n")[0]
        return f"rollback to {sha} failed: {reason}; roll back again, or resume to follow {branch} again"

    def _change_state(self, change: StateChange) -> AppState | None:
        try:
            return self.store.update_state(self.app.name, change)
        except Exception as exc:  # disk full, read-only STATE_DIR, PostgreSQL away: report, keep serving
            self.log.error("cannot save app state", error=str(exc))
            return None

    def _write_history(self, result: SyncResult, attempt_id: int | None) -> None:
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
        if result.reason is not None:
            fields["reason"] = result.reason.value
        if result.result.ok:
            self.log.info("sync finished", **fields)
        elif result.result is Result.HELD:  # a policy at work, not an error
            self.log.info("sync held", held=result.error, **fields)
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


_OK = (Result.SYNCED, Result.NO_CHANGE)
DEFAULT_DRIFT_INTERVAL = 60.0  # seconds; DRIFT_INTERVAL unset means max(SYNC_INTERVAL, this)
DRIFT_SLACK = 0.15  # of SYNC_INTERVAL: more than the scheduler's ±10 % poll jitter


def reason_for(exc: AutodeployerError) -> Reason:
    """The kind of failure an error of a step is. A target that names what it rejects (problems) rejected
    the configuration; one that names nothing did not answer as expected."""
    if isinstance(exc, Refused):
        return Reason.REFUSED
    if isinstance(exc, SourceError):
        return Reason.SOURCE_UNAVAILABLE
    if isinstance(exc, TargetError):
        return Reason.REJECTED if exc.problems else Reason.TARGET_UNAVAILABLE
    if isinstance(exc, OwnershipLost):
        return Reason.NOT_OWNER
    return Reason.INTERNAL


def _discard(task: asyncio.Task[Any] | None) -> None:
    """Cancel a prefetch the plan did not use; a failure it had was reported by plan() or does not matter."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
