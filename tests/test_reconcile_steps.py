"""The reconcile as named steps, the Reason each kind of failure is recorded with (history row and app
state), and the one vocabulary of results, statuses and reasons every reader derives its words from.

The steps run on small in-process fakes of the source and the target (with the real SQLite store);
the failure kinds a real part causes (Git out of reach, an invalid file, the node stopped, the node
rejecting a configuration) run `autodeployer sync` as a process against the emulators.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer.config.loader import AppConfig, Policy
from autodeployer.errors import Refused
from autodeployer.model import (
    Action,
    ApplyReport,
    Change,
    CommitInfo,
    Plan,
    Reason,
    Result,
    SourceFile,
    Status,
    SyncResult,
    Tree,
    Trigger,
)
from autodeployer.reconcile import Reconciler
from autodeployer.reporters.commit_status import COMMIT_STATES, status_for
from autodeployer.reporters.notify import EVENTS, HEALTH, event_for, payload
from autodeployer.scheduling import _PRIORITY, AppWorker
from autodeployer.sources.spec import SourceSpec
from autodeployer.status import sync_status
from autodeployer.store import AppState, SQLiteStore
from autodeployer.targets.sesam import Spec
from autodeployer.web.api import OPENAPI
from autodeployer.web.pages import BADGES
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import SESAM_JWT, entity_json, free_port, history_rows, pipe, run_cli, wait_for

SHA = "a" * 40
OTHER = "b" * 40
TEMPLATES = Path(__file__).parents[1] / "src" / "autodeployer" / "web" / "templates"


# --------------------------------------------------------------------------- the vocabulary
def test_every_result_has_its_label_status_colour_notification_and_commit_state():
    css = (TEMPLATES / "base.html").read_text()
    for result in Result:
        assert result.label and BADGES[result.value] == result.label, result
        assert isinstance(result.status, Status) and result.style, result
        assert result in HEALTH and result in COMMIT_STATES, f"{result} has no notification or commit-status mapping"
        assert f".b-{result.value}" in css, f"no badge colour for {result}"
        if HEALTH[result] == "failure":
            assert event_for(result, None, "failures") in EVENTS, result
    for status in Status:
        assert status.label and BADGES[status.value] == status.label and status.style, status
        assert f".b-{status.value}" in css, f"no badge colour for {status}"
    assert all(reason.label for reason in Reason)
    assert set(_PRIORITY) == set(Trigger), "every trigger needs its place in the worker's coalescing order"


def test_the_api_enums_are_the_model_enums():
    schemas = OPENAPI["components"]["schemas"]
    assert schemas["App"]["properties"]["status"]["enum"] == [s.value for s in Status]
    assert schemas["App"]["properties"]["last_reason"]["enum"] == [r.value for r in Reason]
    assert schemas["HistoryRow"]["properties"]["result"]["enum"] == [r.value for r in Result]
    assert schemas["HistoryRow"]["properties"]["reason"]["enum"] == [r.value for r in Reason]


def test_app_status_follows_the_last_result():
    assert sync_status(AppState("a")) is Status.PENDING
    assert sync_status(AppState("a", last_result=Result.NO_CHANGE)) is Status.SYNCED
    assert sync_status(AppState("a", last_result=Result.PLANNED)) is Status.OUT_OF_SYNC
    assert sync_status(AppState("a", last_result=Result.INTERRUPTED)) is Status.FAILED
    assert sync_status(AppState("a", last_result=Result.FAILED, suspended=True)) is Status.SUSPENDED


def test_a_stored_state_gives_back_enums():
    state = AppState(app="a", last_result="refused", last_reason="refused")  # type: ignore[arg-type]
    assert state.last_result is Result.REFUSED and state.last_reason is Reason.REFUSED
    unknown = AppState(app="a", last_result="from-a-newer-version")  # type: ignore[arg-type]
    assert unknown.last_result is None


def test_a_rejected_configuration_is_the_commits_failure_and_an_unreachable_target_an_error():
    rejected = SyncResult("a", Trigger.POLL, Result.FAILED, error="the node rejected it", reason=Reason.REJECTED)
    away = SyncResult("a", Trigger.POLL, Result.FAILED, error="GET x: timed out", reason=Reason.TARGET_UNAVAILABLE)
    refused = SyncResult("a", Trigger.POLL, Result.REFUSED, error="bad file\n  - more", reason=Reason.REFUSED)
    assert status_for(rejected) == ("failure", "rejected: the node rejected it")
    assert status_for(away) == ("error", "failed: GET x: timed out")
    assert status_for(refused) == ("failure", "refused: bad file")


# --------------------------------------------------------------------------- in-process fakes
def tree(revision: str, root: bool = True) -> Tree:
    files = {"pipes/p.conf.json": SourceFile("pipes/p.conf.json", b"{}", "100644", 2)}
    return Tree(revision=revision, tree_id=f"t-{revision[:6]}" if root else "", files=files if root else {})


@dataclass
class FakeSource:
    """Git in memory: `head` is the branch head; every call is counted."""

    head_sha: str = SHA
    root: bool = True
    calls: list[str] = field(default_factory=list)

    async def head(self, max_age: float = 0.0) -> str:
        self.calls.append("head")
        return self.head_sha

    async def fetch(self, revision: str) -> str:
        self.calls.append(f"fetch {revision[:6]}")
        return revision

    async def read(self, sha: str) -> Tree:
        self.calls.append(f"read {sha[:6]}")
        return tree(sha, self.root)

    async def resolve(self, revision: str) -> str:
        return revision

    async def commit_info(self, sha: str) -> CommitInfo:
        return CommitInfo(sha, "a commit", "someone", 0)


@dataclass
class FakeTarget:
    """A target whose plan, apply and verify the test chooses."""

    plan_result: Plan = field(default_factory=lambda: Plan([Change(Action.ADD, "p", "pipe")]))
    remaining: Plan = field(default_factory=Plan)
    apply_error: BaseException | None = None
    prefetches: list[asyncio.Task[Any]] = field(default_factory=list)
    applied: int = 0

    def prefetch(self) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(asyncio.sleep(30))
        self.prefetches.append(task)
        return task

    async def plan(self, ctx: Any) -> Plan:
        return self.plan_result

    async def apply(self, plan: Plan, ctx: Any) -> ApplyReport:
        if self.apply_error is not None:
            raise self.apply_error
        self.applied += 1
        return ApplyReport()

    async def verify(self, plan: Plan, ctx: Any) -> Plan:
        return self.remaining


def app_config(**policy: Any) -> AppConfig:
    return AppConfig(name="a", source=SourceSpec(url="https://git.example.org/acme/config.git"),
                     target=Spec(jwt="j" * 8), policy=Policy(**policy))


@pytest.fixture
def store(tmp_path: Path):
    store = SQLiteStore.in_state_dir(tmp_path / "state")
    yield store
    store.close()


def reconciler(store: SQLiteStore, source: FakeSource | None = None, target: FakeTarget | None = None,
               **policy: Any) -> Reconciler:
    return Reconciler(app_config(**policy), source or FakeSource(), target or FakeTarget(), store)  # type: ignore[arg-type]


def test_fetch_skips_git_and_the_prefetch_for_the_commit_it_has_read(store):
    source, target = FakeSource(), FakeTarget()
    rec = reconciler(store, source, target)

    async def steps() -> None:
        fetched = await rec._fetch(SHA)
        assert fetched.sha == SHA and fetched.prefetched is target.prefetches[0]
        assert (await rec._read(fetched.sha)).revision == SHA
        fetched.prefetched.cancel()
        again = await rec._fetch(SHA)
        assert again.prefetched is None and (await rec._read(SHA)).revision == SHA
        assert source.calls == [f"fetch {SHA[:6]}", f"read {SHA[:6]}"]  # the second round asked Git nothing

    asyncio.run(steps())


def test_plan_refuses_a_commit_without_sync_root_and_guard_refuses_emptying_the_target(store):
    rec = reconciler(store, FakeSource(root=False))
    state = store.get_state("a")

    async def steps() -> None:
        with pytest.raises(Refused, match="SYNC_ROOT '/' does not exist"):
            await rec._plan(tree(SHA, root=False), state, None)
        planned = await rec._plan(tree(SHA), state, None)
        assert rec._guard(planned.plan) is planned.plan

    asyncio.run(steps())
    empties = Plan([Change(Action.REMOVE, "p", "pipe")], empties_target=True)
    with pytest.raises(Refused, match="set ALLOW_EMPTY=true"):
        rec._guard(empties)
    assert reconciler(store, allow_empty=True)._guard(empties) is empties


def recorded(store: SQLiteStore) -> tuple[list[Any], AppState]:
    return store.history("a"), store.get_state("a")


def test_a_sync_that_ends_in_sync_records_no_reason(store):
    result = asyncio.run(reconciler(store).sync(Trigger.MANUAL, force=True))
    rows, state = recorded(store)
    assert result.result is Result.SYNCED and result.reason is None and result.failures == 0
    assert [(r.result, r.reason) for r in rows] == [("synced", None)]
    assert state.last_result is Result.SYNCED and state.last_reason is None


def test_verify_drift_is_recorded_as_its_reason_and_a_later_sync_clears_it(store):
    target = FakeTarget(remaining=Plan([Change(Action.CHANGE, "p", "pipe")]))
    result = asyncio.run(reconciler(store, target=target).sync(Trigger.MANUAL, force=True))
    rows, state = recorded(store)
    assert result.result is Result.FAILED and result.reason is Reason.DRIFT and result.failures == 1
    assert [(r.result, r.reason) for r in rows] == [("failed", "verify-drift")]
    assert state.last_reason is Reason.DRIFT and "still differs" in (state.last_error or "")

    asyncio.run(reconciler(store).sync(Trigger.MANUAL, force=True))
    rows, state = recorded(store)
    assert rows[0].reason is None and state.last_reason is None and state.failures == 0


def test_an_internal_error_while_applying_completes_the_row_opened_for_it(store):
    target = FakeTarget(apply_error=RuntimeError("boom"))
    result = asyncio.run(reconciler(store, target=target).sync(Trigger.MANUAL, force=True))
    rows, state = recorded(store)
    assert result.reason is Reason.INTERNAL and result.error == "internal error: RuntimeError: boom"
    assert [(r.result, r.reason) for r in rows] == [("failed", "internal")]  # not a second row, none 'running'
    assert state.last_result is Result.FAILED and state.last_reason is Reason.INTERNAL


def test_an_app_held_elsewhere_is_not_applied_and_says_when_to_retry(store):
    rec = reconciler(store)
    other = store.app_lock("a")

    async def run() -> SyncResult:
        assert await other.acquire(0)
        try:
            return await rec.sync(Trigger.MANUAL, force=True, lock_wait=0)
        finally:
            other.release()

    result = asyncio.run(run())
    assert result.not_applied and result.reason is Reason.NOT_OWNER and result.retry_after == 1.0
    assert "not_applied" not in result.details and "retry_after" not in result.details
    assert store.history("a") == []  # nothing applied, nothing recorded


# --------------------------------------------------------------------------- the worker reads the typed fields
@dataclass
class Scripted:
    """A reconciler that answers every sync with the same result."""

    app: AppConfig
    store: SQLiteStore
    result: SyncResult

    async def sync(self, trigger: Trigger, force: bool = False, lock_wait: float = 0.0,
                   state: AppState | None = None) -> SyncResult:
        return self.result


def run_worker_once(worker: AppWorker) -> None:
    async def body() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        while worker.stats.runs == 0:
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(body())


def test_the_worker_backs_off_by_the_failure_count_the_result_carries(store):
    app = app_config(interval=10)
    failed = SyncResult("a", Trigger.STARTUP, Result.FAILED, failures=3)
    worker = AppWorker(Scripted(app, store, failed), jitter=0.0)  # type: ignore[arg-type]
    run_worker_once(worker)
    assert 35 < worker.next_poll_at - time.time() <= 40  # 10 s doubled twice, though the store says 0 failures


def test_the_worker_retries_soon_when_the_result_says_so(store):
    app = app_config(interval=3600)
    busy = SyncResult("a", Trigger.STARTUP, Result.NO_CHANGE, reason=Reason.NOT_OWNER, retry_after=2.0)
    worker = AppWorker(Scripted(app, store, busy), jitter=0.0)  # type: ignore[arg-type]
    run_worker_once(worker)
    assert worker.next_poll_at - time.time() <= 2.0 and worker._retry is Trigger.STARTUP


# --------------------------------------------------------------------------- real parts: each failure kind
def last_attempt(state_dir: Path) -> tuple[sqlite3.Row, dict[str, Any]]:
    rows = history_rows(state_dir)
    db = sqlite3.connect(state_dir / "history.sqlite3")
    try:
        (data,) = db.execute("SELECT data FROM app_state").fetchone()
    finally:
        db.close()
    return rows[-1], json.loads(data)


def test_git_out_of_reach_is_recorded_as_source_unavailable(app_env, state_dir: Path):
    env = {**app_env, "GIT_URL": f"http://127.0.0.1:{free_port()}/acme/config.git"}
    assert run_cli(env, "sync").returncode == 2
    row, state = last_attempt(state_dir)
    assert (row["result"], row["reason"]) == ("failed", "source-unavailable")
    assert (state["last_result"], state["last_reason"]) == ("failed", "source-unavailable")


def test_invalid_json_is_recorded_as_refused(app_env, config_repo: WorkRepo, state_dir: Path):
    config_repo.write({"pipes/broken.conf.json": '{"_id": "broken", '})
    config_repo.commit("broken")
    config_repo.push()
    assert run_cli(app_env, "sync").returncode == 2
    row, state = last_attempt(state_dir)
    assert (row["result"], row["reason"]) == ("refused", "refused")
    assert (state["last_result"], state["last_reason"]) == ("refused", "refused")


def test_a_stopped_node_is_recorded_as_target_unavailable(app_env, config_repo: WorkRepo, state_dir: Path):
    node = SesamEmulator(jwt=SESAM_JWT)
    server = node.serve()
    env = {**app_env, "SESAM_API_URL": server.url + "/api"}
    try:
        assert run_cli(env, "sync").returncode == 0
    finally:
        server.stop()
    config_repo.write({"pipes/new.conf.json": entity_json(pipe("new"))})
    config_repo.commit("a new pipe")
    config_repo.push()
    assert run_cli(env, "sync").returncode == 2
    row, state = last_attempt(state_dir)
    assert (row["result"], row["reason"]) == ("failed", "target-unavailable")
    assert (state["last_result"], state["last_reason"]) == ("failed", "target-unavailable")
    history = run_cli(env, "history")
    assert "failed (target unavailable)" in history.stdout, history.stdout


def test_a_configuration_the_node_rejects_is_recorded_as_rejected(app_env, config_repo: WorkRepo, state_dir: Path,
                                                                  sesam: SesamEmulator):
    config_repo.write({"systems/svc.conf.json": entity_json({"_id": "svc", "type": "system:microservice"})})
    config_repo.commit("microservice without docker settings")
    config_repo.push()
    assert run_cli(app_env, "sync").returncode == 2
    row, state = last_attempt(state_dir)
    assert (row["result"], row["reason"]) == ("failed", "rejected-by-target")
    assert (state["last_result"], state["last_reason"]) == ("failed", "rejected-by-target")


# --------------------------------------------------------------------------- the reason column
def test_a_database_of_the_previous_schema_gains_the_reason_column(tmp_path: Path):
    path = tmp_path / "history.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, trigger TEXT NOT NULL,
            revision TEXT, started_at REAL NOT NULL, finished_at REAL, duration REAL, result TEXT NOT NULL,
            summary TEXT NOT NULL DEFAULT '', diff TEXT NOT NULL DEFAULT '', error TEXT,
            warnings TEXT NOT NULL DEFAULT '[]', problems TEXT NOT NULL DEFAULT '[]',
            drift INTEGER NOT NULL DEFAULT 0, details TEXT NOT NULL DEFAULT '{}');
        CREATE INDEX history_app ON history (app, id);
        CREATE TABLE app_state (app TEXT PRIMARY KEY, data TEXT NOT NULL);
        INSERT INTO history (app, trigger, started_at, result) VALUES ('a', 'poll', 1.0, 'synced');
        INSERT INTO app_state (app, data) VALUES ('a', '{"app": "a", "last_result": "synced"}');
        PRAGMA user_version = 1;
    """)
    old.close()
    store = SQLiteStore(path)
    try:
        assert [(r.result, r.reason) for r in store.history("a")] == [("synced", None)]
        assert store.get_state("a").last_result is Result.SYNCED and store.get_state("a").last_reason is None
        attempt = store.begin("a", "manual", SHA, 2.0)
        store.finish(attempt, SyncResult("a", Trigger.MANUAL, Result.FAILED, revision=SHA, started_at=2.0,
                                         reason=Reason.TARGET_UNAVAILABLE))
        assert store.history("a")[0].reason == "target-unavailable"
    finally:
        store.close()


