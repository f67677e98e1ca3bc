"""The SQLite store: history rows, state, interrupted attempts, survival across reopen."""

from __future__ import annotations

import time
from pathlib import Path

from autodeployer.model import Problem, Result, SyncResult, Trigger
from autodeployer.store import AppState, SQLiteStore


def result(app: str, outcome: Result, diff: str = "") -> SyncResult:
    return SyncResult(app, Trigger.POLL, outcome, revision="b" * 40, summary="1 added", diff=diff,
                      error="boom" if not outcome.ok else None, problems=[Problem("bad", "pipes/x", "x")],
                      started_at=time.time(), duration=0.5)


def test_history_and_state_survive_reopen(tmp_path: Path):
    store = SQLiteStore.in_state_dir(tmp_path)
    attempt = store.begin("a", "poll", "b" * 40, time.time())
    store.finish(attempt, result("a", Result.SYNCED, diff="+x"))
    store.finish(store.begin("b", "poll", None, time.time()), result("b", Result.FAILED))
    store.put_state(AppState(app="a", last_synced_revision="b" * 40, suspended=True, memory={"k": [1]}))
    store.close()

    again = SQLiteStore.in_state_dir(tmp_path)
    rows = again.history()
    assert [r.app for r in rows] == ["b", "a"]
    assert rows[1].result == "synced" and rows[1].diff == "+x" and rows[1].duration == 0.5
    assert rows[0].problems == ["pipes/x: x: bad"] and rows[0].error == "boom"
    assert [r.app for r in again.history("a", limit=5)] == ["a"]
    state = again.get_state("a")
    assert state.suspended and state.memory == {"k": [1]} and state.last_synced_revision == "b" * 40
    assert again.get_state("unknown") == AppState(app="unknown")


def test_running_attempts_become_interrupted(tmp_path: Path):
    store = SQLiteStore.in_state_dir(tmp_path)
    store.begin("a", "webhook", "c" * 40, time.time())
    store.close()
    again = SQLiteStore.in_state_dir(tmp_path)
    assert again.mark_interrupted() == 1
    [row] = again.history()
    assert row.result == "interrupted" and "stopped during this attempt" in row.error


def test_huge_diffs_are_truncated(tmp_path: Path):
    store = SQLiteStore.in_state_dir(tmp_path)
    store.finish(store.begin("a", "poll", None, time.time()), result("a", Result.SYNCED, diff="x" * 2_000_000))
    [row] = store.history()
    assert len(row.diff) < 1_100_000 and "diff truncated" in row.diff
