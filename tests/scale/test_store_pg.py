"""The PostgreSQL store on its own: protocol, migrations, the ownership checks of begin(), outages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from autodeployer.config.loader import load_config
from autodeployer.coordination.postgres import PostgresCoordinator, decode, encode, forward_trigger
from autodeployer.errors import ConfigError, OwnershipLost, StoreUnavailable
from autodeployer.model import Result, SyncResult, Trigger
from autodeployer.store import AppState, Lease
from autodeployer.store import postgres as store_pg
from autodeployer.store.postgres import NS_APP, NS_REPLICA, PostgresStore

from ..helpers import SESAM_JWT
from .pgserver import PASSWORD, free_port


def result(app: str, outcome: Result, revision: str) -> SyncResult:
    return SyncResult(app, Trigger.POLL, outcome, revision=revision, summary="1 added", diff="+x\x00",
                      started_at=time.time(), duration=0.25)


def replica_session(pg_server, url: str, name: str):
    """A connection standing for a live replica: presence lock held, like a coordinator's."""
    assert PostgresStore(url, password=PASSWORD, replica_id=name).ping()  # the schema exists
    conn = pg_server.connect(url.rsplit("/", 1)[1])
    num = conn.execute("INSERT INTO replicas (id, lock_pid) VALUES (%s, pg_backend_pid()) RETURNING num",
                       (name,)).fetchone()[0]
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (NS_REPLICA, num))
    return conn


def lease(app: str, name: str, lock_conn, *, generation: int = 1, acquired_at: float | None = None,
          valid_for: float = 60.0) -> Lease:
    """What a coordinator holding `app`'s lock on `lock_conn` grants its store."""
    return Lease(app, name, lock_conn.info.backend_pid, generation,
                 time.time() if acquired_at is None else acquired_at, time.monotonic() + valid_for)


def coordinated(url: str, name: str, lock_conn, apps: list[str]) -> PostgresStore:
    """A store whose ownership lock connection is `lock_conn` holding `apps`, with a lease for each."""
    store = PostgresStore(url, password=PASSWORD, replica_id=name)
    keys = store.app_keys(apps)
    for app in apps:
        assert lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (NS_APP, keys[app])).fetchone()[0]
    store.require_leases()
    for app in apps:
        store.grant(lease(app, name, lock_conn))
    return store


def test_history_state_and_migrations(pg_url: str, pg_server):
    store = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    attempt = store.begin("a", "poll", "b" * 40, time.time())
    store.finish(attempt, result("a", Result.SYNCED, "b" * 40))
    store.put_state(AppState(app="a", last_synced_revision="b" * 40, suspended=True, memory={"k": [1]}))
    store.close()

    again = PostgresStore(pg_url, password=PASSWORD, replica_id="r2")  # migrations run once
    [row] = again.history("a")
    assert row.result == "synced" and row.duration == 0.25 and row.diff == "+x\\x00"
    assert row.details["replica"] == "r1" and row.details["attempt"] == 1
    state = again.get_state("a")
    assert state.suspended and state.memory == {"k": [1]} and state.last_synced_revision == "b" * 40
    assert again.get_state("unknown") == AppState(app="unknown")
    assert again.states(["a", "z"])["z"] == AppState(app="z")
    with pg_server.connect(pg_url.rsplit("/", 1)[1]) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(store_pg.MIGRATIONS)
    second = again.begin("a", "poll", "b" * 40, time.time())  # a retry of the same revision: attempt 2
    again.finish(second, result("a", Result.FAILED, "b" * 40))
    assert [r.details["attempt"] for r in again.history("a")] == [2, 1]


