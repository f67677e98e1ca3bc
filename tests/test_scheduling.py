"""Scheduler semantics: single flight, coalescing, settling, priority, suspension, backoff."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass, field

from autodeployer.config.loader import AppConfig, Policy
from autodeployer.model import Result, SyncResult, Trigger
from autodeployer.scheduling import AppWorker, backoff_delay
from autodeployer.sources.spec import SourceSpec
from autodeployer.store import AppState, SQLiteStore
from autodeployer.targets.sesam import Spec

from .fakes import MemoryStore


def test_backoff_doubles_and_caps():
    assert [backoff_delay(10, n) for n in range(6)] == [10, 10, 20, 40, 80, 160]
    assert backoff_delay(10, 20) == 300
    assert backoff_delay(600, 3) == 600  # never shorter than the interval itself


@dataclass
class RecordingReconciler:
    """Stands in for the reconciler to observe the worker; each sync takes `duration` seconds."""

    app: AppConfig
    store: SQLiteStore
    duration: float = 0.1
    calls: list[tuple[float, Trigger]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0

    async def sync(self, trigger: Trigger, force: bool = False, lock_wait: float = 0.0,
                   state: AppState | None = None) -> SyncResult:
        self.calls.append((time.monotonic(), trigger))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(self.duration)
        self.active -= 1
        return SyncResult(self.app.name, trigger, Result.NO_CHANGE)


def make(interval: float = 3600) -> RecordingReconciler:
    app = AppConfig(name="a", source=SourceSpec(url="file:///x"), target=Spec(jwt="j" * 8),
                    policy=Policy(interval=interval))
    return RecordingReconciler(app, MemoryStore())


async def drive(worker: AppWorker, body, until: float) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await body()
    await asyncio.sleep(until)
    stopping.set()
    await asyncio.wait_for(task, 5)


def test_burst_of_triggers_gives_two_syncs_ending_after_the_last():
    rec = make()
    worker = AppWorker(rec)  # type: ignore[arg-type]

    async def burst() -> None:
        await asyncio.sleep(0.3)  # start-up sync done
        for _ in range(50):
            worker.trigger(Trigger.WEBHOOK)
            await asyncio.sleep(0.02)
        TestState.last = time.monotonic()

    asyncio.run(drive(worker, burst, until=1.0))
    webhook_runs = [t for t, trig in rec.calls if trig is Trigger.WEBHOOK]
    assert 1 <= len(webhook_runs) <= 2
    assert webhook_runs[-1] >= TestState.last  # the last run started after the last trigger
    assert rec.max_active == 1


class TestState:
    last = 0.0


def test_isolated_trigger_runs_at_once_and_polls_follow_the_interval():
    rec = make(interval=0.2)
    worker = AppWorker(rec, jitter=0.0)  # type: ignore[arg-type]

    async def one() -> None:
        await asyncio.sleep(0.5)
        TestState.last = time.monotonic()
        worker.trigger(Trigger.MANUAL)

    asyncio.run(drive(worker, one, until=0.7))
    manual = [t for t, trig in rec.calls if trig is Trigger.MANUAL]
    assert manual and manual[0] - TestState.last < 0.05
    polls = [t for t, trig in rec.calls if trig is Trigger.POLL]
    assert len(polls) >= 2 and worker.stats.late_polls == 0


def test_a_push_right_after_the_start_up_sync_is_not_held_as_a_burst():
    """The first push after a (re)start is the first of its burst: it runs at once, not SETTLE later; one
    arriving while the start-up sync runs goes as soon as that ends."""
    rec = make()
    rec.duration = 0.2
    worker = AppWorker(rec)  # type: ignore[arg-type]
    sent: list[float] = []

    async def pushes() -> None:
        await asyncio.sleep(0.1)  # the start-up sync is running
        sent.append(time.monotonic())
        worker.trigger(Trigger.WEBHOOK)
        await asyncio.sleep(0.5)  # its sync ran (0.2 s); a second push 0.1 s after it is part of a burst
        sent.append(time.monotonic())
        worker.trigger(Trigger.WEBHOOK)

    asyncio.run(drive(worker, pushes, until=1.0))
    started = [t for t, trig in rec.calls if trig is Trigger.WEBHOOK]
    startup_end = rec.calls[0][0] + rec.duration
    assert rec.calls[0][1] is Trigger.STARTUP and len(started) == 2
    assert started[0] - startup_end < 0.05  # at once after the start-up sync, not held for SETTLE
    assert started[1] - sent[1] >= 0.25  # after a push's own sync, the next push settles (a burst)


def test_suspended_app_is_not_synced():
    rec = make(interval=0.05)
    from autodeployer.store import AppState

    rec.store.put_state(AppState(app="a", suspended=True))
    worker = AppWorker(rec)  # type: ignore[arg-type]

    async def nothing() -> None:
        worker.trigger(Trigger.WEBHOOK)

    asyncio.run(drive(worker, nothing, until=0.4))
    assert rec.calls == []


class UnreadableStore:
    """A real SQLite store whose state reads fail (as on a disk I/O error) while `broken` is set."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.broken = True
        self.failed_reads = 0

    def get_state(self, app: str):  # type: ignore[no-untyped-def]
        if self.broken:
            self.failed_reads += 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._store.get_state(app)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._store, name)


def test_unreadable_state_postpones_syncs_and_the_worker_survives():
    """While the app's state cannot be read nothing syncs (it might be suspended), reads back off
    instead of hammering, and the webhook that arrived meanwhile runs once the store answers again."""
    rec = make(interval=0.05)
    from autodeployer.store import AppState

    rec.store.put_state(AppState(app="a", suspended=True))
    store = UnreadableStore(rec.store)
    rec.store = store  # type: ignore[assignment]
    worker = AppWorker(rec, jitter=0.0)  # type: ignore[arg-type]
    seen: dict[str, object] = {}

    async def outage() -> None:
        worker.trigger(Trigger.WEBHOOK)
        await asyncio.sleep(0.8)
        seen["calls_while_broken"] = list(rec.calls)
        seen["reads_while_broken"] = store.failed_reads
        rec.store._store.put_state(AppState(app="a", suspended=False))  # type: ignore[attr-defined]
        store.broken = False
        seen["repaired_at"] = time.monotonic()

    asyncio.run(drive(worker, outage, until=1.0))
    assert seen["calls_while_broken"] == []
    # backoff doubles from 0.05 s: about 5 reads in 0.8 s, where a read every poll would be 16
    assert 3 <= seen["reads_while_broken"] <= 7, seen  # type: ignore[operator]
    assert rec.calls and rec.calls[0][1] is Trigger.WEBHOOK and rec.calls[0][0] > seen["repaired_at"]  # type: ignore[operator]
