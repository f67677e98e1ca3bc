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


def _fill(store: SQLiteStore) -> None:
    """SQLITE_FULL ("database or disk is full") from now on, as with a full STATE_DIR."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def _unfill(store: SQLiteStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def test_rollback_journal_not_wal(tmp_path: Path):
    """WAL's -shm file is a shared memory map: a STATE_DIR turning read-only under it means SIGBUS."""
    import sqlite3

    old = sqlite3.connect(str(tmp_path / "history.sqlite3"))
    assert old.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"  # a store of an earlier version
    old.close()
    store = SQLiteStore.in_state_dir(tmp_path)
    store.put_state(AppState(app="a"))
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "truncate"
    assert not list(tmp_path.glob("*-shm")) and not list(tmp_path.glob("*-wal"))


def test_full_disk_keeps_state_and_history_in_memory_then_writes_them(tmp_path: Path, capsys):
    store = SQLiteStore.in_state_dir(tmp_path)
    done = store.begin("a", "poll", "a" * 40, time.time())
    store.finish(done, result("a", Result.SYNCED))
    store.put_state(AppState(app="a", last_result="synced"))
    assert store.warning is None
    _fill(store)
    big = {"k": "x" * 200_000}  # needs new pages
    for failures in (1, 2, 3):  # three failed attempts while the disk is full: nothing raises
        attempt = store.begin("a", "poll", "c" * 40, time.time())
        store.finish(attempt, result("a", Result.FAILED))
        store.put_state(AppState(app="a", last_result="failed", failures=failures, last_error="boom", memory=big))
    state = store.get_state("a")
    # what the worker backs off on
    assert (state.failures, state.last_result, state.last_error) == (3, "failed", "boom")
    rows = store.history("a")
    assert [r.result for r in rows] == ["failed"] * 3 + ["synced"]
    assert len({r.id for r in rows}) == 4
    assert "database or disk is full" in (store.warning or "") and str(tmp_path) in (store.warning or "")
    logged = capsys.readouterr().out
    assert logged.count("cannot write to STATE_DIR") == 1 and "database or disk is full" in logged  # once per kind

    _unfill(store)
    store.put_state(AppState(app="a", last_result="failed", failures=4, memory=big))  # the disk works again
    assert store.warning is None
    assert "can be written again" in capsys.readouterr().out
    ids = [r.id for r in rows]
    store.close()
    again = SQLiteStore.in_state_dir(tmp_path)
    assert [r.id for r in again.history("a")] == ids  # written under the ids handed out meanwhile
    assert [r.result for r in again.history("a")] == ["failed"] * 3 + ["synced"]
    assert again.get_state("a").failures == 4
    later = again.begin("a", "poll", None, time.time())
    assert later > max(ids)


def test_outcome_of_a_row_begun_before_the_disk_filled(tmp_path: Path):
    store = SQLiteStore.in_state_dir(tmp_path)
    attempt = store.begin("a", "webhook", "c" * 40, time.time())
    _fill(store)
    store.finish(attempt, result("a", Result.SYNCED, diff="+" + "y" * 300_000))
    [row] = store.history()
    assert row.result == "synced" and row.trigger == "webhook"
    _unfill(store)
    store.put_state(AppState(app="a"))
    store.close()
    [row] = SQLiteStore.in_state_dir(tmp_path).history()
    assert row.id == attempt and row.result == "synced" and row.diff.startswith("+y")


def test_unusable_state_dir_falls_back_to_memory(tmp_path: Path, capsys):
    from autodeployer.store import open_store

    state_dir = tmp_path / "state"
    state_dir.write_text("not a directory")  # SQLite cannot create its file there (as with a read-only one)
    store = open_store(state_dir, memory_fallback=True)
    assert isinstance(store, SQLiteStore) and store.memory_only
    assert str(state_dir) in (store.warning or "") and "kept in memory until it can be opened" in (store.warning or "")
    assert str(state_dir) in capsys.readouterr().out
    store.finish(store.begin("a", "poll", None, time.time()), result("a", Result.SYNCED))
    store.put_state(AppState(app="a", failures=2))
    assert [r.result for r in store.history("a")] == ["synced"] and store.get_state("a").failures == 2
    import pytest

    with pytest.raises(OSError):
        open_store(state_dir)  # one-shot commands still fail loudly


