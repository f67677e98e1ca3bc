"""Which replica reconciles which app, and how triggers reach it.

A :class:`Coordinator` tells the scheduler which apps this replica owns (it starts and stops their
workers through the :class:`Workers` calls) and carries triggers for apps owned elsewhere.

* :class:`LocalCoordinator` — one replica (the default, with the SQLite store): it owns every app and
  every trigger is local. Nothing changes compared with a scheduler that has no coordinator.
* :class:`PostgresCoordinator` — several replicas sharing one PostgreSQL database (``STORE_URL``):

  - **ownership** is a session advisory lock per app, ``(NS_APP, apps.key)``, held on this replica's
    dedicated *coordination connection*. A replica that dies or loses that connection loses every
    lock at once (PostgreSQL releases them when the session ends; ``idle_session_timeout`` on that
    connection ends the session of a replica that stopped talking, e.g. a machine that vanished);
  - **presence**: each replica holds ``(NS_REPLICA, replicas.num)`` on the same connection and writes
    ``replicas.heartbeat_ts`` every ``HEARTBEAT_INTERVAL``. A replica is *live* when its presence lock
    is held and its heartbeat is younger than ``max(5 s, 2 x heartbeat)``;
  - **balancing**, one heartbeat after (re)connecting (so replicas starting together split the apps
    without churn), then every tick (``min(0.5 s, heartbeat / 4)``) and at once when told to: with ``N`` live
    replicas and ``M`` apps, ``fair = ceil(M / N)``. A replica above ``fair`` releases its idle apps
    with the lowest rendezvous score (``blake2b(replica/app)``) after stopping their workers; a replica
    below ``fair`` try-locks free apps, highest score first. Nobody ever owns more than ``fair`` once
    views agree, so the bound ``ceil(M / N) + 1`` holds with room for one tick of disagreement;
  - **triggers** for apps owned elsewhere (webhooks, admin sync/resume/rollback) are broadcast with
    ``NOTIFY autodeployer`` (JSON ``{"v": 1, "action": "trigger", "app", "trigger", "from"}``);
    whichever replica owns the app at that moment wakes its worker. ``{"action": "rebalance"}`` wakes
    every replica's balancing at once (a replica joined, released apps or is shutting down).

PostgreSQL unreachable: the replica drops every app (its workers stop; ``begin()`` refuses anything
already under way), reports why through ``/healthz``, ``/readyz`` and ``/api/replicas``, keeps serving
status from the last known state, and reconnects by itself with a back-off capped at 2 s.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import __version__
from .logs import get_logger
from .model import Trigger

if TYPE_CHECKING:
    from .store_pg import PostgresStore


def default_replica_id() -> str:
    """HOSTNAME-PID: unique per process on a machine, readable in status and history."""
    return f"{socket.gethostname()}-{os.getpid()}"


class AppLock:
    """One app's apply lock across the processes sharing a STATE_DIR: an exclusive ``flock`` on
    ``STATE_DIR/locks/<app>.lock``, held for a whole sync (read state, plan, apply, verify, record).

    The service's worker and a CLI run next to it (``sync``, ``rollback``, ``resume`` without
    ``--server``) both take it, so two processes never apply the same app at once. The kernel releases
    it when its holder dies, so a killed process never leaves an app locked. The holder writes its pid
    into the file, for the message the other one prints. Re-entrant within one object: a CLI rollback
    holds it across the pin and the sync that deploys it.

    ``path`` None (the PostgreSQL store, which proves ownership with advisory locks in ``begin()``, or
    a STATE_DIR that cannot be written) makes a lock that always succeeds.
    """

    POLL = 0.1  # seconds between attempts while waiting

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0
        self._unusable = False  # the lock file cannot be created: applies go on unlocked (logged once)

    @classmethod
    def in_state_dir(cls, state_dir: Path, app: str) -> AppLock:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", app) or "_"  # app names come from configuration
        return cls(state_dir / "locks" / f"{safe}.lock")

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this object now holds it."""
        if self._depth or self.path is None or self._unusable:
            self._depth += 1
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only or full STATE_DIR must not stop every sync
            self._unusable = True
            get_logger(component="lock").warning("cannot create the app's lock file; syncs of this process are "
                                                 "not protected against a CLI run beside it", path=str(self.path),
                                                 error=exc.strerror or str(exc))
            self._depth += 1
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:  # who holds it, for the message another process prints
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd, self._depth = fd, 1
        return True

    async def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the lock (polling: flock has no timeout, and the event loop
        must not block)."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.POLL)
        return True

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def holder(self) -> str:
        """'pid N' of the process holding the lock, as far as its file says."""
        try:
            pid = self.path.read_text().strip() if self.path else ""
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    def busy_message(self, app: str) -> str:
        return f"app {app} is being synced by {self.holder()}; retry, or use --server URL to ask the running service"


