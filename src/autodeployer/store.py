"""History and per-app state. SQLite under STATE_DIR is the embedded default.

Every sync attempt is written twice: a ``running`` row when it starts and the outcome when it ends,
so an attempt cut short by a crash is visible (marked ``interrupted`` at the next start). The
:class:`Store` protocol is what the reconciler and the web layer use; a PostgreSQL store for
multi-replica deployments implements the same methods.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .model import Result, SyncResult

MAX_DIFF_CHARS = 1_000_000


@dataclass
class AppState:
    app: str
    last_synced_revision: str | None = None  # last revision the target was verified equal to
    last_synced_tree: str | None = None
    last_result: str | None = None
    last_revision: str | None = None  # revision of the last attempt, whatever its result
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_drift_check_at: float | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive failed or refused attempts
    suspended: bool = False
    suspended_reason: str | None = None
    pinned_revision: str | None = None  # set by rollback: sync this instead of the branch head
    live_commit: dict[str, Any] = field(default_factory=dict)  # message/author of last_synced_revision
    memory: dict[str, Any] = field(default_factory=dict)


@dataclass
class HistoryRow:
    id: int
    app: str
    trigger: str
    revision: str | None
    started_at: float
    finished_at: float | None
    duration: float | None
    result: str
    summary: str
    diff: str
    error: str | None
    warnings: list[str]
    problems: list[str]
    drift: bool
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Store(Protocol):
    def begin(self, app: str, trigger: str, revision: str | None, started_at: float) -> int: ...
    def finish(self, attempt_id: int, result: SyncResult) -> None: ...
    def history(self, app: str | None = None, limit: int = 50) -> list[HistoryRow]: ...
    def get_state(self, app: str) -> AppState: ...
    def put_state(self, state: AppState) -> None: ...
    def mark_interrupted(self) -> int: ...
    def close(self) -> None: ...


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
]


class SQLiteStore:
    """Thread-safe: the web layer reads while the scheduler writes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> "SQLiteStore":
        return cls(state_dir / "history.sqlite3")

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(_SCHEMA[version:], start=version + 1):
                self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def begin(self, app: str, trigger: str, revision: str | None, started_at: float) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO history (app, trigger, revision, started_at, result) VALUES (?, ?, ?, ?, ?)",
                (app, trigger, revision, started_at, Result.RUNNING.value),
            )
            return int(cursor.lastrowid or 0)

    def finish(self, attempt_id: int, result: SyncResult) -> None:
        diff = result.diff
        if len(diff) > MAX_DIFF_CHARS:
            diff = diff[:MAX_DIFF_CHARS] + f"\n... diff truncated ({len(result.diff)} characters in all)"
        with self._lock:
            self._db.execute(
                """UPDATE history SET revision = ?, finished_at = ?, duration = ?, result = ?, summary = ?,
                   diff = ?, error = ?, warnings = ?, problems = ?, drift = ?, details = ? WHERE id = ?""",
                (
                    result.revision,
                    result.started_at + result.duration,
                    result.duration,
                    result.result.value,
                    result.summary,
                    diff,
                    result.error,
                    json.dumps(result.warnings),
                    json.dumps([str(p) for p in result.problems]),
                    int(result.drift),
                    json.dumps(result.details, default=str),
                    attempt_id,
                ),
            )

    def history(self, app: str | None = None, limit: int = 50) -> list[HistoryRow]:
        query = "SELECT * FROM history"
        args: tuple[Any, ...] = ()
        if app is not None:
            query += " WHERE app = ?"
            args = (app,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, max(1, limit))).fetchall()
        return [_row(r) for r in rows]

    def get_state(self, app: str) -> AppState:
        with self._lock:
            row = self._db.execute("SELECT data FROM app_state WHERE app = ?", (app,)).fetchone()
        if row is None:
            return AppState(app=app)
        data = json.loads(row["data"])
        known = {k: v for k, v in data.items() if k in AppState.__dataclass_fields__}
        return AppState(**known)

    def put_state(self, state: AppState) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO app_state (app, data) VALUES (?, ?) ON CONFLICT(app) DO UPDATE SET data = excluded.data",
                (state.app, json.dumps(asdict(state))),
            )

    def mark_interrupted(self) -> int:
        """Attempts still 'running' belong to a process that died; say so."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE history SET result = ?, error = ?, finished_at = ? WHERE result = ?",
                (
                    Result.INTERRUPTED.value,
                    "the process stopped during this attempt",
                    time.time(),
                    Result.RUNNING.value,
                ),
            )
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(r: sqlite3.Row) -> HistoryRow:
    return HistoryRow(
        id=r["id"],
        app=r["app"],
        trigger=r["trigger"],
        revision=r["revision"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        duration=r["duration"],
        result=r["result"],
        summary=r["summary"],
        diff=r["diff"],
        error=r["error"],
        warnings=json.loads(r["warnings"]),
        problems=json.loads(r["problems"]),
        drift=bool(r["drift"]),
        details=json.loads(r["details"]),
    )


def open_store(
    state_dir: Path, url: str | None = None, *, password: str | None = None, replica_id: str | None = None
) -> Store:
    """SQLite under STATE_DIR, or PostgreSQL when `url` (STORE_URL) is set."""
    if url:
        from .store_pg import PostgresStore

        return PostgresStore(url, password=password, replica_id=replica_id)
    return SQLiteStore.in_state_dir(state_dir)