def test_memory_fallback_moves_to_state_dir_once_it_can_be_used(tmp_path: Path, monkeypatch, capsys):
    """Started with an unusable STATE_DIR, the store keeps everything in memory; once STATE_DIR can be
    used, it all moves into the file, after the rows the file already had, and an attempt that was in
    flight across the move still gets its outcome."""
    from autodeployer.store import open_store
    from autodeployer.store import sqlite as store_module

    monkeypatch.setattr(store_module, "RETRY_EVERY", 0.0)
    state_dir = tmp_path / "state"
    state_dir.write_text("not a directory")
    store = open_store(state_dir, memory_fallback=True)
    assert store.memory_only
    done = store.begin("a", "poll", "r1", time.time())
    store.finish(done, result("a", Result.SYNCED))
    store.put_state(AppState(app="a", failures=2, suspended=True))
    in_flight = store.begin("a", "webhook", "r2", time.time())

    state_dir.unlink()  # the operator fixes STATE_DIR; it holds history from an earlier run
    state_dir.mkdir()
    earlier = SQLiteStore.in_state_dir(state_dir)
    earlier.finish(earlier.begin("a", "startup", "r0", time.time() - 60), result("a", Result.NO_CHANGE))
    earlier.close()

    assert [r.trigger for r in store.history("a")] == ["webhook", "poll", "startup"]  # a read moves it to disk
    assert not store.memory_only and store.warning is None
    store.finish(in_flight, result("a", Result.FAILED))
    store.close()
    assert "STATE_DIR can be used again" in capsys.readouterr().out
    on_disk = SQLiteStore.in_state_dir(state_dir)
    assert [(r.trigger, r.result) for r in on_disk.history("a")] == [("webhook", "failed"), ("poll", "synced"),
                                                                      ("startup", "no-change")]
    assert on_disk.get_state("a").failures == 2 and on_disk.get_state("a").suspended


def test_update_state_changes_only_the_fields_it_returns(tmp_path: Path):
    """A sync's bookkeeping written by one process keeps a suspend that another process (a CLI run, the
    API) wrote after the sync read the state: the read and the write are one transaction."""
    service, cli = SQLiteStore.in_state_dir(tmp_path), SQLiteStore.in_state_dir(tmp_path)
    service.put_state(AppState(app="a", last_result="synced", failures=2))
    seen = service.get_state("a")  # a sync starts with this copy
    cli.update_state("a", lambda _: {"suspended": True, "suspended_reason": "by hand", "pinned_revision": "c" * 40})
    after = service.update_state("a", lambda now: {"last_result": "failed", "failures": now.failures + 1})
    assert not seen.suspended
    for state in (after, cli.get_state("a"), SQLiteStore.in_state_dir(tmp_path).get_state("a")):
        assert state.suspended and state.suspended_reason == "by hand" and state.pinned_revision == "c" * 40
        assert state.last_result == "failed" and state.failures == 3
    assert service.update_state("new", lambda _: {"failures": 1}) == AppState(app="new", failures=1)


def test_a_store_of_one_process_answers_what_a_shared_store_adds(tmp_path: Path):
    """Callers never ask which kind of store they hold: SQLite answers the shared store's questions too."""
    store = SQLiteStore.in_state_dir(tmp_path)
    store.put_state(AppState(app="a", failures=3))
    assert store.states(["a", "b"]) == {"a": AppState(app="a", failures=3), "b": AppState(app="b")}
    assert store.ping() and store.warning is None
    assert store.owners() == {} and store.replicas() == [] and store.heartbeats() == {}
    store.close()