class Workers(Protocol):
    """What a coordinator may ask of the scheduler."""

    def app_names(self) -> list[str]: ...
    def acquire(self, app: str, state: Any = None) -> bool: ...  # start its worker; False when stopping
    def drop(self, app: str) -> None: ...  # stop the app's worker (an in-flight sync finishes first)
    def stopped(self, app: str) -> bool: ...  # the worker has stopped (no sync in flight)
    def is_idle(self, app: str) -> bool: ...
    def local_trigger(self, app: str, trigger: Trigger) -> None: ...


class Coordinator(Protocol):
    replica_id: str
    local: bool  # True: a single replica owning everything (no shared store)

    @property
    def ready(self) -> bool: ...  # ownership has been settled once
    @property
    def healthy(self) -> bool: ...  # may apply (ownership provable)
    @property
    def reason(self) -> str | None: ...  # why not healthy, for operators

    async def start(self, workers: Workers) -> None: ...
    async def stop(self) -> None: ...
    def owns(self, app: str) -> bool: ...
    def forward(self, app: str, trigger: Trigger) -> bool: ...
    def owners(self) -> dict[str, str]: ...  # app -> replica id (empty when single or unknown)
    def owned_counts(self) -> dict[str, int]: ...  # replica id -> apps owned
    def live_replicas(self) -> int: ...
    def replicas(self) -> list[dict[str, Any]]: ...


class LocalCoordinator:
    """One replica: owns every app from the start; triggers never leave the process."""

    local = True
    mode = "single"
    ready = True
    healthy = True
    reason: str | None = None

    def __init__(self, replica_id: str | None = None) -> None:
        self.replica_id = replica_id or default_replica_id()
        self._apps: list[str] = []
        self._started_at = time.time()

    async def start(self, workers: Workers) -> None:
        self._apps = workers.app_names()
        for app in self._apps:
            workers.acquire(app)

    async def stop(self) -> None:
        return None

    def owns(self, app: str) -> bool:
        return True

    def forward(self, app: str, trigger: Trigger) -> bool:
        return False

    def owners(self) -> dict[str, str]:
        return {}

    def owned_counts(self) -> dict[str, int]:
        return {self.replica_id: len(self._apps)}

    def live_replicas(self) -> int:
        return 1

    def replicas(self) -> list[dict[str, Any]]:
        return [{
            "id": self.replica_id, "self": True, "live": True, "host": socket.gethostname(),
            "version": __version__, "started_at": self._started_at, "heartbeat_at": time.time(),
            "heartbeat_age": 0.0, "owned_apps": len(self._apps), "apps": sorted(self._apps),
        }]


class _Conflict(Exception):
    """Another live process registered under the same REPLICA_ID."""