def test_begin_proves_ownership_in_its_transaction(pg_url: str, pg_server):
    lock_conn = replica_session(pg_server, pg_url, "r1")
    store = coordinated(pg_url, "r1", lock_conn, ["a"])
    attempt = store.begin("a", "webhook", "c" * 40, time.time())
    store.finish(attempt, result("a", Result.SYNCED, "c" * 40))

    # the lock is gone (lost connection, rebalanced away): nothing may be applied
    lock_conn.execute("SELECT pg_advisory_unlock_all()")
    with pytest.raises(OwnershipLost, match="no longer owns") as lost:
        store.begin("a", "poll", "d" * 40, time.time())
    assert lost.value.retry_after is None

    # another live replica (r2) now owns it, and has an attempt in flight
    other_conn = replica_session(pg_server, pg_url, "r2")
    other = coordinated(pg_url, "r2", other_conn, ["a"])
    running = other.begin("a", "poll", "d" * 40, time.time())
    lock_conn.close()
    # r1 comes back and re-acquires after r2 lost it mid-apply: r2's attempt still blocks r1
    other_conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NS_APP, other._keys["a"]))
    lock_conn = replica_session(pg_server, pg_url, "r1-again")
    store = coordinated(pg_url, "r1-again", lock_conn, ["a"])
    with pytest.raises(OwnershipLost, match="r2 is still applying") as busy:
        store.begin("a", "poll", "d" * 40, time.time())
    assert busy.value.retry_after == store_pg.RETRY_WHILE_BUSY
    # r2 finishes after r1 took over: r1 must plan again once, then may apply
    other.finish(running, result("a", Result.SYNCED, "d" * 40))
    with pytest.raises(OwnershipLost, match="planning again"):
        store.begin("a", "poll", "d" * 40, time.time())
    store.finish(store.begin("a", "poll", "d" * 40, time.time()), result("a", Result.NO_CHANGE, "d" * 40))
    lock_conn.close()
    other_conn.close()


def test_attempt_of_a_vanished_replica_stops_blocking_after_the_grace(pg_url: str, pg_server, monkeypatch):
    gone = PostgresStore(pg_url, password=PASSWORD, replica_id="gone")
    gone_conn = replica_session(pg_server, pg_url, "gone")
    gone.require_leases()
    gone.app_keys(["a"])
    gone_conn.execute("SELECT pg_advisory_lock(%s, %s)", (NS_APP, gone._keys["a"]))
    gone.grant(lease("a", "gone", gone_conn))
    gone.begin("a", "poll", "e" * 40, time.time())
    gone_conn.close()  # kill -9: its session, presence and lock vanish; its attempt stays 'running'

    lock_conn = replica_session(pg_server, pg_url, "heir")
    heir = coordinated(pg_url, "heir", lock_conn, ["a"])
    with pytest.raises(OwnershipLost, match="still applying"):
        heir.begin("a", "poll", "e" * 40, time.time())  # it may still be in flight (a partition)
    monkeypatch.setattr(store_pg, "STALE_ATTEMPT", 0.0)
    # a new lease, acquired after the interrupted row is closed: that row is not "finished since the take-over"
    heir.grant(lease("a", "heir", lock_conn, generation=2, acquired_at=time.time() + 60))
    attempt = heir.begin("a", "poll", "e" * 40, time.time())
    rows = {r.details["replica"]: r for r in heir.history("a")}
    assert rows["gone"].result == "interrupted" and "replica gone stopped" in rows["gone"].error
    assert rows["heir"].id == attempt and rows["heir"].details["attempt"] == 2
    lock_conn.close()


def test_a_command_line_attempt_locks_the_app(pg_url: str, pg_server):
    cli = PostgresStore(pg_url, password=PASSWORD, replica_id="cli")
    attempt = cli.begin("a", "manual", "f" * 40, time.time())
    lock_conn = replica_session(pg_server, pg_url, "r1")
    replica = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    key = replica.app_keys(["a"])["a"]
    assert not lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (NS_APP, key)).fetchone()[0]
    cli.finish(attempt, result("a", Result.SYNCED, "f" * 40))
    assert lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (NS_APP, key)).fetchone()[0]
    lock_conn.execute("UPDATE replicas SET lock_pid = pg_backend_pid()")
    with pytest.raises(OwnershipLost, match="replica r1 owns this app"):
        cli.begin("a", "manual", "f" * 40, time.time())
    assert cli.owners() == {"a": "r1"} and list(cli.heartbeats()) == ["r1"]
    assert [r["id"] for r in cli.replicas()] == ["r1"] and cli.replicas()[0]["owned_apps"] == 1
    lock_conn.close()