def test_truncated_diffs_say_how_long_they_were(tmp_path: Path):
    from autodeployer.store.base import MAX_DIFF_CHARS

    store = SQLiteStore.in_state_dir(tmp_path)
    long_diff = "x" * (MAX_DIFF_CHARS + 5)
    store.finish(store.begin("a", "poll", None, time.time()), result("a", Result.SYNCED, diff=long_diff))
    [row] = store.history("a")
    assert row.diff == "x" * MAX_DIFF_CHARS + f"\n... diff truncated ({MAX_DIFF_CHARS + 5} characters in all)"
    store.close()


def test_a_driver_that_cannot_be_imported_is_a_broken_install_not_a_missing_extra(app_env: dict[str, str],
                                                                                   tmp_path: Path):
    """psycopg is a dependency of autodeployer, so the error no longer asks for the `postgres` extra."""
    from .helpers import run_cli

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['psycopg'] = None\n")
    env = {**app_env, "PYTHONPATH": str(shim), "STORE_URL": "postgresql://deployer@127.0.0.1:1/autodeployer"}
    done = run_cli(env, "status")
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "STORE_URL" in line and "reinstall autodeployer" in line, done.stderr
    assert "autodeployer[postgres]" not in done.stdout + done.stderr


def test_state_kept_in_memory_is_written_back_without_undoing_another_process(tmp_path: Path):
    """A sync's result is kept in memory while the disk is full; meanwhile the disk recovers and a CLI
    suspends the app. Writing the memory back sets the sync's fields only: the app stays suspended."""
    service = SQLiteStore.in_state_dir(tmp_path)
    service.update_state("a", lambda _: {"last_result": Result.SYNCED, "failures": 0})
    _fill(service)
    big = {"k": "x" * 200_000}  # needs new pages: refused while full
    service.update_state("a", lambda _: {"last_result": Result.FAILED, "failures": 1, "memory": big})
    assert service.warning is not None
    _unfill(service)
    cli = SQLiteStore.in_state_dir(tmp_path)
    cli.update_state("a", lambda _: {"suspended": True, "suspended_reason": "suspended from the command line"})
    cli.close()
    service._retry_at = 0.0  # due now, rather than in RETRY_EVERY seconds
    service.update_state("a", lambda s: {"failures": s.failures + 1})
    assert service.warning is None
    service.close()
    saved = SQLiteStore.in_state_dir(tmp_path).get_state("a")
    assert saved.suspended and saved.suspended_reason == "suspended from the command line"
    assert (saved.last_result, saved.failures, saved.memory) == (Result.FAILED, 2, big)


def test_previews_are_kept_replaced_and_deleted_and_a_version_2_file_gains_them(tmp_path: Path):
    """The previews table (schema version 3): one row per app and pull request, the newest preview replacing
    the one before; a store file written by an earlier version keeps its history and state and gains it."""
    import sqlite3

    from autodeployer.store.sqlite import _SCHEMA

    path = tmp_path / "history.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(_SCHEMA[:2], start=1):
        old.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    old.execute("INSERT INTO app_state (app, data) VALUES ('a', '{\"app\": \"a\", \"suspended\": true}')")
    old.close()

    store = SQLiteStore.in_state_dir(tmp_path)
    assert store.get_state("a").suspended
    assert store.previews("a") == []
    store.save_preview("a", 2, {"number": 2, "summary": "1 added"})
    store.save_preview("a", 1, {"number": 1, "summary": "queued"})
    store.save_preview("a", 1, {"number": 1, "summary": "1 changed"})
    store.save_preview("b", 1, {"number": 1, "summary": "of another app"})
    assert store.previews("a") == [{"number": 1, "summary": "1 changed"}, {"number": 2, "summary": "1 added"}]
    assert store.delete_preview("a", 2)
    assert not store.delete_preview("a", 9)  # nothing to delete: no error
    store.close()

    again = SQLiteStore.in_state_dir(tmp_path)
    assert again.previews("a") == [{"number": 1, "summary": "1 changed"}]
    assert again.previews("b") == [{"number": 1, "summary": "of another app"}]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(_SCHEMA)
    again.close()