class PostgresCoordinator:
    """Ownership through advisory locks on a dedicated connection; triggers through LISTEN/NOTIFY."""

    local = False
    mode = "postgresql"

    def __init__(self, store: PostgresStore, apps: Sequence[str], *, heartbeat: float = 2.0) -> None:
        from .store_pg import takeover_bound

        self.store = store
        self.replica_id = store.replica_id
        self.apps = list(apps)
        self.heartbeat = heartbeat
        self.bound = takeover_bound(heartbeat)
        self.tick = max(0.05, min(0.5, heartbeat / 4))
        self.owned: set[str] = set()
        self._releasing: set[str] = set()  # given up, unlocked once their worker has stopped
        self.keys: dict[str, int] = {}
        self._by_key: dict[int, str] = {}
        self._ready = False
        self._lock_ok = False
        self._lock_reason: str | None = "connecting to PostgreSQL"
        self._listening = False
        self._owners: dict[str, str] = {}
        self._replicas: list[dict[str, Any]] = []
        self._workers: Workers | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._conn: Any = None
        self._pid: int | None = None
        self._last_beat = 0.0
        self._registered_once = False
        self._last_complaint = 0.0
        self.log = get_logger(component="coordination", replica=self.replica_id)

    # ------------------------------------------------------------------ status
    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def healthy(self) -> bool:
        return self._lock_ok and self._listening

    @property
    def reason(self) -> str | None:
        if not self._lock_ok:
            return self._lock_reason
        if not self._listening:
            return "not listening for triggers forwarded by other replicas (PostgreSQL LISTEN connection down); reconnecting"
        return None

    def owns(self, app: str) -> bool:
        return app in self.owned

    def owners(self) -> dict[str, str]:
        return dict(self._owners) if self._lock_ok else {}

    def owned_counts(self) -> dict[str, int]:
        counts = {r["id"]: 0 for r in self._replicas if r["live"]}
        counts[self.replica_id] = 0
        for owner in self.owners().values():
            counts[owner] = counts.get(owner, 0) + 1
        counts[self.replica_id] = len(self.owned)
        return counts

    def live_replicas(self) -> int:
        return sum(1 for r in self._replicas if r["live"]) if self._lock_ok else 0

    def replicas(self) -> list[dict[str, Any]]:
        by_owner: dict[str, list[str]] = {}
        for app, owner in self.owners().items():
            by_owner.setdefault(owner, []).append(app)
        out = []
        for r in self._replicas:
            row = {k: v for k, v in r.items() if k not in ("num", "pid")}
            row["self"] = r["id"] == self.replica_id
            apps = sorted(self.owned) if row["self"] else sorted(by_owner.get(r["id"], []))
            row["owned_apps"], row["apps"] = len(apps), apps
            out.append(row)
        return out

    # ------------------------------------------------------------------ lifecycle
    async def start(self, workers: Workers) -> None:
        self._workers = workers
        self.apps = workers.app_names()
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._main(), name="coordination"),
            asyncio.create_task(self._listen(), name="coordination-listen"),
        ]

    async def stop(self) -> None:
        """Release every app and tell the others, so they take over at once (not after a timeout)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []
        self.owned.clear()
        self.store.lock_pid = None
        self._lock_ok = False
        self._lock_reason = "stopped"
        await self._close_conn()
        try:
            self.store.notify({"action": "rebalance"})
        except Exception:
            pass

    async def _close_conn(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                pass

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _main(self) -> None:
        delay = 0.2
        while not self._stopping:
            try:
                await self._connect()
                delay = 0.2
                # Let replicas that (re)connect together see each other first, so they split the apps
                # between them instead of the fastest taking everything and shedding it again.
                await asyncio.sleep(min(self.heartbeat, 2.0))
                while not self._stopping:
                    await self._tick()
                    await self._sleep(self.tick)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                from .store_pg import describe

                if isinstance(exc, _Conflict):
                    reason = str(exc)
                elif _is_db_error(exc):
                    reason = (f"PostgreSQL unreachable ({describe(exc)}): not applying, since this replica "
                              "cannot prove it owns any app; reconnecting")
                else:
                    self.log.exception("coordination failed")
                    reason = f"coordination failed ({type(exc).__name__}: {describe(exc)}); reconnecting"
                self._lose_all(reason)
                await self._close_conn()
                await self._sleep(delay)
                delay = min(2.0, delay * 2)

    async def _connect(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(**self.store.connect_kwargs("coordination"))
        try:
            # A replica that stops talking (a vanished machine) loses its session, hence its apps.
            await conn.execute("SELECT set_config('idle_session_timeout', %s, false)",
                               (str(int((self.bound - 1.0) * 1000)),))
        except psycopg.Error:
            pass  # PostgreSQL < 14: TCP keepalives are the only detector
        await conn.execute("SELECT set_config('statement_timeout', '10000', false)")
        self.store.offline = False
        self.store.reconnect_now()
        await self._ensure_schema()
        await conn.execute("INSERT INTO apps (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING",
                           (self.apps,))
        cur = await conn.execute("SELECT name, key FROM apps WHERE name = ANY(%s)", (self.apps,))
        self.keys = {name: int(key) for name, key in await cur.fetchall()}
        self._by_key = {key: name for name, key in self.keys.items()}
        pid = conn.info.backend_pid
        cur = await conn.execute(
            """INSERT INTO replicas (id, lock_pid, host, version, heartbeat_interval, started_ts, heartbeat_ts)
               VALUES (%s, %s, %s, %s, %s, now(), now())
               ON CONFLICT (id) DO UPDATE SET lock_pid = excluded.lock_pid, host = excluded.host,
                 version = excluded.version, heartbeat_interval = excluded.heartbeat_interval,
                 heartbeat_ts = now(),
                 started_ts = CASE WHEN %s THEN replicas.started_ts ELSE now() END
               RETURNING num""",
            (self.replica_id, pid, socket.gethostname(), __version__, self.heartbeat, self._registered_once),
        )
        row = await cur.fetchone()
        assert row is not None  # RETURNING of an upsert always yields its row
        num = row[0]
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_ns("NS_REPLICA"), num))
        locked = await cur.fetchone()
        if not (locked and locked[0]):
            await conn.close()
            raise _Conflict(f"another live replica is registered as {self.replica_id!r}: give each replica "
                            "its own REPLICA_ID; not applying")
        await conn.execute("UPDATE replicas SET lock_pid = NULL WHERE lock_pid = %s AND id <> %s",
                           (pid, self.replica_id))
        await conn.execute("DELETE FROM replicas WHERE heartbeat_ts < now() - interval '1 day'")
        self._conn, self._pid = conn, pid
        self._registered_once = True
        self._last_beat = time.monotonic()
        self.store.coordinated = True
        self.store.lock_pid = pid
        self.store.reconnect_now()
        self.store.close_orphans()
        was_ok, self._lock_ok, self._lock_reason = self._lock_ok, True, None
        if not was_ok:
            self.log.info("replica registered", apps=len(self.apps), heartbeat=self.heartbeat,
                          takeover_within=self.bound, store=self.store.url)
        await self._notify(conn, {"action": "rebalance"})

    async def _ensure_schema(self) -> None:
        """The store migrates on its first connection; make sure that has happened."""
        if not self.store.ping():
            raise ConnectionError(self.store.unavailable_reason())

    async def _notify(self, conn: Any, message: dict[str, Any]) -> None:
        from .store_pg import CHANNEL

        payload = json.dumps({"v": 1, "from": self.replica_id, **message})
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    # ------------------------------------------------------------------ balancing
    def _score(self, app: str) -> int:
        digest = hashlib.blake2b(f"{self.replica_id}/{app}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    async def _tick(self) -> None:
        from .store_pg import NS_APP, SQL_APP_LOCKS, SQL_REPLICAS, replica_rows

        conn, workers = self._conn, self._workers
        assert conn is not None and workers is not None
        if time.monotonic() - self._last_beat >= self.heartbeat:
            await conn.execute("UPDATE replicas SET heartbeat_ts = now(), lock_pid = %s WHERE id = %s",
                               (self._pid, self.replica_id))
            self._last_beat = time.monotonic()
        replicas = replica_rows(await (await conn.execute(SQL_REPLICAS)).fetchall())
        held = {int(key): pid for key, pid in await (await conn.execute(SQL_APP_LOCKS)).fetchall()}
        mine = {self._by_key[k] for k, pid in held.items() if pid == self._pid and k in self._by_key}
        for app in sorted(self.owned - mine):
            self.log.warning("ownership lost", app=app, reason="its lock is no longer held by this replica")
            self._lose(app)
        live = {r["id"] for r in replicas if r["live"]} | {self.replica_id}
        fair = math.ceil(len(self.apps) / len(live)) if self.apps else 0
        changed = False
        for app in sorted(self._releasing):  # never unlock while a sync of the app may still be running
            if workers.stopped(app):
                self._releasing.discard(app)
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NS_APP, self.keys[app]))
                held.pop(self.keys[app], None)
                self.log.info("app released", app=app, reason="rebalancing", owned=len(self.owned), fair=fair)
                changed = True
        if len(self.owned) > fair and not self._stopping:
            idle = sorted((a for a in self.owned if workers.is_idle(a)), key=self._score)
            for app in idle[: len(self.owned) - fair]:
                self.owned.discard(app)  # from now on triggers for it are forwarded
                self.store.since.pop(app, None)
                self._releasing.add(app)
                workers.drop(app)
            if self._releasing:
                self._wake_soon()
        elif len(self.owned) < fair and not self._stopping:
            free = sorted((a for a in self.apps if self.keys.get(a) is not None and self.keys[a] not in held
                           and a not in self._releasing), key=self._score, reverse=True)
            # Lock first (one round trip per batch), start the workers after: started workers would
            # otherwise compete with the remaining lock rounds for this event loop.
            got: dict[str, float] = {}
            while free and len(self.owned) + len(got) < fair:
                need = fair - len(self.owned) - len(got)
                batch, free = free[:need], free[need:]
                cur = await conn.execute(
                    "SELECT k, extract(epoch FROM clock_timestamp())::float8 FROM unnest(%s::int[]) AS k"
                    " WHERE pg_try_advisory_lock(%s, k)", ([self.keys[a] for a in batch], NS_APP))
                locked = {int(k): float(at) for k, at in await cur.fetchall()}
                got.update({a: locked[self.keys[a]] for a in batch if self.keys[a] in locked})
            states = self.store.states(list(got)) if got else {}
            for app, since in got.items():
                key = self.keys[app]
                held[key] = self._pid or 0
                if not workers.acquire(app, states.get(app)):  # shutting down
                    await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NS_APP, key))
                    held.pop(key, None)
                    continue
                self.owned.add(app)
                self.store.since[app] = since
            if got:
                self.log.info("apps acquired", apps=sorted(got), owned=len(self.owned), fair=fair)
        if changed:
            await self._notify(conn, {"action": "rebalance"})
        by_pid = {r["pid"]: r["id"] for r in replicas if r["pid"]}
        self._owners = {self._by_key[k]: by_pid.get(pid, f"pid:{pid}") for k, pid in held.items() if k in self._by_key}
        self._owners.update({app: self.replica_id for app in self.owned})
        self._replicas = replicas
        self._ready = True

    def _wake_soon(self) -> None:
        """Tick again shortly: stopped workers' apps can then be unlocked without a full tick's wait."""
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, lambda: self._wake.set() if self._wake is not None else None)

    def _lose(self, app: str) -> None:
        self.owned.discard(app)
        self.store.since.pop(app, None)
        if self._workers is not None:
            self._workers.drop(app)

    def _lose_all(self, reason: str) -> None:
        self.store.lock_pid = None
        self.store.offline = True  # no blocking reconnects from the event loop until this connection is back
        self._releasing.clear()
        lost = sorted(self.owned)
        for app in lost:
            self._lose(app)
        was_ok = self._lock_ok
        self._lock_ok, self._lock_reason = False, reason
        now = time.monotonic()
        if was_ok or lost or now - self._last_complaint > 30:
            self._last_complaint = now
            self.log.error("coordination lost", reason=reason, apps_dropped=len(lost))

    # ------------------------------------------------------------------ triggers
    def forward(self, app: str, trigger: Trigger) -> bool:
        """Hand a trigger to whichever replica owns `app` (NOTIFY); False if it cannot be sent."""
        from .errors import StoreUnavailable

        try:
            self.store.notify({"action": "trigger", "app": app, "trigger": trigger.value})
        except StoreUnavailable as exc:
            self.log.warning("cannot forward a trigger to the app's owner", app=app, trigger=trigger.value,
                             error=str(exc))
            return False
        self.log.debug("trigger forwarded", app=app, trigger=trigger.value, owner=self._owners.get(app))
        return True

    def _on_message(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("v") != 1:
            return
        action = message.get("action")
        if action == "rebalance":
            if message.get("from") != self.replica_id and self._wake is not None:
                self._wake.set()
        elif action == "trigger":
            app = message.get("app")
            try:
                trigger = Trigger(message.get("trigger"))
            except ValueError:
                return
            if isinstance(app, str) and app in self.owned and self._workers is not None:
                self.log.debug("forwarded trigger received", app=app, trigger=trigger.value, sender=message.get("from"))
                self._workers.local_trigger(app, trigger)

    async def _listen(self) -> None:
        import psycopg

        from .store_pg import CHANNEL

        delay = 0.2
        while not self._stopping:
            conn = None
            try:
                conn = await psycopg.AsyncConnection.connect(**self.store.connect_kwargs("listen"))
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listening, delay = True, 0.2
                async for note in conn.notifies():
                    self._on_message(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._wake is not None:
                    self._wake.set()  # the coordination connection is likely gone too: find out now
                if self._listening:
                    from .store_pg import describe

                    self.log.warning("LISTEN connection lost; reconnecting", error=describe(exc))
            finally:
                self._listening = False
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:
                        pass
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


def _ns(name: str) -> int:
    from . import store_pg

    return int(getattr(store_pg, name))


def _is_db_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (psycopg.Error, OSError, ConnectionError))


def make_coordinator(store: Any, apps: Sequence[str], *, heartbeat: float = 2.0,
                     replica_id: str | None = None) -> Coordinator:
    """PostgresCoordinator for a PostgreSQL store, LocalCoordinator otherwise."""
    if getattr(store, "kind", None) == "postgresql":
        return PostgresCoordinator(store, apps, heartbeat=heartbeat)
    return LocalCoordinator(replica_id)
