"""PostgreSQL store: history and app state shared by every replica, and the coordination tables.

Implements the :class:`~autodeployer.store.base.Store` protocol. What it adds:

* ``replica`` and ``attempt`` on every history row, so each attempt says which replica made it;
* ``begin()`` writes an attempt only under the app's :class:`~autodeployer.store.base.Lease`, which the
  coordinator grants (``grant``/``revoke``), and proves in the transaction that records the attempt that
  the lease's holder still holds the app's ownership lock and that no other replica has an attempt of the
  app in flight — so nothing is applied twice across replicas. A process without a coordinator (a one-off
  CLI command) locks the app for its attempt instead, and is refused while a replica owns it;
* the schema of the coordination tables (``apps``, ``replicas``), the advisory-lock namespaces, and the
  read-only views ``owners()`` / ``replicas()`` / ``heartbeats()`` that ``autodeployer status`` uses
  without running a replica. The coordinator itself is :mod:`autodeployer.coordination.postgres`.

The connection is synchronous (the Store protocol is) and guarded by a lock. When PostgreSQL cannot be
reached, reads of app state fall back to the last value seen (status keeps answering), writes raise
:class:`~autodeployer.errors.StoreUnavailable`, ``begin()`` raises ``OwnershipLost`` (ownership cannot
be proven), and reconnection is retried with a short back-off. The password is passed to the driver
as a keyword: it is never part of a URL, a log line or a process argument.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.rows

from .. import __version__
from ..errors import OwnershipLost, StoreUnavailable
from ..logs import get_logger
from ..model import Result, SyncResult
from .base import (
    AppState,
    HistoryRow,
    Lease,
    StateChange,
    annotated,
    default_replica_id,
    history_query,
    outcome_columns,
    row_from_columns,
    state_from_json,
    state_to_json,
)
from .locks import AppLock

T = TypeVar("T")

# Advisory-lock namespaces (first key of the two-int form; the second is the app or replica number).
NS_MIGRATE = 7301000
NS_APP = 7301001  # ownership of one app, held on the owner's coordination connection
NS_REPLICA = 7301002  # presence of one replica, held on the same connection
NS_BEGIN = 7301003  # transaction lock that serialises begin() for one app across replicas

STALE_ATTEMPT = 60.0  # an absent replica's running attempt blocks others this long (it may be in flight)
ABANDONED_ATTEMPT = 3600.0  # even a live replica's 'running' attempt stops blocking after this long
RETRY_WHILE_BUSY = 2.0  # seconds before retrying when another replica's attempt is still running

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE history (
        id BIGSERIAL PRIMARY KEY,
        app TEXT NOT NULL,
        trigger TEXT NOT NULL,
        revision TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        replica TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        duration DOUBLE PRECISION,
        result TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '',
        diff TEXT NOT NULL DEFAULT '',
        error TEXT,
        warnings TEXT NOT NULL DEFAULT '[]',
        problems TEXT NOT NULL DEFAULT '[]',
        drift BOOLEAN NOT NULL DEFAULT false,
        details TEXT NOT NULL DEFAULT '{}',
        begun_ts TIMESTAMPTZ NOT NULL DEFAULT now(),
        finished_ts TIMESTAMPTZ
    );
    CREATE INDEX history_app ON history (app, id);
    CREATE UNIQUE INDEX history_attempt ON history (app, (coalesce(revision, '')), attempt);
    CREATE INDEX history_running ON history (app) WHERE result = 'running';
    CREATE TABLE app_state (
        app TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        updated_by TEXT,
        updated_ts TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        key SERIAL UNIQUE
    );
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        num SERIAL UNIQUE,
        lock_pid INTEGER,
        host TEXT,
        version TEXT,
        heartbeat_interval DOUBLE PRECISION NOT NULL DEFAULT 2,
        started_ts TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_ts TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
    # version 2: why an attempt did not end in sync (model.Reason)
    "ALTER TABLE history ADD COLUMN reason TEXT",
    # version 3: the newest preview of each open pull request (previews.py), seen by every replica
    """
    CREATE TABLE previews (
        app TEXT NOT NULL,
        number INTEGER NOT NULL,
        data TEXT NOT NULL,
        updated_by TEXT,
        updated_ts TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (app, number)
    )
    """,
]

_THIS_DB = "(SELECT oid FROM pg_database WHERE datname = current_database())"

#: (app key, backend pid) of every held ownership lock in this database.
SQL_APP_LOCKS = f"""
    SELECT l.objid::bigint, l.pid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.classid = {NS_APP} AND l.objsubid = 2 AND l.granted
      AND l.database = {_THIS_DB}"""

#: Replicas seen in the last hour, with their presence (lock held) and heartbeat age on the server clock.
SQL_REPLICAS = f"""
    SELECT r.id, r.num, r.lock_pid, r.host, r.version, r.heartbeat_interval,
           extract(epoch FROM r.started_ts)::float8, extract(epoch FROM r.heartbeat_ts)::float8,
           extract(epoch FROM now() - r.heartbeat_ts)::float8,
           EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = {NS_REPLICA}
                   AND l.objid::bigint = r.num AND l.objsubid = 2 AND l.granted AND l.pid = r.lock_pid
                   AND l.database = {_THIS_DB})
    FROM replicas r WHERE r.heartbeat_ts > now() - interval '1 hour' ORDER BY r.id"""

SQL_OWNERS = f"""
    SELECT a.name, coalesce(r.id, 'pid:' || l.pid) FROM pg_locks l
    JOIN apps a ON a.key = l.objid::bigint
    LEFT JOIN replicas r ON r.lock_pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = {NS_APP} AND l.objsubid = 2 AND l.granted
      AND l.database = {_THIS_DB}"""


def takeover_bound(heartbeat: float) -> float:
    """Seconds within which a dead replica's apps are taken over: max(5 s, 2 x heartbeat)."""
    return max(5.0, 2.0 * heartbeat)