def test_orphaned_attempts_are_closed_on_reconnect(pg_url: str):
    store = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    kept = store.begin("a", "poll", "1" * 40, time.time())
    lost = store.begin("b", "poll", "2" * 40, time.time())
    store._open.discard(lost)  # its finish() failed while PostgreSQL was away
    assert store.close_orphans() == 1
    rows = {r.id: r.result for r in store.history()}
    assert rows == {kept: "running", lost: "interrupted"}


def test_unreachable_database():
    store = PostgresStore(f"postgresql://nobody@127.0.0.1:{free_port()}/db", password=PASSWORD, replica_id="r1",
                          connect_timeout=1)
    assert store.get_state("a") == AppState(app="a")  # status keeps answering
    with pytest.raises(OwnershipLost, match="cannot prove ownership"):
        store.begin("a", "poll", "1" * 40, time.time())
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.history()
    with pytest.raises(StoreUnavailable):
        store.put_state(AppState(app="a"))
    assert store.mark_interrupted() == 0
    assert PASSWORD not in store.unavailable_reason()


def test_store_settings(tmp_path: Path):
    env = {"GIT_URL": "https://example.org/a/b.git", "JWT": SESAM_JWT, "HOME": str(tmp_path)}
    config = load_config({**env, "STORE_URL": "postgresql://deployer:pw-in-url@db:5432/deploys"})
    assert config.service.store_url == "postgresql://deployer@db:5432/deploys"
    assert config.service.store_password.get_secret_value() == "pw-in-url"
    assert "pw-in-url" in config.secrets()  # so the redactor masks it wherever it might appear
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = load_config({**env, "STORE_URL": "postgresql://deployer@db/deploys", "STORE_PASSWORD_FILE": str(secret),
                          "REPLICA_ID": "node-a", "HEARTBEAT_INTERVAL": "0.5"})
    assert config.service.store_password.get_secret_value() == "from-file"
    assert config.service.replica_id == "node-a" and config.service.heartbeat_interval == 0.5
    with pytest.raises(ConfigError, match="STORE_URL: expected postgresql://"):
        load_config({**env, "STORE_URL": "mysql://u:secretpw@db/x"})
    with pytest.raises(ConfigError, match="STORE_PASSWORD_FILE: cannot read"):
        load_config({**env, "STORE_URL": "postgresql://u@db/x", "STORE_PASSWORD_FILE": str(tmp_path / "nope")})
    assert load_config(env).service.store_url is None  # the default: SQLite under STATE_DIR
    yaml_file = tmp_path / "apps.yaml"
    yaml_file.write_text(f"""
service:
  store_url: postgresql://deployer@db:5432/deploys
  store_password_file: {secret}
  replica_id: from-yaml
apps:
  - name: one
    source: {{url: https://example.org/a/b.git}}
    target: {{kind: sesam, api_url: http://node/api, jwt_env: JWT}}
""")
    service = load_config(env, yaml_file).service
    assert service.store_url == "postgresql://deployer@db:5432/deploys" and service.replica_id == "from-yaml"
    assert service.store_password.get_secret_value() == "from-file"


