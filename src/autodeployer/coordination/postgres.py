"""Several replicas sharing one PostgreSQL database (``STORE_URL``): who owns which app, and how
triggers reach the owner. Leases, heartbeats and the NOTIFY messages are all built here.

- **ownership** is a session advisory lock per app, ``(NS_APP, apps.key)``, held on this replica's
  dedicated *coordination connection*. A replica that dies or loses that connection loses every
  lock at once (PostgreSQL releases them when the session ends; ``idle_session_timeout`` on that
  connection ends the session of a replica that stopped talking, e.g. a machine that vanished).
  For each app it holds, the coordinator grants the store a :class:`~autodeployer.store.base.Lease`
  (the session holding the lock, a generation, the server time of the acquisition, and a validity
  renewed every tick); the store records attempts only under it, and revokes nothing by itself;
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

PostgreSQL unreachable: the replica drops every app (its workers stop, its leases are revoked, so
``begin()`` refuses anything already under way), reports why through ``/healthz``, ``/readyz`` and
``/api/replicas``, keeps serving status from the last known state, and reconnects by itself with a
back-off capped at 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import socket
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from .. import __version__
from ..errors import StoreUnavailable
from ..logs import get_logger
from ..model import Trigger
from ..store.base import Lease
from ..store.postgres import (
    NS_APP,
    NS_REPLICA,
    SQL_APP_LOCKS,
    SQL_REPLICAS,
    PostgresStore,
    describe,
    replica_rows,
    takeover_bound,
)
from .base import Workers

CHANNEL = "autodeployer"  # LISTEN/NOTIFY channel for triggers forwarded to an app's owner


def encode(sender: str, message: dict[str, Any]) -> str:
    """A NOTIFY payload: version 1, the sending replica, and the message (``action`` and its fields)."""
    return json.dumps({"v": 1, "from": sender, **message})


def decode(payload: str) -> dict[str, Any] | None:
    """The message in a NOTIFY payload; None for anything that is not a version 1 message."""
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return message if isinstance(message, dict) and message.get("v") == 1 else None


def send(store: PostgresStore, message: dict[str, Any]) -> None:
    """Send a message to every replica over the store's connection; raises StoreUnavailable."""
    store.notify(CHANNEL, encode(store.replica_id, message))


def forward_trigger(store: PostgresStore, app: str, trigger: Trigger, override_window: bool = False) -> None:
    """Hand a trigger to whichever replica owns `app` now; raises StoreUnavailable. `override_window`: a
    manual sync that deploys outside the app's sync windows (a replica without the field runs a plain one)."""
    message: dict[str, Any] = {"action": "trigger", "app": app, "trigger": trigger.value}
    if override_window:
        message["override_window"] = True
    send(store, message)


class _Conflict(Exception):
    """Another live process registered under the same REPLICA_ID."""


class PostgresCoordinator:
    """Ownership through advisory locks on a dedicated connection; triggers through LISTEN/NOTIFY."""

    local = False

    def __init__(self, store: PostgresStore, apps: Sequence[str], *, heartbeat: float = 2.0) -> None:
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
        self._generation = 0  # acquisitions so far: each lease granted gets the next number
        self.leases: dict[str, Lease] = {}  # what this coordinator granted the store, by app
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
            return ("not listening for triggers forwarded by other replicas (PostgreSQL LISTEN connection down); "
                    "reconnecting")
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
        self.store.require_leases()
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
        self._revoke_all()
        self._lock_ok = False
        self._lock_reason = "stopped"
        await self._close_conn()
        with contextlib.suppress(Exception):
            send(self.store, {"action": "rebalance"})

    async def _close_conn(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
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
        conn = await psycopg.AsyncConnection.connect(**self.store.connect_kwargs("coordination"))
        # A replica that stops talking (a vanished machine) loses its session, hence its apps. PostgreSQL < 14
        # has no idle_session_timeout: TCP keepalives are the only detector there.
        with contextlib.suppress(psycopg.Error):
            await conn.execute("SELECT set_config('idle_session_timeout', %s, false)",
                               (str(int((self.bound - 1.0) * 1000)),))
        await conn.execute("SELECT set_config('statement_timeout', '10000', false)")
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
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (NS_REPLICA, num))
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
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, encode(self.replica_id, message)))

    # ------------------------------------------------------------------ balancing
    def _score(self, app: str) -> int:
        digest = hashlib.blake2b(f"{self.replica_id}/{app}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    async def _tick(self) -> None:
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
        self._renew(mine)
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
                self._revoke(app)
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
                self._grant(app, since)
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

    def _grant(self, app: str, acquired_at: float) -> None:
        """Hand the store the lease of an app just acquired (a new generation)."""
        assert self._pid is not None
        self._generation += 1
        lease = Lease(app, self.replica_id, self._pid, self._generation, acquired_at, time.monotonic() + self.bound)
        self.leases[app] = lease
        self.store.grant(lease)

    def _renew(self, confirmed: set[str]) -> None:
        """Ownership of these apps was just read back from pg_locks: their leases are good for another bound."""
        valid_until = time.monotonic() + self.bound
        for app in self.owned & confirmed:
            lease = self.leases.get(app)
            if lease is not None:
                self.leases[app] = lease = dataclasses.replace(lease, valid_until=valid_until)
                self.store.grant(lease)

    def _revoke(self, app: str) -> None:
        self.leases.pop(app, None)
        self.store.revoke(app)

    def _revoke_all(self) -> None:
        self.leases.clear()
        self.store.revoke_all()

    def _lose(self, app: str) -> None:
        self.owned.discard(app)
        self._revoke(app)
        if self._workers is not None:
            self._workers.drop(app)

    def _lose_all(self, reason: str) -> None:
        self._revoke_all()
        self.store.go_offline()  # no blocking reconnects from the event loop until this connection is back
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
    def forward(self, app: str, trigger: Trigger, override_window: bool = False) -> bool:
        """Hand a trigger to whichever replica owns `app` (NOTIFY); False if it cannot be sent."""
        try:
            forward_trigger(self.store, app, trigger, override_window)
        except StoreUnavailable as exc:
            self.log.warning("cannot forward a trigger to the app's owner", app=app, trigger=trigger.value,
                             error=str(exc))
            return False
        self.log.debug("trigger forwarded", app=app, trigger=trigger.value, owner=self._owners.get(app))
        return True

    def _on_message(self, payload: str) -> None:
        message = decode(payload)
        if message is None:
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
                self._workers.local_trigger(app, trigger, message.get("override_window") is True)

    async def _listen(self) -> None:
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
                    self.log.warning("LISTEN connection lost; reconnecting", error=describe(exc))
            finally:
                self._listening = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


def _is_db_error(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg.Error, OSError, ConnectionError))