def replica_rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """SQL_REPLICAS rows as dicts; `live` means present (lock held) with a fresh heartbeat."""
    out = []
    for rid, num, pid, host, version, interval, started, beat, age, present in rows:
        out.append({
            "id": rid, "num": num, "pid": pid, "host": host, "version": version,
            "heartbeat_interval": interval, "started_at": started, "heartbeat_at": beat,
            "heartbeat_age": round(max(0.0, age), 3),
            "live": bool(present) and age < takeover_bound(interval or 2.0),
        })
    return out


def safe_url(url: str) -> str:
    """The URL without a password, for logs and status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = (f"{parts.username}@" if parts.username else "") + (parts.hostname or "")
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe(exc: BaseException) -> str:
    """One line about a driver error (libpq messages name host and port, never the password)."""
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters."""
    return value.replace("\x00", "\\x00") if value else value


class PostgresStore:
    """History, app state and coordination tables in one PostgreSQL database (one per fleet)."""

    def __init__(self, url: str, *, password: str | None = None, replica_id: str | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.url = safe_url(url)
        self._password = password
        self.replica_id = replica_id or default_replica_id()
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: Any = None
        self._migrated = False
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None
        self._cache: dict[str, str] = {}  # app -> last state JSON seen, served while PostgreSQL is away
        self._keys: dict[str, int] = {}
        self._standalone: dict[int, int] = {}  # attempt id -> app key locked for that attempt
        self._open: set[int] = set()  # attempts begun and not yet finished by this process
        # Ownership, as the coordinator hands it over (see require_leases, grant, revoke).
        self._coordinated = False
        self._leases: dict[str, Lease] = {}
        self._seen: dict[str, tuple[int, float]] = {}  # app -> (lease generation, server time checked up to)
        self._offline = False  # the coordinator lost PostgreSQL: fail fast instead of connecting

    # ------------------------------------------------------------------ connections
    def connect_kwargs(self, purpose: str) -> dict[str, Any]:
        """Arguments for psycopg.connect / AsyncConnection.connect (password as a keyword)."""
        kwargs: dict[str, Any] = {
            "conninfo": self.url,
            "connect_timeout": max(1, int(self.connect_timeout)),
            "application_name": f"autodeployer {purpose} {self.replica_id}"[:63],
            "client_encoding": "utf8",  # text, never bytes, even from a SQL_ASCII database
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
            "autocommit": True,
        }
        if self._password:
            kwargs["password"] = self._password
        return kwargs

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._conn = None
        if time.monotonic() < self._retry_at or self._offline:
            raise StoreUnavailable(self.unavailable_reason())
        try:
            conn = psycopg.connect(**self.connect_kwargs("store"))
            conn.execute("SELECT set_config('statement_timeout', '15000', false)")
            if not self._migrated:
                migrate(conn)
                self._migrated = True
        except psycopg.Error as exc:
            self._failed(exc)
            raise StoreUnavailable(self.unavailable_reason()) from None
        self._failures, self._retry_at, self.last_error = 0, 0.0, None
        self._conn = conn
        return conn

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + min(5.0, 0.25 * 2 ** (self._failures - 1))
        self.last_error = describe(exc)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def go_offline(self) -> None:
        """The coordinator lost PostgreSQL: fail fast rather than block the event loop on connects, until
        reconnect_now()."""
        self._offline = True

    def reconnect_now(self) -> None:
        """PostgreSQL is back (the coordinator reconnected): connect again at once, without the back-off."""
        self._offline = False
        self._retry_at = 0.0

    def unavailable_reason(self) -> str:
        return f"PostgreSQL at {self.url} is unreachable: {self.last_error or 'not connected yet'}"

    @property
    def warning(self) -> str | None:
        """None: an unreachable PostgreSQL is reported by the coordinator (its `reason`), not as a warning."""
        return None

    # ------------------------------------------------------------------ leases
    def require_leases(self) -> None:
        """From now on this process applies an app only under a lease its coordinator granted (a replica),
        never by locking the app for one attempt (what a one-off CLI command does)."""
        self._coordinated = True

    def grant(self, lease: Lease) -> None:
        """The coordinator acquired the app (or confirmed it still holds it, with a later valid_until)."""
        self._leases[lease.app] = lease

    def revoke(self, app: str) -> None:
        """The app was released or lost: begin() refuses it from now on."""
        self._leases.pop(app, None)

    def revoke_all(self) -> None:
        self._leases.clear()

    def _run(self, work: Callable[[Any], T]) -> T:
        """Run `work(conn)`; a broken connection is reopened and the work retried once."""
        with self._lock:
            for attempt in (0, 1):
                conn = self._connection()
                try:
                    return work(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    self._failed(exc)
                    if attempt == 1:
                        raise StoreUnavailable(self.unavailable_reason()) from None
                    self._retry_at = 0.0
            raise AssertionError("unreachable")

    def ping(self) -> bool:
        try:
            self._run(lambda conn: conn.execute("SELECT 1").fetchone())
            return True
        except StoreUnavailable:
            return False

    # ------------------------------------------------------------------ app keys
    def _app_key(self, conn: Any, app: str) -> int:
        key = self._keys.get(app)
        if key is None:
            conn.execute("INSERT INTO apps (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (app,))
            key = int(conn.execute("SELECT key FROM apps WHERE name = %s", (app,)).fetchone()[0])
            self._keys[app] = key
        return key

    def app_keys(self, apps: list[str]) -> dict[str, int]:
        """Register apps (one advisory-lock key each) and return their keys."""
        def work(conn: Any) -> dict[str, int]:
            conn.execute("INSERT INTO apps (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING", (apps,))
            rows = conn.execute("SELECT name, key FROM apps WHERE name = ANY(%s)", (apps,)).fetchall()
            return {name: int(key) for name, key in rows}

        keys = self._run(work)
        self._keys.update(keys)
        return keys

    # ------------------------------------------------------------------ Store protocol
    def begin(self, app: str, trigger: str, revision: str | None, started_at: float) -> int:
        """Record an attempt, proving in the same transaction that this replica may apply the app."""
        def work(conn: Any) -> int:
            key = self._app_key(conn, app)
            standalone_lock = False
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (NS_BEGIN, key))
                    lease = self._lease(app)
                    if lease is not None:
                        self._check_lease(conn, lease, key)
                    else:
                        standalone_lock = self._lock_for_attempt(conn, app, key)
                    self._check_others(conn, app, lease)
                    attempt = conn.execute(
                        "SELECT coalesce(max(attempt), 0) + 1 FROM history"
                        " WHERE app = %s AND coalesce(revision, '') = %s",
                        (app, revision or ""),
                    ).fetchone()[0]
                    row = conn.execute(
                        """INSERT INTO history (app, trigger, revision, attempt, replica, started_at, result)
                           VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                        (app, trigger, revision, attempt, self.replica_id, started_at, Result.RUNNING.value),
                    ).fetchone()
            except BaseException:
                if standalone_lock and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NS_APP, key))
                raise
            attempt_id = int(row[0])
            if standalone_lock:
                self._standalone[attempt_id] = key
            self._open.add(attempt_id)
            return attempt_id

        try:
            return self._run(work)
        except StoreUnavailable as exc:
            raise OwnershipLost(f"{app}: cannot prove ownership, so not applied ({exc})") from None

    def _lease(self, app: str) -> Lease | None:
        """The lease to write under; None for a process without a coordinator. Raises OwnershipLost when a
        coordinated replica holds no valid lease for `app`."""
        if not self._coordinated:
            return None
        lease = self._leases.get(app)
        if lease is None:
            raise OwnershipLost(f"{app}: this replica no longer owns the app (another replica does, "
                                "or the coordination connection was lost); not applied")
        if lease.expired():
            # The coordinator renews leases every tick; one it has not renewed in time is not proof enough.
            # Retried soon rather than dropped: a late tick renews it, a lost app revokes it meanwhile.
            raise OwnershipLost(f"{app}: this replica's lease has expired (its coordinator has not confirmed "
                                "ownership in time); not applied", retry_after=RETRY_WHILE_BUSY)
        return lease

    def _check_lease(self, conn: Any, lease: Lease, key: int) -> None:
        """Raise OwnershipLost unless the lease's holder still holds the app's ownership lock."""
        held = conn.execute(
            f"""SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = {NS_APP}
                AND objid::bigint = %s AND objsubid = 2 AND granted AND pid = %s AND database = {_THIS_DB})""",
            (key, lease.holder),
        ).fetchone()[0]
        if not held:
            raise OwnershipLost(f"{lease.app}: this replica no longer owns the app (another replica does, "
                                "or the coordination connection was lost); not applied")

    def _lock_for_attempt(self, conn: Any, app: str, key: int) -> bool:
        """A process without a coordinator (a one-off CLI command) locks the app for this attempt only,
        and is refused while a replica owns it. True: the lock was taken (finish() releases it)."""
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (NS_APP, key)).fetchone()[0]
        if not got:
            owner = dict(conn.execute(SQL_OWNERS).fetchall()).get(app, "another process")
            raise OwnershipLost(f"{app}: replica {owner} owns this app, so it was not applied from here; "
                                "use the API or --server to ask the owner")
        return True

    def _since(self, lease: Lease) -> float:
        """Server time up to which other replicas' ended attempts have been waited for under `lease`."""
        generation, since = self._seen.get(lease.app, (-1, 0.0))
        return since if generation == lease.generation else lease.acquired_at

    def _check_others(self, conn: Any, app: str, lease: Lease | None) -> None:
        """No other replica's attempt of `app` may be in flight, or have ended since this one took over."""
        since = self._since(lease) if lease is not None else None
        rows = conn.execute(
            f"""SELECT h.id, h.replica, h.revision, h.result, extract(epoch FROM now() - h.begun_ts)::float8,
                       EXISTS (SELECT 1 FROM replicas r JOIN pg_locks l ON l.objid::bigint = r.num
                               AND l.pid = r.lock_pid WHERE r.id = h.replica AND l.locktype = 'advisory'
                               AND l.classid = {NS_REPLICA} AND l.objsubid = 2 AND l.granted
                               AND l.database = {_THIS_DB})
                FROM history h
                WHERE h.app = %s AND h.replica IS DISTINCT FROM %s
                  AND (h.result = 'running' OR (%s::float8 IS NOT NULL AND h.finished_ts >= to_timestamp(%s::float8)))
                ORDER BY h.id""",
            (app, self.replica_id, since, since),
        ).fetchall()
        for hid, replica, revision, result, age, present in rows:
            if result == Result.RUNNING.value:
                if (present and age < ABANDONED_ATTEMPT) or age < STALE_ATTEMPT:
                    raise OwnershipLost(
                        f"{app}: replica {replica} is still applying {(revision or '')[:12]} "
                        f"(started {age:.0f} s ago); not applied", retry_after=RETRY_WHILE_BUSY)
                conn.execute(
                    """UPDATE history SET result = %s, reason = 'interrupted', error = %s, finished_at = %s,
                           finished_ts = now()
                       WHERE id = %s AND result = 'running'""",
                    (Result.INTERRUPTED.value, f"replica {replica} stopped during this attempt", time.time(), hid),
                )
        if lease is not None and any(r[3] != Result.RUNNING.value for r in rows):
            # An attempt that was in flight when this replica took over has ended: plan again first.
            self._seen[app] = (lease.generation, self._server_now(conn))
            raise OwnershipLost(f"{app}: the previous owner finished an attempt after this replica took over; "
                                "planning again", retry_after=0.2)

    @staticmethod
    def _server_now(conn: Any) -> float:
        return float(conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0])

    def finish(self, attempt_id: int, result: SyncResult) -> None:
        outcome = outcome_columns(result)
        for column in ("summary", "diff", "error"):
            outcome[column] = _text(outcome[column])
        assignments = ", ".join(f"{column} = %s" for column in outcome)

        def work(conn: Any) -> None:
            conn.execute(f"UPDATE history SET {assignments}, finished_ts = now() WHERE id = %s",
                         (*outcome.values(), attempt_id))
            key = self._standalone.pop(attempt_id, None)
            if key is not None:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NS_APP, key))

        try:
            self._run(work)
        finally:
            self._open.discard(attempt_id)  # unrecorded outcomes are closed by close_orphans()

    def annotate(self, attempt_id: int, key: str, value: Any) -> None:
        """Merge one key into a history row's details; the row is locked for the read and the write, so
        another replica's annotation of another key is kept. Needs no lease: it changes no outcome."""
        def work(conn: Any) -> None:
            with conn.transaction():
                found = conn.execute("SELECT details FROM history WHERE id = %s FOR UPDATE", (attempt_id,)).fetchone()
                if found is not None:
                    conn.execute("UPDATE history SET details = %s WHERE id = %s",
                                 (annotated(found[0], key, value), attempt_id))

        self._run(work)

    def history(self, app: str | None = None, limit: int = 50) -> list[HistoryRow]:
        query, args = history_query(app, limit, "%s")

        def work(conn: Any) -> list[HistoryRow]:
            cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
            return [_row(r) for r in cursor.execute(query, args).fetchall()]

        return self._run(work)

    def get_state(self, app: str) -> AppState:
        """The app's state; the last value seen when PostgreSQL is unreachable (status keeps working)."""
        try:
            row = self._run(lambda conn: conn.execute("SELECT data FROM app_state WHERE app = %s", (app,)).fetchone())
        except StoreUnavailable:
            return state_from_json(app, self._cache.get(app))
        if row is None:
            return AppState(app=app)
        self._cache[app] = row[0]
        return state_from_json(app, row[0])

    def states(self, apps: list[str]) -> dict[str, AppState]:
        """Many apps' states in one query (status pages of hundreds of apps)."""
        try:
            rows = self._run(lambda conn: conn.execute(
                "SELECT app, data FROM app_state WHERE app = ANY(%s)", (apps,)).fetchall())
        except StoreUnavailable:
            return {a: state_from_json(a, self._cache.get(a)) for a in apps}
        found = dict(rows)
        self._cache.update(found)
        return {a: state_from_json(a, found.get(a)) for a in apps}

    def put_state(self, state: AppState) -> None:
        data = state_to_json(state)
        self._run(lambda conn: conn.execute(
            """INSERT INTO app_state (app, data, updated_by, updated_ts) VALUES (%s, %s, %s, now())
               ON CONFLICT (app) DO UPDATE SET data = excluded.data, updated_by = excluded.updated_by,
               updated_ts = excluded.updated_ts""",
            (state.app, data, self.replica_id),
        ))
        self._cache[state.app] = data

    def update_state(self, app: str, change: StateChange) -> AppState:
        """Change only the fields `change` returns, reading the row FOR UPDATE in the same transaction as
        the write: a suspend or rollback written meanwhile by another replica, a CLI run or the API is
        kept, never overwritten by a sync's stale copy. Raises StoreUnavailable like put_state()."""
        def work(conn: Any) -> tuple[AppState, str]:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO app_state (app, data, updated_by) VALUES (%s, %s, %s) ON CONFLICT (app) DO NOTHING",
                    (app, state_to_json(AppState(app=app)), self.replica_id),
                )
                row = conn.execute("SELECT data FROM app_state WHERE app = %s FOR UPDATE", (app,)).fetchone()
                current = state_from_json(app, row[0])
                new = replace(current, **change(state_from_json(app, row[0])))
                data = state_to_json(new)
                conn.execute("UPDATE app_state SET data = %s, updated_by = %s, updated_ts = now() WHERE app = %s",
                             (data, self.replica_id, app))
            return new, data

        new, data = self._run(work)
        self._cache[app] = data
        return new

    # ------------------------------------------------------------------ previews
    def save_preview(self, app: str, number: int, data: Mapping[str, Any]) -> None:
        """Raises StoreUnavailable (the preview service logs it and keeps its own copy)."""
        self._run(lambda conn: conn.execute(
            """INSERT INTO previews (app, number, data, updated_by, updated_ts) VALUES (%s, %s, %s, %s, now())
               ON CONFLICT (app, number) DO UPDATE SET data = excluded.data, updated_by = excluded.updated_by,
               updated_ts = excluded.updated_ts""",
            (app, number, json.dumps(data), self.replica_id),
        ))

    def delete_preview(self, app: str, number: int) -> bool:
        cursor = self._run(lambda conn: conn.execute("DELETE FROM previews WHERE app = %s AND number = %s",
                                                     (app, number)))
        return bool(cursor.rowcount)

    def previews(self, app: str) -> list[dict[str, Any]]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT data FROM previews WHERE app = %s ORDER BY number", (app,)).fetchall())
        return [json.loads(row[0]) for row in rows]

    @staticmethod
    def app_lock(app: str) -> AppLock:
        """No file lock: begin() proves, in PostgreSQL, that this process may apply the app (its owner
        replica holds the app's advisory lock; a CLI run takes it for its attempt or is refused)."""
        return AppLock(None)

    def mark_interrupted(self) -> int:
        """This replica's attempts still 'running' (a previous run with the same REPLICA_ID died)."""
        try:
            return int(self._run(lambda conn: conn.execute(
                """UPDATE history SET result = %s, reason = 'interrupted', error = %s, finished_at = %s,
                           finished_ts = now()
                   WHERE result = 'running' AND replica = %s""",
                (Result.INTERRUPTED.value, "the process stopped during this attempt", time.time(), self.replica_id),
            ).rowcount))
        except StoreUnavailable:
            return 0  # checked again by begin() of whichever replica next applies the app

    def close_orphans(self) -> int:
        """This replica's 'running' attempts whose outcome could not be recorded (PostgreSQL was away):
        mark them interrupted, so they stop blocking the app for whichever replica owns it next."""
        open_ids = sorted(self._open)
        return int(self._run(lambda conn: conn.execute(
            """UPDATE history SET result = %s, reason = 'interrupted', error = %s, finished_at = %s,
                           finished_ts = now()
               WHERE result = 'running' AND replica = %s AND NOT (id = ANY(%s))""",
            (Result.INTERRUPTED.value, "the outcome of this attempt could not be recorded (PostgreSQL was unreachable)",
             time.time(), self.replica_id, open_ids),
        ).rowcount))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ coordination views
    def owners(self) -> dict[str, str]:
        """app -> replica currently holding its ownership lock (read-only; for `autodeployer status`)."""
        return dict(self._run(lambda conn: conn.execute(SQL_OWNERS).fetchall()))

    def replicas(self) -> list[dict[str, Any]]:
        """Replicas seen in the last hour with their last heartbeat and whether they are live."""
        rows = self._run(lambda conn: conn.execute(SQL_REPLICAS).fetchall())
        owners = self.owners()
        out = replica_rows(rows)
        for replica in out:
            replica["owned_apps"] = sum(1 for owner in owners.values() if owner == replica["id"])
        return out

    def heartbeats(self) -> dict[str, float]:
        """replica id -> its last heartbeat (epoch seconds, server clock), for replicas seen in the last hour."""
        rows = self._run(lambda conn: conn.execute(SQL_REPLICAS).fetchall())
        return {r["id"]: r["heartbeat_at"] for r in replica_rows(rows)}

    def notify(self, channel: str, payload: str) -> None:
        """NOTIFY `channel` on this store's connection; raises StoreUnavailable. (What the payload means
        is the coordinator's: autodeployer.coordination.postgres.)"""
        self._run(lambda conn: conn.execute("SELECT pg_notify(%s, %s)", (channel, payload)))


def migrate(conn: Any) -> int:
    """Apply pending schema migrations (serialised across replicas); returns the schema version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (NS_MIGRATE,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        if current > len(MIGRATIONS):  # a newer replica migrated first (rolling upgrade): migrations are additive
            get_logger().warning("the store's schema is newer than this autodeployer's; continuing",
                                 schema=current, supported=len(MIGRATIONS), version=__version__)
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            conn.execute(script)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
    return max(int(current), len(MIGRATIONS))


def _row(r: dict[str, Any]) -> HistoryRow:
    details = json.loads(r["details"])
    if r.get("replica"):
        details.setdefault("replica", r["replica"])
    details.setdefault("attempt", r["attempt"])
    return row_from_columns(r, details)
