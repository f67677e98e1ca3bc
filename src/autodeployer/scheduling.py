"""Per-app workers: poll timers, triggers, coalescing, settling and backoff.

Each app has one worker task, so one sync runs at a time per app. Triggers that arrive while a sync
runs collapse into a single pending run; because the worker resolves the branch head when that run
starts, it always deploys the newest commit. A push that arrives while the app is busy (a sync
running or just finished) is held until pushes have been quiet for `settle` seconds, so a burst of
pushes costs at most two applies: the first push at once, the rest together. An isolated push is
never delayed, nor is a push that follows a poll or the start-up sync (those are not part of a burst).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .coordination import Coordinator, LocalCoordinator
from .logs import get_logger
from .model import Result, SyncResult, Trigger
from .reconcile import Reconciler
from .store import AppState

MAX_BACKOFF = 300.0
SETTLE = 0.3  # quiet time that ends a burst of pushes
BURST_MAX_WAIT = 5.0  # a never-ending stream of pushes still deploys this often
WAKE_MARGIN = 0.05  # seconds after a held revision's `wake_at`, so the window is surely open then
_NOT_PUSHES = (Trigger.POLL, Trigger.STARTUP)  # syncs after which a push is the first of its burst
_PRIORITY = {Trigger.POLL: 0, Trigger.STARTUP: 1, Trigger.WEBHOOK: 2, Trigger.MANUAL: 3, Trigger.ROLLBACK: 4}


def backoff_delay(interval: float, failures: int, cap: float = MAX_BACKOFF) -> float:
    """Poll interval after `failures` consecutive failures: doubled each time, capped."""
    if failures <= 0:
        return interval
    return min(interval * 2.0 ** (failures - 1), max(cap, interval))


@dataclass
class WorkerStats:
    runs: int = 0
    late_polls: int = 0  # poll runs that started more than a second (or 10 %) after their due time
    max_lateness: float = 0.0
    last_result: SyncResult | None = None


@dataclass
class AppWorker:
    reconciler: Reconciler
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random)
    on_result: Callable[[SyncResult], None] | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    settle: float = SETTLE
    burst_max_wait: float = BURST_MAX_WAIT
    on_poll: Callable[[str, float], None] | None = None  # (app, seconds late) of each poll, e.g. for metrics

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._dozing: asyncio.Future[None] | None = None  # what a waiting run() awaits (see _doze)
        self._pending: Trigger | None = None
        self._busy_trigger = False  # a trigger arrived while a sync was running
        self._last_finished = -1e9
        self.running: Trigger | None = None
        self.next_poll_at: float = time.time()
        self.suspended = False
        self._retry: Trigger | None = None  # re-run this trigger at next_poll_at (not applied: busy elsewhere)
        self._unreadable = 0  # consecutive attempts that could not read the app's state
        self.override_window = False  # the next manual sync deploys even outside the app's sync windows
        self._hint: str | None = None  # the commit the newest delivery named: a guess for a head start (headstart.py)
        self._log = get_logger(app=self.name)
        self.reconciler.request_sync = self.trigger  # an automatic rollback is queued here (rollout/)

    @property
    def name(self) -> str:
        return self.reconciler.app.name

    @property
    def pending(self) -> Trigger | None:
        return self._pending

    def trigger(self, trigger: Trigger, commit: str | None = None) -> None:
        """Ask for a sync; merges with a pending one (the stronger trigger wins). `commit`: what a
        delivery named, only fetched ahead of the head check (the newest delivery's guess wins)."""
        if commit is not None:
            self._hint = commit
        if self._pending is None or _PRIORITY[trigger] > _PRIORITY[self._pending]:
            self._pending = trigger
        if self.running is not None and self.running not in _NOT_PUSHES:
            self._busy_trigger = True  # polls and the start-up check never delay a push
        self._wake.set()
        self._rouse()

    async def run(self, stopping: asyncio.Event, first: Trigger = Trigger.STARTUP) -> None:
        self.trigger(first)
        watch = asyncio.ensure_future(stopping.wait())  # one task per run, not two per wait (see _doze)
        watch.add_done_callback(lambda _: self._rouse())
        try:
            await self._loop(stopping)
        finally:
            watch.cancel()

    async def _loop(self, stopping: asyncio.Event) -> None:
        interval = self.reconciler.app.policy.interval
        while not stopping.is_set():
            delay = max(0.0, self.next_poll_at - time.time())
            if self._pending is None:
                await self._doze(stopping, delay)
            if stopping.is_set():
                break
            if self._pending is not None and self._pending is not Trigger.POLL and self._hot():
                await self._settle(stopping)
            trigger = self._pending or self._retry or Trigger.POLL
            hint, self._hint = self._hint, None
            self._pending = self._retry = None
            self._busy_trigger = False
            self._wake.clear()
            if trigger is Trigger.POLL:
                self._note_lateness(time.time() - self.next_poll_at, interval)
            # Read from the store each time: the CLI, the API or another replica may have changed it.
            state = self.read_state()
            if state is None:  # never sync blind: a made-up state would resume a suspended app
                self._unreadable += 1
                self._retry = trigger  # a push is not lost, only delayed until the store answers
                self.next_poll_at = time.time() + backoff_delay(interval, self._unreadable)
                continue
            self._unreadable = 0
            result = await self._run_once(trigger, state, hint)
            # Only failures back off: a refused head costs one head check per poll, and its fix must
            # be deployed at the poll interval, not minutes later.
            failed = result is not None and result.result is Result.FAILED
            failures = ((result.failures if result and result.failures is not None else 1) if failed else 0)
            spread = 1 + self.rng.uniform(-self.jitter, self.jitter)
            self.next_poll_at = time.time() + backoff_delay(interval, failures) * spread
            if result is not None and result.retry_after is not None:  # busy elsewhere: try again soon
                self._retry = trigger
                self.next_poll_at = min(self.next_poll_at, time.time() + result.retry_after)
            if result is not None and result.wake_at is not None:  # held: look again when the window opens
                self.next_poll_at = min(self.next_poll_at, max(time.time(), result.wake_at + WAKE_MARGIN))

    async def _doze(self, stopping: asyncio.Event, timeout: float) -> None:
        """Wait until a trigger, `stopping` (run()'s watch) or `timeout`: one future and one timer per
        wait. Two tasks and an `asyncio.wait` per wait were a tenth of an idle poll's CPU."""
        if self._wake.is_set() or stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        self._dozing = dozing = loop.create_future()
        timer = loop.call_later(max(0.0, timeout), self._rouse)
        try:
            await dozing
        finally:
            timer.cancel()
            if self._dozing is dozing:
                self._dozing = None

    def _rouse(self) -> None:
        dozing = self._dozing
        if dozing is not None and not dozing.done():
            dozing.set_result(None)

    def _hot(self) -> bool:
        return self._busy_trigger or time.monotonic() - self._last_finished < self.settle

    async def _settle(self, stopping: asyncio.Event) -> None:
        """Wait until triggers have been quiet for `settle` seconds (bounded)."""
        deadline = time.monotonic() + self.burst_max_wait
        while not stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            await self._doze(stopping, min(self.settle, remaining))
            if not self._wake.is_set():
                return

    def _note_lateness(self, lateness: float, interval: float) -> None:
        self.stats.max_lateness = max(self.stats.max_lateness, lateness)
        if self.on_poll is not None:
            self.on_poll(self.name, lateness)
        if lateness > max(1.0, 0.1 * interval):
            self.stats.late_polls += 1

    def read_state(self) -> AppState | None:
        try:
            return self.reconciler.store.get_state(self.name)
        except Exception as exc:  # sqlite3 or psycopg errors: the worker must outlive them
            self._log.error("the app's state cannot be read from the store; sync postponed",
                            error=f"{type(exc).__name__}: {exc}", attempt=self._unreadable + 1)
            return None

    async def _run_once(self, trigger: Trigger, state: AppState, hint: str | None = None) -> SyncResult | None:
        self.suspended = state.suspended
        # A suspended app runs only the rollback it is pinned to (a resume may have cleared the pin and a
        # suspend followed since the rollback was queued: then nothing runs).
        if self.suspended and not (trigger is Trigger.ROLLBACK and state.pinned_revision):
            return None
        self.running = trigger
        try:
            # Never wait for the app's lock here: a CLI run holds it; the retry below comes back in a second.
            override, self.override_window = self.override_window and trigger is Trigger.MANUAL, False
            force = trigger is not Trigger.POLL
            if hint is not None and trigger is Trigger.WEBHOOK:  # a head start, never the revision (headstart.py)
                result = await self.reconciler.sync(trigger, force=force, lock_wait=0.0, commit_hint=hint)
            elif override:  # asked through the API: the reconciler records it (details["window_override"])
                result = await self.reconciler.sync(trigger, force=force, lock_wait=0.0, override_window=True)
            elif trigger is Trigger.POLL:  # the state just read: a poll reads the store once, not twice
                result = await self.reconciler.sync(trigger, force=force, lock_wait=0.0, state=state)
            else:
                result = await self.reconciler.sync(trigger, force=force, lock_wait=0.0)
        except Exception:  # the reconciler records its own errors; this is a last line of defence
            self._log.exception("sync crashed")
            return None
        finally:
            self.running = None
            if trigger not in _NOT_PUSHES:  # a burst follows a deploy; a push right after start goes at once
                self._last_finished = time.monotonic()
        self.stats.runs += 1
        self.stats.last_result = result
        if self.on_result:
            self.on_result(result)
        return result


class Scheduler:
    """Owns the workers; the web layer and the CLI talk to it, never to workers directly."""

    def __init__(self, reconcilers: Iterable[Reconciler], *, jitter: float = 0.1, seed: int | None = None,
                 coordinator: Coordinator | None = None, on_poll: Callable[[str, float], None] | None = None):
        rng = random.Random(seed)
        self.workers: dict[str, AppWorker] = {
            r.app.name: AppWorker(r, jitter=jitter, rng=random.Random(rng.random()), on_poll=on_poll)
            for r in reconcilers
        }
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self._wake_followers()
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # one per app this replica runs (or just ran)
        self._app_stops: dict[str, asyncio.Event] = {}
        self._was_ready = False
        self._log = get_logger()

    def _wake_followers(self) -> None:
        """An app promoted from another (policy.promote_from) looks again as soon as that app synced here,
        rather than at its next poll (replicas running the downstream see it at their poll)."""
        followers: dict[str, list[str]] = {}
        for worker in self.workers.values():
            upstream = worker.reconciler.app.policy.promote_from
            if upstream in self.workers:
                followers.setdefault(upstream, []).append(worker.name)
        for upstream, names in followers.items():
            worker = self.workers[upstream]
            if worker.on_result is None:
                worker.on_result = self._poll_followers(names)

    def _poll_followers(self, names: list[str]) -> Callable[[SyncResult], None]:
        def poll(result: SyncResult) -> None:
            if result.result is Result.SYNCED:
                for name in names:
                    self.local_trigger(name, Trigger.POLL)
        return poll

    async def start(self) -> None:
        for worker in self.workers.values():
            state = worker.read_state()  # unreadable: the worker retries before its first sync
            worker.suspended = state.suspended if state else False
        await self.coordinator.start(self)  # the local coordinator acquires every app at once

    async def stop(self, timeout: float = 600.0) -> None:
        """Stop polling; let in-flight syncs finish (bounded), release ownership, then return."""
        self._stopping.set()
        for stop in self._app_stops.values():
            stop.set()
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self._tasks.clear()
        await self.coordinator.stop()

    # ------------------------------------------------------------------ ownership (the coordinator calls these)
    def app_names(self) -> list[str]:
        return list(self.workers)

    def acquire(self, app: str, state: Any = None) -> bool:
        """Start the worker of an app this replica now owns (`state`: its AppState, if already read)."""
        worker = self.workers.get(app)
        if worker is None or self._stopping.is_set():
            return False
        first = Trigger.STARTUP
        if not self.coordinator.local:  # the previous owner may have left state this replica must honour
            state = state or worker.reconciler.store.get_state(app)
            worker.suspended = state.suspended
            if state.pinned_revision and state.last_revision != state.pinned_revision:
                first = Trigger.ROLLBACK  # a rollback queued on the previous owner, not yet deployed
        stop = self._app_stops[app] = asyncio.Event()
        previous = self._tasks.get(app)

        async def run() -> None:
            if previous is not None and not previous.done():  # a dropped run still finishing its sync
                await asyncio.wait({previous})
            await worker.run(stop, first)

        self._tasks[app] = asyncio.create_task(run(), name=f"worker-{app}")
        return True

    def drop(self, app: str) -> None:
        """Stop an app's worker; a sync in flight finishes first (see stopped())."""
        stop = self._app_stops.pop(app, None)
        if stop is not None:
            stop.set()

    def stopped(self, app: str) -> bool:
        task = self._tasks.get(app)
        return task is None or task.done()

    def is_idle(self, app: str) -> bool:
        worker = self.workers.get(app)
        return worker is None or (worker.running is None and worker.pending is None)

    def local_trigger(self, app: str, trigger: Trigger, override_window: bool = False) -> None:
        """A trigger for an app this replica runs (a forwarded one: another replica received it)."""
        worker = self.workers.get(app)
        if worker is not None and self.coordinator.owns(app):
            if override_window and trigger is Trigger.MANUAL:
                worker.override_window = True
            worker.trigger(trigger)

    def trigger(self, app: str, trigger: Trigger, commit: str | None = None) -> bool:
        """Queue a sync: on the local worker if this replica owns the app, else on its owner (`commit`,
        a delivery's guess at the head, only helps locally)."""
        worker = self.workers.get(app)
        if worker is None:
            return False
        if not self.coordinator.owns(app):
            return self.coordinator.forward(app, trigger)
        worker.trigger(trigger, commit)
        return True

    def apps_following(self, repo_full_name: str, branch: str) -> list[str]:
        """Apps following `branch` of the repository; a tag is given as its full ref (`refs/tags/v1`)."""
        name = repo_full_name.lower()
        ref = branch if branch.startswith("refs/tags/") else f"refs/heads/{branch}"
        return [
            w.name
            for w in self.workers.values()
            if (w.reconciler.app.source.repo_full_name or "").lower() == name
            and w.reconciler.app.source.ref == ref
        ]

    def worker(self, app: str) -> AppWorker | None:
        """The app's worker when this replica runs it (None for apps owned by another replica)."""
        return self.workers.get(app) if self.coordinator.owns(app) else None

    async def rollback(self, app: str, revision: str) -> str:
        """Pin `revision` and queue its deployment; returns the full sha."""
        worker = self.workers[app]
        sha = await worker.reconciler.pin(revision)
        self.trigger(app, Trigger.ROLLBACK)
        return sha

    def sync_overriding_window(self, app: str) -> bool:
        """A manual sync that deploys outside the app's sync windows (recorded as overridden), on the replica
        running the app: handed to it when another replica owns the app. False when it cannot be handed on."""
        worker = self.workers.get(app)
        if worker is None:
            return False
        if not self.coordinator.owns(app):
            return self.coordinator.forward(app, Trigger.MANUAL, override_window=True)
        worker.override_window = True
        worker.trigger(Trigger.MANUAL)
        return True

    def suspend(self, app: str, reason: str) -> None:
        worker = self.workers[app]
        worker.reconciler.suspend(reason)  # in the store: the owner reads it before every sync
        worker.suspended = True

    def resume(self, app: str) -> None:
        worker = self.workers[app]
        worker.reconciler.resume()
        worker.suspended = False
        self.trigger(app, Trigger.MANUAL)

    @property
    def pending_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.pending is not None)

    def all_attempted(self) -> bool:
        """Every app this replica owns has been attempted (and, with a shared store, ownership is provable)."""
        coordinator = self.coordinator
        ready = coordinator.ready and all(
            w.stats.runs > 0 or w.suspended for w in self.workers.values() if coordinator.owns(w.name)
        )
        if coordinator.local:
            return ready
        self._was_ready = self._was_ready or ready  # apps taken over later do not make it unready
        return self._was_ready and coordinator.healthy