def test_an_attempt_cut_short_is_marked_with_reason_interrupted(tmp_path: Path):
    first = SQLiteStore.in_state_dir(tmp_path)
    first.begin("a", "poll", SHA, 1.0)  # the process dies here
    first.close()
    store = SQLiteStore.in_state_dir(tmp_path)
    try:
        assert store.mark_interrupted() == 1
        assert [(r.result, r.reason) for r in store.history("a")] == [("interrupted", "interrupted")]
    finally:
        store.close()


def test_postgresql_records_the_reason_with_history_and_state(pg_url: str):
    from autodeployer.store.postgres import PostgresStore

    from .scale.pgserver import PASSWORD

    store = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    try:
        attempt = store.begin("a", "poll", SHA, 1.0)
        store.finish(attempt, SyncResult("a", Trigger.POLL, Result.FAILED, revision=SHA, started_at=1.0,
                                         reason=Reason.REJECTED))
        store.update_state("a", lambda _: {"last_result": Result.FAILED, "last_reason": Reason.REJECTED})
        assert [(r.result, r.reason) for r in store.history("a")] == [("failed", "rejected-by-target")]
        state = store.get_state("a")
        assert state.last_result is Result.FAILED and state.last_reason is Reason.REJECTED
    finally:
        store.close()


# --------------------------------------------------------------------------- readers of the reason
def test_the_service_shows_the_reason_in_the_api_and_on_the_page(service, app_env, config_repo: WorkRepo):
    config_repo.write({"systems/svc.conf.json": entity_json({"_id": "svc", "type": "system:microservice"})})
    config_repo.commit("microservice without docker settings")
    config_repo.push()
    svc = service({**app_env, "SYNC_INTERVAL": "0.3"})
    app = wait_for(lambda: (a := httpx.get(svc.url + "/api/apps/node").json())["last_reason"] and a,
                   what="a rejected sync", timeout=30)
    assert (app["status"], app["last_result"], app["last_reason"]) == ("failed", "failed", "rejected-by-target")
    history = httpx.get(svc.url + "/api/apps/node/history?limit=1").json()["history"]
    assert history[0]["reason"] == "rejected-by-target"
    page = httpx.get(svc.url + "/apps/node").text
    assert "reason: rejected by target" in page


def test_the_notification_says_the_reason():
    app = app_config()
    failed = SyncResult("a", Trigger.POLL, Result.FAILED, revision=SHA, error="GET x: timed out",
                        reason=Reason.TARGET_UNAVAILABLE)
    doc = payload(app, failed, event_for(failed.result, None, "failures") or "", None, None)
    assert (doc["event"], doc["result"], doc["reason"]) == ("failed", "failed", "target-unavailable")
    assert doc["text"] == f"a: sync failed at {SHA[:7]}"
    synced = SyncResult("a", Trigger.POLL, Result.SYNCED, revision=SHA, summary="1 added")
    assert payload(app, synced, "applied", None, None)["reason"] is None
