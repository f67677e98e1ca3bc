"""The SQLite store under STATE_DIR: the embedded default for one process (and CLI runs beside it)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..logs import get_logger
from ..model import Reason, Result, SyncResult
from .base import (
    AppState,
    HistoryRow,
    StateChange,
    annotated,
    history_query,
    outcome_columns,
    row_from_columns,
    state_from_json,
    state_to_json,
)
from .locks import AppLock

_SCHEMA = [
    # version 1
    """
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        trigger TEXT NOT NULL,
        revision TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        duration REAL,
        result TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '',
        diff TEXT NOT NULL DEFAULT '',
        error TEXT,
        warnings TEXT NOT NULL DEFAULT '[]',
        problems TEXT NOT NULL DEFAULT '[]',
        drift INTEGER NOT NULL DEFAULT 0,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX history_app ON history (app, id);
    CREATE TABLE app_state (
        app TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    """,
    # version 2: why an attempt did not end in sync (model.Reason)
    "ALTER TABLE history ADD COLUMN reason TEXT",
    # version 3: the newest preview of each open pull request (previews.py)
    """
    CREATE TABLE previews (
        app TEXT NOT NULL,
        number INTEGER NOT NULL,
        data TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (app, number)
    )
    """,
]


MAX_PENDING_ROWS = 200  # history rows kept in memory while STATE_DIR cannot be written (oldest dropped)
MAX_MEMORY_ROWS = 5_000  # history rows an in-memory store keeps
RETRY_EVERY = 5.0  # seconds between attempts to write what is kept in memory, when nothing else writes
#: The outcome columns in outcome_columns()'s order, for UPDATE ... SET.
_OUTCOME_SET = ("revision = ?, finished_at = ?, duration = ?, result = ?, summary = ?, diff = ?, error = ?, "
                "warnings = ?, problems = ?, drift = ?, details = ?, reason = ?")
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def _write_failure(exc: BaseException) -> bool:
    """A failure of the disk under the store (full, read-only, I/O error, locked), not a bug."""
    return isinstance(exc, (sqlite3.DatabaseError, OSError)) and not isinstance(exc, _BUGS)


class SQLiteStore:
    """Thread-safe: the web layer reads while the scheduler writes (one connection behind a lock).

    The journal is a rollback journal (TRUNCATE), not WAL: WAL's index is a shared memory map
    (``-shm``), and a STATE_DIR that turns read-only or full under it kills the process with SIGBUS.

    A write that STATE_DIR refuses (disk full, read-only, I/O error) never raises: the app state and
    the history rows are kept in memory, so the newest state (failure count, status, error) is what
    readers see and the worker still backs off; the error is logged once per kind, and what memory
    holds is written as soon as a write succeeds again. ``warning`` says so meanwhile.
    """

    def __init__(self, path: Path | None, *, warning: str | None = None) -> None:
        """`path` None: an in-memory database (history lost at exit); `warning` says why."""
        self.path = path
        self.memory_only = path is None
        self._fixed_warning = warning
        self._log = get_logger(component="store")
        self._lock = threading.RLock()
        self._db = _connect(path, self._log)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'history'").fetchone()
        self._last_id = int(row[0]) if row else 0
        # kept in memory while STATE_DIR refuses writes: app -> state, id -> row (in the DB or not yet)
        self._states: dict[str, AppState] = {}
        #: Per app kept in memory: the fields update_state() changed there (written back alone, over what
        #: the file holds by then), or None when the whole state is this process's (put_state, a first start).
        self._changed: dict[str, set[str] | None] = {}
        self._rows: dict[int, tuple[HistoryRow, bool]] = {}  # id -> (row, already inserted in the DB)
        self._failures: dict[str, str] = {}  # kind -> message, logged once each
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._dropped = 0
        self._moved: dict[int, int] = {}  # id handed out while kept in memory -> the id it was written under
        self._reopen: Path | None = None  # an in-memory fallback moves to this file once it can be opened
        self._reopen_at = 0.0

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> SQLiteStore:
        return cls(state_dir / "history.sqlite3")

    @classmethod
    def in_memory(cls, warning: str, *, reopen: Path | None = None) -> SQLiteStore:
        """`reopen`: the file this store moves to, with all it holds, once STATE_DIR can be used."""
        store = cls(None, warning=warning)
        store._reopen = reopen
        return store

    @property
    def warning(self) -> str | None:
        """Why history or state is not being saved to STATE_DIR right now; None when all is well."""
        if self._fixed_warning:
            return self._fixed_warning
        if self._failing_since is None:
            return None
        directory = self.path.parent if self.path else "STATE_DIR"
        reasons = "; ".join(dict.fromkeys(self._failures.values()))
        return (f"STATE_DIR {directory} cannot be written ({reasons}): app state and history are kept in memory "
                f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self._failing_since))} and written "
                "once it can be again")

    # ------------------------------------------------------------------ writes
    def begin(self, app: str, trigger: str, revision: str | None, started_at: float) -> int:
        with self._lock:
            self._reopen_if_due()
            if self._flush():
                try:
                    cursor = self._db.execute(
                        "INSERT INTO history (app, trigger, revision, started_at, result) VALUES (?, ?, ?, ?, ?)",
                        (app, trigger, revision, started_at, Result.RUNNING.value),
                    )
                except Exception as exc:
                    if not _write_failure(exc):
                        raise
                    self._failed(exc)
                else:
                    self._last_id = max(self._last_id, int(cursor.lastrowid or 0))
                    self._prune()
                    return int(cursor.lastrowid or 0)
            # Not written: an id after every id SQLite has handed out (AUTOINCREMENT never reuses one),
            # so the row normally keeps it when it is written later.
            self._last_id = max(self._last_id, self._sequence()) + 1
            row = HistoryRow(self._last_id, app, trigger, revision, started_at, None, None, Result.RUNNING.value,
                             "", "", None, [], [], False, {})
            self._keep_row(row, inserted=False)
            return row.id

    def finish(self, attempt_id: int, result: SyncResult) -> None:
        outcome = outcome_columns(result)
        with self._lock:
            attempt_id = self._moved.get(attempt_id, attempt_id)
            kept = self._rows.get(attempt_id)
            if kept is None and self._flush():
                try:
                    self._db.execute(f"UPDATE history SET {_OUTCOME_SET} WHERE id = ?", (*outcome.values(), attempt_id))
                    return
                except Exception as exc:
                    if not _write_failure(exc):
                        raise
                    self._failed(exc)
            # Kept in memory until it can be written: the row begun in memory, or the outcome of one the DB has.
            if kept is not None:
                base: HistoryRow | None = kept[0]
                inserted = kept[1]
            else:
                found = self._db_rows("SELECT * FROM history WHERE id = ?", (attempt_id,))
                base, inserted = (found[0] if found else None), True
            app, trigger, started_at = ((base.app, base.trigger, base.started_at) if base else
                                        (result.app, result.trigger.value, result.started_at))
            row = row_from_columns({"id": attempt_id, "app": app, "trigger": trigger, "started_at": started_at,
                                    **outcome})
            self._keep_row(row, inserted=inserted)
            if kept is not None:  # the DB was not tried yet in this call
                self._flush()

    def annotate(self, attempt_id: int, key: str, value: Any) -> None:
        """Merge one key into a history row's details (read and written under SQLite's write lock, so
        a concurrent annotation of another key is kept); a row still held in memory is changed there."""
        with self._lock:
            attempt_id = self._moved.get(attempt_id, attempt_id)
            kept = self._rows.get(attempt_id)
            if kept is not None:
                row, inserted = kept
                self._keep_row(replace(row, details={**row.details, key: value}), inserted=inserted)
                self._flush()
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                found = self._db.execute("SELECT details FROM history WHERE id = ?", (attempt_id,)).fetchone()
                if found is not None:
                    self._db.execute("UPDATE history SET details = ? WHERE id = ?",
                                     (annotated(found["details"], key, value), attempt_id))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def put_state(self, state: AppState) -> None:
        with self._lock:
            self._reopen_if_due()
            self._states[state.app] = AppState(**asdict(state))  # a copy: the caller goes on changing its own
            self._changed[state.app] = None
            self._flush()

    def update_state(self, app: str, change: StateChange) -> AppState:
        """Change only the fields `change` returns, in one transaction with the read it is given, and
        return the new state. A sync records its result this way, so a suspend or a rollback that another
        request or process wrote while the sync ran is kept, never overwritten by a stale copy.

        When STATE_DIR refuses the write, the new state is kept in memory like put_state()'s, and written
        whole once it can be (until then this process is the only writer that can reach the file anyway).
        """
        with self._lock:
            self._reopen_if_due()
            if self._flush():
                try:
                    return self._update_in_db(app, change)
                except Exception as exc:
                    if not _write_failure(exc):
                        raise
                    self._failed(exc)
            # A read that fails raises here: a state made up from nothing would resume a suspended app.
            base = self._states.get(app) or self._read_state(app)
            fields = change(AppState(**asdict(base)))
            new = replace(base, **fields)
            self._states[app] = new
            if app not in self._changed:
                self._changed[app] = set()
            changed = self._changed[app]
            if changed is not None:
                changed.update(fields)
            return AppState(**asdict(new))

    def app_lock(self, app: str) -> AppLock:
        """The app's apply lock, shared by every process using this STATE_DIR (see AppLock)."""
        path = self.path or self._reopen  # an in-memory fallback still locks where its file will be
        return AppLock.in_state_dir(path.parent, app) if path is not None else AppLock(None)

    def _update_in_db(self, app: str, change: StateChange) -> AppState:
        """Read, change and write one app's state under SQLite's write lock (BEGIN IMMEDIATE), so a
        change made by another process (a CLI run) between the read and the write cannot be lost."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self._read_state(app)
            new = replace(current, **change(AppState(**asdict(current))))
            self._db.execute(
                "INSERT INTO app_state (app, data) VALUES (?, ?) ON CONFLICT(app) DO UPDATE SET data = excluded.data",
                (app, state_to_json(new)),
            )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        return new

    def _read_state(self, app: str) -> AppState:
        row = self._db.execute("SELECT data FROM app_state WHERE app = ?", (app,)).fetchone()
        return state_from_json(app, row["data"]) if row is not None else AppState(app=app)

    def mark_interrupted(self) -> int:
        """Attempts still 'running' belong to a process that died; say so."""
        with self._lock:
            try:
                cursor = self._db.execute(
                    "UPDATE history SET result = ?, reason = ?, error = ?, finished_at = ? WHERE result = ?",
                    (
                        Result.INTERRUPTED.value,
                        Reason.INTERRUPTED.value,
                        "the process stopped during this attempt",
                        time.time(),
                        Result.RUNNING.value,
                    ),
                )
            except Exception as exc:
                if not _write_failure(exc):
                    raise
                self._failed(exc)
                return 0
            return cursor.rowcount

    # ------------------------------------------------------------------ reads
    def history(self, app: str | None = None, limit: int = 50) -> list[HistoryRow]:
        query, args = history_query(app, limit, "?")
        limit = max(1, limit)
        with self._lock:
            self._retry()
            rows = {r.id: r for r in self._db_rows(query, args)}
            for row, _ in self._rows.values():
                if app is None or row.app == app:
                    rows[row.id] = row  # newer than what the DB has, or not in it at all
        return sorted(rows.values(), key=lambda r: r.id, reverse=True)[:limit]

    def get_state(self, app: str) -> AppState:
        with self._lock:
            self._retry()
            kept = self._states.get(app)
            if kept is not None:
                return AppState(**asdict(kept))
            # A read that fails raises: an empty state made up here would resume a suspended app.
            row = self._db.execute("SELECT data FROM app_state WHERE app = ?", (app,)).fetchone()
        if row is None:
            return AppState(app=app)
        return state_from_json(app, row["data"])

    def states(self, apps: list[str]) -> dict[str, AppState]:
        return {app: self.get_state(app) for app in apps}

    # ------------------------------------------------------------------ previews
    # A preview that cannot be written is not kept in memory here: the preview service holds its own, and
    # plans the pull request again at its next delivery or poll.
    def save_preview(self, app: str, number: int, data: Mapping[str, Any]) -> None:
        self._write_preview("INSERT INTO previews (app, number, data, updated_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (app, number) DO UPDATE SET data = excluded.data, "
                            "updated_at = excluded.updated_at", (app, number, json.dumps(data), time.time()))

    def delete_preview(self, app: str, number: int) -> bool:
        return self._write_preview("DELETE FROM previews WHERE app = ? AND number = ?", (app, number)) > 0

    def _write_preview(self, sql: str, args: tuple[Any, ...]) -> int:
        """Rows written (0 when STATE_DIR refused the write)."""
        with self._lock:
            try:
                return int(self._db.execute(sql, args).rowcount)
            except Exception as exc:
                if not _write_failure(exc):
                    raise
                self._failed(exc)
                return 0

    def previews(self, app: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT data FROM previews WHERE app = ? ORDER BY number", (app,)).fetchall()
        return [json.loads(row["data"]) for row in rows]

    # A store of one process: no other replica owns anything, and the file is always at hand.
    def ping(self) -> bool:
        return True

    def owners(self) -> dict[str, str]:
        return {}

    def replicas(self) -> list[dict[str, Any]]:
        return []

    def heartbeats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        with self._lock:
            self._flush()
            if self._states or self._rows:
                self._log.error("history and app state kept in memory are lost: STATE_DIR still cannot be written",
                                states=len(self._states), history_rows=len(self._rows))
            self._db.close()

    # ------------------------------------------------------------------ kept in memory
    def _db_rows(self, query: str, args: tuple[Any, ...]) -> list[HistoryRow]:
        try:
            return [row_from_columns(r) for r in self._db.execute(query, args).fetchall()]
        except Exception as exc:
            if not _write_failure(exc):
                raise
            self._failed(exc, reading=True)
            return []

    def _sequence(self) -> int:
        """The last history id SQLite handed out (to any process), 0 if it cannot be read."""
        try:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'history'").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    def _keep_row(self, row: HistoryRow, *, inserted: bool) -> None:
        self._rows[row.id] = (row, inserted)
        while len(self._rows) > MAX_PENDING_ROWS:
            oldest = min(self._rows)
            del self._rows[oldest]
            self._dropped += 1

    def _retry(self) -> None:
        """Readers give what memory holds another chance to be written, every RETRY_EVERY seconds."""
        self._reopen_if_due()
        if (self._states or self._rows) and time.monotonic() >= self._retry_at:
            self._flush()

    def _reopen_if_due(self) -> None:
        """An in-memory fallback (STATE_DIR unusable at start) tries, every RETRY_EVERY seconds, to open
        its file; once it can, everything it holds is written there, after the rows the file has."""
        path = self._reopen
        if path is None or time.monotonic() < self._reopen_at:
            return
        self._reopen_at = time.monotonic() + RETRY_EVERY
        if not path.parent.is_dir() or _probe(path.parent) is not None:
            return
        try:
            disk = _connect(path, self._log)
        except (sqlite3.Error, OSError):
            return
        memory, self._db = self._db, disk
        self.path, self.memory_only, self._fixed_warning, self._reopen = path, False, None, None
        next_id = max(self._sequence(), 0)
        for r in memory.execute("SELECT * FROM history ORDER BY id").fetchall():
            next_id += 1  # renumbered after the file's rows, so the history keeps its order
            self._moved[r["id"]] = next_id
            self._rows[next_id] = (replace(row_from_columns(r), id=next_id), False)
        for r in memory.execute("SELECT app, data FROM app_state").fetchall():
            self._states.setdefault(r["app"], state_from_json(r["app"], r["data"]))
            self._changed[r["app"]] = None  # the file has none of it
        memory.close()
        self._last_id = next_id
        moved = (len(self._rows), len(self._states))
        if self._flush():
            self._log.warning("STATE_DIR can be used again: the history and app state kept in memory since the "
                              "start are saved in it", path=str(path), history_rows=moved[0], app_states=moved[1])

    def _flush(self) -> bool:
        """Write what memory holds, in one transaction. True when nothing is left (the DB is writable)."""
        if not self._states and not self._rows:
            return True
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row_id in sorted(self._rows):
                    row, inserted = self._rows[row_id]
                    values = (row.app, row.trigger, row.revision, row.started_at, row.finished_at, row.duration,
                              row.result, row.summary, row.diff, row.error, json.dumps(row.warnings),
                              json.dumps(row.problems), int(row.drift), json.dumps(row.details, default=str),
                              row.reason)
                    if inserted:  # the outcome of a row the DB has
                        self._db.execute(f"UPDATE history SET {_OUTCOME_SET} WHERE id = ?",
                                         (*values[2:3], *values[4:], row.id))
                    else:
                        insert = """INSERT INTO history (app, trigger, revision, started_at, finished_at, duration,
                                    result, summary, diff, error, warnings, problems, drift, details, reason{})
                                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{})"""
                        try:
                            self._db.execute(insert.format(", id", ", ?"), (*values, row.id))
                        except sqlite3.IntegrityError:  # another process (a CLI run) took the id meanwhile
                            cursor = self._db.execute(insert.format("", ""), values)
                            final = int(cursor.lastrowid or 0)
                            for handed_out, kept_as in list(self._moved.items()):
                                if kept_as == row.id:
                                    self._moved[handed_out] = final
                            self._moved[row.id] = final
                            self._last_id = max(self._last_id, int(cursor.lastrowid or 0))
                for state in self._states.values():
                    changed = self._changed.get(state.app)
                    if changed is not None:  # only what this process changed: a CLI's suspend meanwhile stays
                        state = replace(self._read_state(state.app),
                                        **{name: getattr(state, name) for name in changed})
                    self._db.execute(
                        "INSERT INTO app_state (app, data) VALUES (?, ?) "
                        "ON CONFLICT(app) DO UPDATE SET data = excluded.data",
                        (state.app, state_to_json(state)),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL and I/O errors may have rolled it back already
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except Exception as exc:
            if not _write_failure(exc):
                raise
            self._failed(exc)
            return False
        if self._failing_since is not None:
            self._log.warning("STATE_DIR can be written again: app state and history kept in memory were saved",
                              path=str(self.path), states=len(self._states), history_rows=len(self._rows),
                              history_rows_dropped=self._dropped, seconds=round(time.time() - self._failing_since, 1))
        self._states.clear()
        self._changed.clear()
        self._rows.clear()
        self._failures.clear()
        self._failing_since = None
        self._dropped = 0
        self._prune()
        return True

    def _failed(self, exc: BaseException, *, reading: bool = False) -> None:
        """Note a refused write (or read): logged once per kind, clearly, with the OS's own reason."""
        self._retry_at = time.monotonic() + RETRY_EVERY
        message = str(exc) or type(exc).__name__
        reason = _probe(self.path.parent) if self.path else None
        kind = f"{message} ({reason})" if reason and reason not in message else message
        if self._failing_since is None:
            self._failing_since = time.time()
        if kind in self._failures:
            return
        self._failures[kind] = kind
        directory = str(self.path.parent) if self.path else None
        if reading:
            self._log.error("cannot read the history store", path=str(self.path), state_dir=directory, error=kind)
        else:
            self._log.error("cannot write to STATE_DIR: app state and history are kept in memory until it can be "
                            "written again (logged once per kind of error)", state_dir=directory,
                            path=str(self.path), error=kind)

    def _prune(self) -> None:
        """An in-memory store keeps the newest MAX_MEMORY_ROWS history rows."""
        if self.memory_only and self._last_id % 100 == 0:
            self._db.execute("DELETE FROM history WHERE id <= ?", (self._last_id - MAX_MEMORY_ROWS,))