def test_a_sql_ascii_database_still_gives_text(pg_server):
    """Databases created with LC_ALL=C default to SQL_ASCII; names must not come back as bytes."""
    name = "ascii_" + str(int(time.time() * 1000))
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    url = pg_server.url(name)
    store = PostgresStore(url, password=PASSWORD, replica_id="r1")
    lock_conn = replica_session(pg_server, url, "r1")
    assert store.app_keys(["app-é"]) == {"app-é": 1}
    lock_conn.execute("SELECT pg_advisory_lock(%s, 1)", (NS_APP,))
    assert store.owners() == {"app-é": "r1"} and store.replicas()[0]["id"] == "r1"
    store.finish(store.begin("b", "poll", "1" * 40, time.time()), result("b", Result.SYNCED, "1" * 40))
    assert store.history("b")[0].app == "b"
    lock_conn.close()


def test_update_state_changes_only_the_fields_it_returns(pg_url: str, pg_server):
    """A sync's bookkeeping keeps a suspend another replica or a CLI run wrote after the sync read the
    state (the row is read FOR UPDATE in the transaction that writes it)."""
    replica = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    cli = PostgresStore(pg_url, password=PASSWORD, replica_id="cli")
    replica.put_state(AppState(app="a", last_result="synced", failures=2))
    seen = replica.get_state("a")
    cli.update_state("a", lambda _: {"suspended": True, "suspended_reason": "by hand", "pinned_revision": "c" * 40})
    after = replica.update_state("a", lambda now: {"last_result": "failed", "failures": now.failures + 1})
    assert not seen.suspended
    for state in (after, cli.get_state("a"), replica.get_state("a")):
        assert state.suspended and state.suspended_reason == "by hand" and state.pinned_revision == "c" * 40
        assert state.last_result == "failed" and state.failures == 3
    assert replica.update_state("new", lambda _: {"failures": 1}) == AppState(app="new", failures=1)
    replica.close()
    cli.close()


def test_begin_writes_only_under_a_valid_lease(pg_url: str, pg_server):
    """Ownership is the lease the coordinator hands over: revoked, expired, or held by a session that no
    longer holds the lock, it writes nothing."""
    lock_conn = replica_session(pg_server, pg_url, "r1")
    store = coordinated(pg_url, "r1", lock_conn, ["a"])
    store.finish(store.begin("a", "poll", "1" * 40, time.time()), result("a", Result.SYNCED, "1" * 40))

    store.revoke("a")
    with pytest.raises(OwnershipLost, match="no longer owns"):
        store.begin("a", "poll", "2" * 40, time.time())
    store.grant(lease("a", "r1", lock_conn, generation=2, valid_for=-1.0))
    with pytest.raises(OwnershipLost, match="lease has expired") as expired:
        store.begin("a", "poll", "2" * 40, time.time())
    assert expired.value.retry_after == store_pg.RETRY_WHILE_BUSY  # a late renewal must not lose the trigger
    other_conn = replica_session(pg_server, pg_url, "r2")  # a session that does not hold the app's lock
    store.grant(lease("a", "r1", other_conn, generation=3))
    with pytest.raises(OwnershipLost, match="no longer owns"):
        store.begin("a", "poll", "2" * 40, time.time())
    store.grant(lease("a", "r1", lock_conn, generation=4))
    store.finish(store.begin("a", "poll", "2" * 40, time.time()), result("a", Result.SYNCED, "2" * 40))
    assert [r.result for r in store.history("a")] == ["synced", "synced"]  # nothing recorded when refused
    lock_conn.close()
    other_conn.close()


class RecordingWorkers:
    """The scheduler side of a coordinator: every app acquired at once, idle, stopped when dropped."""

    def __init__(self, apps: list[str]) -> None:
        self.apps = apps
        self.triggers: list[tuple[str, Trigger, bool]] = []  # (app, trigger, override_window)

    def app_names(self) -> list[str]:
        return list(self.apps)

    def acquire(self, app: str, state: object = None) -> bool:
        return True

    def drop(self, app: str) -> None:
        return None

    def stopped(self, app: str) -> bool:
        return True

    def is_idle(self, app: str) -> bool:
        return True

    def local_trigger(self, app: str, trigger: Trigger, override_window: bool = False) -> None:
        self.triggers.append((app, trigger, override_window))


