"""What every store keeps and answers: app state, history rows, the Store protocol, and the encoding of
rows that the SQLite and the PostgreSQL store share.

Every sync attempt is written twice: a ``running`` row when it starts and the outcome when it ends,
so an attempt cut short by a crash is visible (marked ``interrupted`` at the next start).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..model import Reason, Result, SyncResult
from .locks import AppLock

MAX_DIFF_CHARS = 1_000_000


@dataclass
class AppState:
    app: str
    last_synced_revision: str | None = None  # last revision the target was verified equal to
    last_synced_tree: str | None = None
    last_result: Result | None = None
    last_reason: Reason | None = None  # why the last attempt did not end in sync (None when it did)
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
    # Health of the last deployed revision (rollout/health.py): {"revision", "state": checking | healthy |
    # degraded, "since", "checked_at", "evidence": [...]}; empty when the app's target has no health check.
    health: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Stored as JSON text: the enums come back as their values (an unknown one, from a newer version, as None).
        self.last_result = Result.parse(self.last_result)
        self.last_reason = Reason.parse(self.last_reason)


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
    reason: str | None = None  # a Reason's value: why the attempt did not end in sync

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Lease:
    """The right to apply one app, granted by a coordinator and handed to the store that records the
    attempts (``PostgresStore.grant``): the store writes an attempt only under the app's lease, and proves
    in the same transaction that `holder` still holds the app's lock; it never decides ownership itself.

    A new acquisition is a new lease (a higher `generation`), so what the store learnt under an earlier
    one (which attempts of other replicas it has already waited for) never carries over.
    """

    app: str
    replica: str
    holder: int  # the database session (backend pid) that holds the app's ownership lock
    generation: int  # counts this replica's acquisitions of apps
    acquired_at: float  # server clock (epoch seconds) of the acquisition
    valid_until: float  # time.monotonic() until which the coordinator vouches for it (renewed every tick)

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.valid_until


#: What an update of an app's state changes: given the state as it is now (read in the same
#: transaction as the write), the fields this step owns and their new values. It must be quick and pure:
#: a store may call it again when it retries the transaction.
StateChange = Callable[[AppState], Mapping[str, Any]]


class Store(Protocol):
    """History and app state. Every store answers every method: what only a shared store knows (owners,
    replicas) is empty from a store of one process, so callers never ask which kind they hold."""

    def begin(self, app: str, trigger: str, revision: str | None, started_at: float) -> int: ...
    def finish(self, attempt_id: int, result: SyncResult) -> None: ...
    def annotate(self, attempt_id: int, key: str, value: Any) -> None: ...  # one key into a row's details
    def history(self, app: str | None = None, limit: int = 50) -> list[HistoryRow]: ...
    def get_state(self, app: str) -> AppState: ...
    def states(self, apps: list[str]) -> dict[str, AppState]: ...  # many apps at once (status of hundreds)
    def put_state(self, state: AppState) -> None: ...
    def update_state(self, app: str, change: StateChange) -> AppState: ...
    def app_lock(self, app: str) -> AppLock: ...
    def mark_interrupted(self) -> int: ...
    def ping(self) -> bool: ...  # the store can be reached now
    def owners(self) -> dict[str, str]: ...  # app -> replica holding it; empty with a single replica
    def replicas(self) -> list[dict[str, Any]]: ...  # replicas sharing the store; empty with a single one
    def heartbeats(self) -> dict[str, float]: ...  # replica id -> its last heartbeat (epoch seconds)
    # Pull-request previews (previews.py), as JSON objects: they outlive a restart and are shared by replicas.
    def save_preview(self, app: str, number: int, data: Mapping[str, Any]) -> None: ...
    def delete_preview(self, app: str, number: int) -> bool: ...  # True when there was one
    def previews(self, app: str) -> list[dict[str, Any]]: ...  # by number
    @property
    def warning(self) -> str | None: ...  # why history or state is not being saved durably right now
    def close(self) -> None: ...


def default_replica_id() -> str:
    """HOSTNAME-PID: unique per process on a machine, readable in status and history."""
    return f"{socket.gethostname()}-{os.getpid()}"


# ---------------------------------------------------------------------- the encoding both stores share
def truncate_diff(diff: str) -> str:
    """A diff as history keeps it: at most MAX_DIFF_CHARS, saying how long it was."""
    if len(diff) <= MAX_DIFF_CHARS:
        return diff
    return diff[:MAX_DIFF_CHARS] + f"\n... diff truncated ({len(diff)} characters in all)"


def outcome_columns(result: SyncResult) -> dict[str, Any]:
    """The columns a finished attempt sets, as both stores keep them (lists and objects as JSON text)."""
    return {
        "revision": result.revision,
        "finished_at": result.started_at + result.duration,
        "duration": result.duration,
        "result": result.result.value,
        "summary": result.summary,
        "diff": truncate_diff(result.diff),
        "error": result.error,
        "warnings": json.dumps(result.warnings),
        "problems": json.dumps([str(p) for p in result.problems]),
        "drift": bool(result.drift),
        "details": json.dumps(result.details, default=str),
        "reason": result.reason.value if result.reason else None,
    }


def history_query(app: str | None, limit: int, mark: str) -> tuple[str, tuple[Any, ...]]:
    """The newest history rows (of one app, or of all), with `mark` as the driver's parameter marker."""
    if app is None:
        return f"SELECT * FROM history ORDER BY id DESC LIMIT {mark}", (max(1, limit),)
    return f"SELECT * FROM history WHERE app = {mark} ORDER BY id DESC LIMIT {mark}", (app, max(1, limit))


def row_from_columns(r: Any, details: dict[str, Any] | None = None) -> HistoryRow:
    """A history row from its columns (a sqlite3.Row or a dict; JSON columns as text)."""
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
        details=json.loads(r["details"]) if details is None else details,
        reason=r["reason"] if "reason" in r.keys() else None,  # noqa: SIM118 (a sqlite3.Row has no `in` by key)
    )


def annotated(details_json: str | None, key: str, value: Any) -> str:
    """A row's details JSON with `key` set to `value` (what a finished attempt learns later, such as
    the health verdict), every other key kept: no schema change, one merge both stores share."""
    details = json.loads(details_json) if details_json else {}
    if not isinstance(details, dict):
        details = {}
    details[key] = value
    return json.dumps(details, default=str)


def state_to_json(state: AppState) -> str:
    return json.dumps(asdict(state))


def state_from_json(app: str, text: str | None) -> AppState:
    """An app's state from its JSON; fields a newer version added are ignored, missing ones default."""
    if not text:
        return AppState(app=app)
    data = json.loads(text)
    return AppState(**{k: v for k, v in data.items() if k in AppState.__dataclass_fields__})