def _connect(path: Path | None, log: Any) -> sqlite3.Connection:
    """A connection to the store's file (None: in memory), configured and migrated to the schema."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        if path is not None:
            mode = db.execute("PRAGMA journal_mode=TRUNCATE").fetchone()[0]
            if mode != "truncate":  # e.g. a WAL database another process still has open
                log.warning("cannot leave the store's journal mode", journal_mode=mode, path=str(path))
        db.execute("PRAGMA synchronous=FULL")  # a rollback journal needs FULL to survive power loss
        db.execute("PRAGMA mmap_size=0")  # no memory maps of files in STATE_DIR: no SIGBUS
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(_SCHEMA[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    except BaseException:
        db.close()
        raise
    return db


def _probe(directory: Path) -> str | None:
    """The operating system's reason STATE_DIR refuses writes (e.g. "No space left on device",
    "Read-only file system", "Operation not permitted"), or None when a small write succeeds."""
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def open_sqlite(state_dir: Path, *, memory_fallback: bool = False) -> SQLiteStore:
    """The SQLite store under STATE_DIR.

    `memory_fallback` (the service): when the file cannot be opened (STATE_DIR read-only, missing
    rights, a broken file), log why and keep history and state in memory rather than exit.
    """
    if not memory_fallback:
        return SQLiteStore.in_state_dir(state_dir)
    try:
        store = SQLiteStore.in_state_dir(state_dir)
        store.history(limit=1)  # a database that opens but cannot be read counts as unusable too
        return store
    except (sqlite3.Error, OSError) as exc:
        reason = _probe(state_dir) if state_dir.is_dir() else None
        error = f"{exc} ({reason})" if reason and reason not in str(exc) else str(exc)
        warning = (f"the history store in STATE_DIR {state_dir} cannot be opened ({error}): history and app state "
                   "are kept in memory until it can be opened")
        get_logger(component="store").error("cannot open the history store in STATE_DIR; keeping history and app "
                                            "state in memory until it can be opened", state_dir=str(state_dir),
                                            error=error)
        return SQLiteStore.in_memory(warning, reopen=state_dir / "history.sqlite3")