async def _eventually(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_the_coordinator_grants_renews_and_revokes_leases(pg_url: str):
    """The PostgresCoordinator hands its store a lease per app it locked (held by its coordination
    session, renewed every tick) and revokes them all when it stops; triggers forwarded by another
    process reach it through NOTIFY."""
    store = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    cli = PostgresStore(pg_url, password=PASSWORD, replica_id="cli")
    coordinator = PostgresCoordinator(store, ["a", "b"], heartbeat=0.4)
    workers = RecordingWorkers(["a", "b"])

    async def scenario() -> None:
        await coordinator.start(workers)
        try:
            await _eventually(lambda: coordinator.owned == {"a", "b"} and coordinator.healthy)
            first = dict(coordinator.leases)
            assert {lease.holder for lease in first.values()} == {coordinator._pid}
            assert len({lease.generation for lease in first.values()}) == 2
            await _eventually(lambda: coordinator.leases["a"].valid_until > first["a"].valid_until)  # renewed
            assert coordinator.leases["a"].generation == first["a"].generation
            store.finish(store.begin("a", "poll", "1" * 40, time.time()), result("a", Result.SYNCED, "1" * 40))
            with pytest.raises(OwnershipLost, match="replica r1 owns this app"):
                cli.begin("a", "manual", "1" * 40, time.time())
            forward_trigger(cli, "b", Trigger.WEBHOOK)
            forward_trigger(cli, "a", Trigger.MANUAL, override_window=True)
            await _eventually(lambda: workers.triggers == [("b", Trigger.WEBHOOK, False), ("a", Trigger.MANUAL, True)])
        finally:
            await coordinator.stop()
        assert coordinator.leases == {}
        with pytest.raises(OwnershipLost, match="no longer owns"):
            store.begin("a", "poll", "2" * 40, time.time())

    asyncio.run(scenario())
    store.close()
    cli.close()


def test_notify_messages_round_trip():
    payload = encode("r1", {"action": "trigger", "app": "a", "trigger": "webhook"})
    assert decode(payload) == {"v": 1, "from": "r1", "action": "trigger", "app": "a", "trigger": "webhook"}
    assert decode("not json") is None and decode('{"v": 2}') is None and decode("[1]") is None


def test_previews_are_shared_by_replicas_and_a_version_2_database_gains_them(pg_url: str, pg_server):
    """Schema version 3: previews live in the database, so a replica shows what another one planned; a
    database an earlier version migrated to version 2 is migrated once more and keeps what it had."""
    with pg_server.connect(pg_url.rsplit("/", 1)[1]) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for number, script in enumerate(store_pg.MIGRATIONS[:2], start=1):
            conn.execute(script)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
        conn.execute("INSERT INTO app_state (app, data) VALUES ('a', '{\"app\": \"a\", \"suspended\": true}')")
        conn.commit()
    r1 = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    r2 = PostgresStore(pg_url, password=PASSWORD, replica_id="r2")
    assert r1.get_state("a").suspended and r2.previews("a") == []
    r1.save_preview("a", 3, {"number": 3, "summary": "1 added"})
    r1.save_preview("a", 3, {"number": 3, "summary": "1 changed"})
    r1.save_preview("a", 1, {"number": 1, "summary": "queued"})
    assert r2.previews("a") == [{"number": 1, "summary": "queued"}, {"number": 3, "summary": "1 changed"}]
    assert r2.delete_preview("a", 1) and not r2.delete_preview("a", 1)
    assert r1.previews("a") == [{"number": 3, "summary": "1 changed"}] and r1.previews("b") == []
    with pg_server.connect(pg_url.rsplit("/", 1)[1]) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(store_pg.MIGRATIONS)
    r1.close()
    r2.close()
