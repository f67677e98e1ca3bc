"""Health after deploy and automatic rollback, in process: the product's own wiring (build_runtime) over
real Git on loopback and the Sesam and Marathon emulators, with a reporter that records what it is told."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from autodeployer.config.loader import load_config
from autodeployer.errors import ConfigError
from autodeployer.model import CommitInfo, HealthNotice, Result, SyncResult, Trigger
from autodeployer.reconcile import Reconciler
from autodeployer.runtime import Runtime, build_runtime
from autodeployer.store.sqlite import SQLiteStore
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator
from autodeployer_emulators.sesam import SesamEmulator

from ..fakes import MemoryStore
from ..helpers import GIT_TOKEN, MARATHON_TOKEN, SESAM_JWT, base_env, entity_json, pipe

WINDOW, POLL = 1.5, 0.2


class Told:
    """A reporter recording the health notices (and the finished syncs) it is told about."""

    def __init__(self) -> None:
        self.notices: list[HealthNotice] = []
        self.results: list[SyncResult] = []

    async def started(self, app: Any, revision: str, trigger: Trigger) -> None:
        return None

    async def finished(self, app: Any, result: SyncResult, commit: CommitInfo | None) -> None:
        self.results.append(result)

    async def health(self, app: Any, notice: HealthNotice) -> None:
        self.notices.append(notice)


def push(repo: WorkRepo, files: dict[str, str | None], message: str) -> str:
    repo.write(files)
    repo.commit(message)
    repo.push()
    return repo.head


@pytest.fixture
def told() -> Told:
    return Told()


async def settle(rec: Reconciler) -> None:
    """Until the watch, an automatic rollback it queued and the watch of that rollback have ended."""
    await rec.health.wait()
    while rec._rollback_task is not None:
        task, rec._rollback_task = rec._rollback_task, None
        await task
        await rec.health.wait()


def runtime_for(env: dict[str, str], told: Told) -> Runtime:
    config = load_config({**env, "COMMIT_STATUS": "false"})
    return build_runtime(config, store=MemoryStore(), reporters=[told])


@asynccontextmanager
async def reconciler_for(env: dict[str, str], told: Told) -> AsyncIterator[Reconciler]:
    """The one app's reconciler, built by the product's wiring; its runtime closed at the end."""
    runtime = runtime_for(env, told)
    try:
        yield next(iter(runtime.reconcilers.values()))
    finally:
        await runtime.aclose()


Scenario = Callable[[Reconciler], Awaitable[None]]


@pytest.fixture
def with_sesam(app_env: dict[str, str], told: Told) -> Callable[[Scenario], None]:
    """Runs a scenario against the Sesam app with a short window and ROLLBACK_ON=degraded."""
    env = {**app_env, "HEALTH_WINDOW": str(WINDOW), "HEALTH_POLL": str(POLL), "ROLLBACK_ON": "degraded"}

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            async with reconciler_for(env, told) as rec:
                await scenario(rec)
        asyncio.run(main())
    return run


# --------------------------------------------------------------------------- healthy, and the record of it
def test_healthy_deploy_is_recorded_on_state_and_history_row(with_sesam: Callable[[Scenario], None], told: Told):
    async def scenario(rec: Reconciler) -> None:
        result = await rec.sync(Trigger.MANUAL)
        assert result.result is Result.SYNCED
        checking = rec.store.get_state("node").health
        assert checking["state"] == "checking" and checking["revision"] == result.revision
        started = time.monotonic()
        await settle(rec)
        assert WINDOW - 0.2 <= time.monotonic() - started <= WINDOW + POLL + 1.0
        health = rec.store.get_state("node").health
        assert health["state"] == "healthy" and health["revision"] == result.revision
        assert health["since"] == pytest.approx(result.started_at + result.duration)
        assert health["checked_at"] >= health["since"] + WINDOW - 0.1
        assert health["last_healthy"] == result.revision
        row = rec.store.history("node", 1)[0]
        assert row.details["health"]["state"] == "healthy" and row.details["health"]["evidence"] == []
        assert row.details["commit"]  # what the sync recorded is kept beside it
        assert told.notices == []

    with_sesam(scenario)


def test_a_new_push_deploys_at_once_and_supersedes_the_watch(
    with_sesam: Callable[[Scenario], None], told: Told, config_repo: WorkRepo,
):
    async def scenario(rec: Reconciler) -> None:
        first = await rec.sync(Trigger.MANUAL)
        push(config_repo, {"pipes/extra.conf.json": entity_json(pipe("extra"))}, "add a pipe")
        started = time.monotonic()
        second = await rec.sync(Trigger.WEBHOOK)  # the first watch is still running: the worker is free
        assert second.result is Result.SYNCED and time.monotonic() - started < WINDOW
        await settle(rec)
        rows = {r.revision: r for r in rec.store.history("node", 5)}
        assert rows[first.revision].details["health"]["ended"] == "superseded"
        assert rows[first.revision].details["health"]["state"] == "checking"
        assert rows[second.revision].details["health"]["state"] == "healthy"
        assert rec.store.get_state("node").health["revision"] == second.revision

    with_sesam(scenario)


def test_a_watch_interrupted_by_a_restart_is_resumed_and_acts(app_env: dict[str, str], told: Told,
                                                                config_repo: WorkRepo, tmp_path: Path):
    """The process deploying a failing pipe stops mid-window: the next process (a restart, or the replica
    taking the app over) resumes the watch at its first sync, finds the pipe failing and rolls it back."""
    env = {**app_env, "HEALTH_WINDOW": "3", "HEALTH_POLL": str(POLL), "ROLLBACK_ON": "degraded",
           "COMMIT_STATUS": "false"}
    path = tmp_path / "shared.sqlite3"

    async def first_process() -> tuple[str, str]:
        store = SQLiteStore(path)
        runtime = build_runtime(load_config(env), store=store, reporters=[told])
        rec = next(iter(runtime.reconcilers.values()))
        good = (await rec.sync(Trigger.MANUAL)).revision
        rec.health.cancel()  # no verdict for the first deploy: it is not what this test is about
        failing = pipe("orders", metadata={"emulator-fail-runs": "orders lost its source"})
        push(config_repo, {"pipes/orders.conf.json": entity_json(failing)}, "break orders")
        never = asyncio.Event()

        async def stopped_before_looking(request: Any) -> Any:
            await never.wait()  # this process is gone before its first look
        rec.health._look = stopped_before_looking  # type: ignore[method-assign]
        bad = (await rec.sync(Trigger.WEBHOOK)).revision
        await runtime.aclose()  # the process stops mid-window
        store.close()
        assert good is not None and bad is not None
        return good, bad

    async def second_process(good: str, bad: str) -> None:
        store = SQLiteStore(path)
        runtime = build_runtime(load_config(env), store=store, reporters=[told])
        try:
            rec = next(iter(runtime.reconcilers.values()))
            assert (await rec.sync(Trigger.POLL)).revision == bad  # the first poll resumes the watch
            await settle(rec)
            state = rec.store.get_state("node")
            assert state.suspended and state.pinned_revision == good
            assert "orders lost its source" in (state.suspended_reason or "")
            assert [(n.event, n.revision) for n in told.notices] == [("rolled-back", bad)]
            row = {r.revision: r for r in rec.store.history("node", 10) if r.trigger == "webhook"}[bad]
            assert row.details["health"]["state"] == "degraded"
            assert "watch" not in state.health  # a verdict ends what a resumed watch needed
        finally:
            await runtime.aclose()
            store.close()

    async def main() -> None:
        good, bad = await first_process()
        health = SQLiteStore(path).get_state("node").health
        assert health["state"] == "checking" and health["revision"] == bad
        assert ["change", "orders", "pipe"] in health["watch"]["changes"] or \
            ["add", "orders", "pipe"] in health["watch"]["changes"]
        assert told.notices == []
        await second_process(good, bad)

    asyncio.run(main())


# --------------------------------------------------------------------------- Sesam: a pipe that fails is rolled back
def test_failing_pipe_is_rolled_back_once_suspended_and_notified(
    with_sesam: Callable[[Scenario], None], told: Told, config_repo: WorkRepo, sesam: SesamEmulator,
):
    async def scenario(rec: Reconciler) -> None:
        good = (await rec.sync(Trigger.MANUAL)).revision
        await settle(rec)
        failing = pipe("orders", metadata={"emulator-fail-runs": "source table orders is gone"})
        bad = push(config_repo, {"pipes/orders.conf.json": entity_json(failing)}, "break orders")
        result = await rec.sync(Trigger.WEBHOOK)
        assert result.result is Result.SYNCED and result.revision == bad
        deployed = time.monotonic()
        await rec.health.wait()
        assert time.monotonic() - deployed <= POLL + 1.0  # the first degraded reading decides
        await settle(rec)

        state = rec.store.get_state("node")
        assert state.suspended and state.pinned_revision == good and state.last_revision == good
        reason = state.suspended_reason or ""
        assert "automatic rollback" in reason and "pipe orders" in reason and "source table orders is gone" in reason
        live = {e["_id"]: e for e in sesam.entities()}
        assert "metadata" not in live["orders"]  # the node runs the good revision again
        assert [(n.event, n.revision, n.rollback_to) for n in told.notices] == [("rolled-back", bad, good)]
        assert told.notices[0].description.startswith("rolled back: pipe orders: run at ")
        rows = {r.revision: r for r in rec.store.history("node", 10) if r.trigger != "rollback"}
        assert rows[bad].details["health"]["state"] == "degraded"
        assert any("source table orders is gone" in e for e in rows[bad].details["health"]["evidence"])
        assert state.health["rolled_back"] == [bad] and state.health["state"] == "healthy"  # the rollback is

    with_sesam(scenario)


def test_a_rollback_whose_sync_fails_is_said_once_and_the_app_stays_suspended(
    with_sesam: Callable[[Scenario], None], told: Told, config_repo: WorkRepo, sesam: SesamEmulator,
):
    async def scenario(rec: Reconciler) -> None:
        good = (await rec.sync(Trigger.MANUAL)).revision
        await settle(rec)
        failing = pipe("orders", metadata={"emulator-fail-runs": "orders lost its source"})
        bad = push(config_repo, {"pipes/orders.conf.json": entity_json(failing)}, "break orders")
        assert (await rec.sync(Trigger.WEBHOOK)).revision == bad
        sesam.fail_next(500, times=20, path_prefix="/api/config")  # the rollback's own sync cannot read the node
        await settle(rec)
        state = rec.store.get_state("node")
        assert state.suspended and state.pinned_revision == good  # no deploy of the bad revision by a poll
        reason = state.suspended_reason or ""
        assert f"automatic rollback of {bad[:12]} to {good[:12]} failed" in reason, reason
        assert "orders lost its source" in reason
        assert [(n.event, n.revision, n.rollback_to) for n in told.notices] == [("rollback-failed", bad, good)]
        assert state.health["rollback"]["done"] is True and state.health["rollback"]["result"] == "failed"
        [rollback] = [r for r in rec.store.history("node", 10) if r.trigger == "rollback"]
        assert rollback.result == "failed" and "500" in (rollback.error or "")

    with_sesam(scenario)


def test_a_large_deploy_is_watched_through_one_listing_per_look(
    with_sesam: Callable[[Scenario], None], told: Told, config_repo: WorkRepo, sesam: SesamEmulator,
):
    """Twenty changed pipes: one `GET /api/pipes?fields=runtime` per look, not twenty pump reads; a failing
    one among them is still found and rolled back."""
    async def scenario(rec: Reconciler) -> None:
        await rec.sync(Trigger.MANUAL)
        await settle(rec)
        many = {f"pipes/p{i:02d}.conf.json": entity_json(pipe(f"p{i:02d}")) for i in range(20)}
        push(config_repo, many, "twenty pipes")
        sesam.reset_log()
        assert (await rec.sync(Trigger.WEBHOOK)).result is Result.SYNCED
        await settle(rec)
        assert sesam.count("GET", "/api/pipes") >= 1
        assert not [r for r in sesam.requests if r.method == "GET" and r.path.endswith("/pump")]
        # every pipe changes again (still a listing), and one of them starts failing
        changed = {f"pipes/p{i:02d}.conf.json": entity_json(pipe(f"p{i:02d}", dataset="src2")) for i in range(20)}
        failing = pipe("p07", dataset="src2", metadata={"emulator-fail-runs": "p07 lost its source"})
        bad = push(config_repo, {**changed, "pipes/p07.conf.json": entity_json(failing)}, "break p07")
        sesam.reset_log()
        assert (await rec.sync(Trigger.WEBHOOK)).revision == bad
        await settle(rec)
        assert [(n.event, n.revision) for n in told.notices] == [("rolled-back", bad)]
        assert "p07 lost its source" in (rec.store.get_state("node").suspended_reason or "")

    with_sesam(scenario)


def test_rollback_that_is_degraded_too_stops_and_alerts(
    with_sesam: Callable[[Scenario], None], told: Told, config_repo: WorkRepo, sesam: SesamEmulator,
):
    async def scenario(rec: Reconciler) -> None:
        good = (await rec.sync(Trigger.MANUAL)).revision
        await settle(rec)
        sesam.healthy = False  # the node goes bad: whatever is deployed now is degraded
        bad = push(config_repo, {"pipes/extra.conf.json": entity_json(pipe("extra"))}, "add a pipe")
        await rec.sync(Trigger.WEBHOOK)
        await settle(rec)
        state = rec.store.get_state("node")
        assert [n.event for n in told.notices] == ["rolled-back", "rollback-degraded"]
        assert state.suspended and state.pinned_revision == good
        reason = state.suspended_reason or ""
        assert "degraded too" in reason and "node health" in reason
        rollbacks = [r for r in rec.store.history("node", 20) if r.trigger == "rollback"]
        assert len(rollbacks) == 1  # never a second automatic rollback
        assert bad in state.health["rolled_back"]

    with_sesam(scenario)


def test_a_revision_is_rolled_back_automatically_only_once(
    with_sesam: Callable[[Scenario], None], told: Told, config_repo: WorkRepo,
):
    async def scenario(rec: Reconciler) -> None:
        await rec.sync(Trigger.MANUAL)
        await settle(rec)
        failing = pipe("orders", metadata={"emulator-fail-runs": True})
        bad = push(config_repo, {"pipes/orders.conf.json": entity_json(failing)}, "break orders")
        await rec.sync(Trigger.WEBHOOK)
        await settle(rec)
        rec.resume()  # without fixing: the branch head is the bad revision still
        assert (await rec.sync(Trigger.MANUAL)).revision == bad
        await settle(rec)
        state = rec.store.get_state("node")
        assert state.suspended and state.pinned_revision is None and state.last_synced_revision == bad
        assert "not rolled back a second time" in (state.suspended_reason or "")
        assert [n.event for n in told.notices] == ["rolled-back", "degraded"]
        assert len([r for r in rec.store.history("node", 20) if r.trigger == "rollback"]) == 1

    with_sesam(scenario)


def test_degraded_without_rollback_policy_is_recorded_and_told_once(
    app_env: dict[str, str], told: Told, config_repo: WorkRepo,
):
    async def main() -> None:
        env = {**app_env, "HEALTH_WINDOW": str(WINDOW), "HEALTH_POLL": str(POLL)}
        async with reconciler_for(env, told) as rec:
            await rec.sync(Trigger.MANUAL)
            await settle(rec)
            # the node's error text quotes a credential: it is evidence, and still never recorded
            failing = pipe("customers", dataset="crm", metadata={"emulator-fail-runs": f"login {SESAM_JWT} refused"})
            bad = push(config_repo, {"pipes/customers.conf.json": entity_json(failing)}, "break customers")
            await rec.sync(Trigger.WEBHOOK)
            await settle(rec)
            state = rec.store.get_state("node")
            assert not state.suspended and state.last_synced_revision == bad  # left in place
            assert state.health["state"] == "degraded" and state.health["revision"] == bad
            assert any("login *** refused" in e for e in state.health["evidence"])
            assert [n.event for n in told.notices] == ["degraded"]
            recorded = json.dumps([state.health, [r.details for r in rec.store.history("node", 5)]])
            assert SESAM_JWT not in recorded and SESAM_JWT not in repr(told.notices)

    asyncio.run(main())


# --------------------------------------------------------------------------- Marathon
@pytest.fixture
def mara() -> Iterator[MarathonEmulator]:
    emulator = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=0.05)
    with emulator.serve() as server:
        emulator.url = server.url  # type: ignore[attr-defined]
        yield emulator


WEB = {"id": "/web", "cmd": "serve", "instances": 2,
       "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/health", "portIndex": 0}]}


def test_marathon_tasks_turning_unhealthy_are_the_evidence(
    tmp_path: Path, git_server: GitHttpServer, mara: MarathonEmulator, told: Told,
):
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "shop.git", tmp_path / "shop", branch="master")
    repo.write({"specs/web.json": json.dumps(WEB)})
    repo.commit("web")
    repo.push()
    env = base_env(GIT_URL=git_server.url_for("acme/shop.git"), GITHUB_TOKEN=GIT_TOKEN, TARGET="marathon",
                   MARATHON_URL=mara.url, MARATHON_TOKEN=MARATHON_TOKEN, APP_NAME="shop",  # type: ignore[attr-defined]
                   STATE_DIR=str(tmp_path / "state"), HEALTH_WINDOW=str(WINDOW), HEALTH_POLL=str(POLL))

    async def main() -> None:
        async with reconciler_for(env, told) as rec:
            assert (await rec.sync(Trigger.MANUAL)).result is Result.SYNCED
            await settle(rec)
            assert rec.store.get_state("shop").health["state"] == "healthy"
            breaking = {**WEB, "env": {"AUTODEPLOYER_EMULATOR_UNHEALTHY_AFTER": "0.3"}}
            bad = push(repo, {"specs/web.json": json.dumps(breaking)}, "web breaks after a while")
            assert (await rec.sync(Trigger.WEBHOOK)).result is Result.SYNCED  # healthy when the deployment ended
            await settle(rec)
            health = rec.store.get_state("shop").health
            assert health["state"] == "degraded" and health["revision"] == bad
            evidence = " | ".join(health["evidence"])
            assert "app /web: 2 task(s) unhealthy (tasksUnhealthy)" in evidence
            assert "last task failure TASK_KILLED" in evidence
            assert [n.event for n in told.notices] == ["degraded"]

    asyncio.run(main())


# --------------------------------------------------------------------------- command target
def test_health_command_decides_with_the_deploy_environment(
    tmp_path: Path, app_env: dict[str, str], config_repo: WorkRepo, told: Told,
):
    flag, seen = tmp_path / "broken", tmp_path / "revisions"
    env = {**app_env, "TARGET": "command", "DEPLOY_COMMAND": "true", "COMMAND_SHELL": "true",
           "HEALTH_COMMAND": f'echo "$AUTODEPLOYER_REVISION" >> {seen}; test ! -e {flag}',
           "HEALTH_WINDOW": "0.6", "HEALTH_POLL": str(POLL), "ROLLBACK_ON": "degraded"}

    async def main() -> None:
        async with reconciler_for(env, told) as rec:
            good = (await rec.sync(Trigger.MANUAL)).revision
            await settle(rec)
            assert rec.store.get_state("node").health["state"] == "healthy"
            assert set(seen.read_text().split()) == {good}
            flag.write_text("x")
            bad = push(config_repo, {"pipes/new.conf.json": entity_json(pipe("new"))}, "new pipe")
            await rec.sync(Trigger.WEBHOOK)
            await rec.health.wait()
            health = rec.store.get_state("node").health
            assert health["state"] == "degraded" and health["evidence"] == ["HEALTH_COMMAND exited with code 1"]
            flag.unlink()  # the rollback is healthy again
            await settle(rec)
            state = rec.store.get_state("node")
            assert state.pinned_revision == good and state.suspended
            assert state.health["state"] == "healthy" and state.health["revision"] == good
            assert [(n.event, n.revision) for n in told.notices] == [("rolled-back", bad)]

    asyncio.run(main())


# --------------------------------------------------------------------------- store and configuration
def test_annotate_merges_one_key_into_the_row_details(tmp_path: Path):
    store = SQLiteStore(tmp_path / "history.sqlite3")
    attempt = store.begin("app", "manual", "a" * 40, time.time())
    store.finish(attempt, SyncResult("app", Trigger.MANUAL, Result.SYNCED, revision="a" * 40,
                                     details={"commit": {"message": "m"}}))
    store.annotate(attempt, "health", {"state": "checking"})
    store.annotate(attempt, "other", 1)
    store.annotate(attempt, "health", {"state": "healthy"})
    store.annotate(10_000, "health", {"state": "healthy"})  # an unknown row: nothing happens
    row = store.history("app", 5)[0]
    assert row.details == {"commit": {"message": "m"}, "health": {"state": "healthy"}, "other": 1}
    store.close()


def test_annotate_on_postgresql(pg_url: str):
    from autodeployer.store.postgres import PostgresStore

    from ..scale.pgserver import PASSWORD

    store = PostgresStore(pg_url, password=PASSWORD, replica_id="r1")
    attempt = store.begin("app", "manual", "b" * 40, time.time())
    store.finish(attempt, SyncResult("app", Trigger.MANUAL, Result.SYNCED, revision="b" * 40, details={"k": 1}))
    store.annotate(attempt, "health", {"state": "checking"})
    store.annotate(attempt, "health", {"state": "degraded", "evidence": ["pipe x: failed"]})
    row = store.history("app", 1)[0]
    assert row.details["k"] == 1 and row.details["health"] == {"state": "degraded", "evidence": ["pipe x: failed"]}
    store.close()


def test_health_policy_from_yaml(tmp_path: Path, app_env: dict[str, str]):
    config = tmp_path / "apps.yaml"
    config.write_text(f"""
apps:
  - name: prod
    source: {{url: {app_env["GIT_URL"]}}}
    target: {{kind: command, command: "true", health_command: "curl -fsS http://127.0.0.1:1/health"}}
    policy: {{health_window: 30, health_poll: 2, rollback_on: degraded}}
""")
    app = load_config({**app_env, "AUTODEPLOYER_CONFIG": str(config)}).apps[0]
    assert (app.policy.health_window, app.policy.health_poll, app.policy.rollback_on) == (30.0, 2.0, "degraded")
    assert app.target.health_command == "curl -fsS http://127.0.0.1:1/health"  # type: ignore[union-attr]
    config.write_text(config.read_text().replace("rollback_on: degraded", "rollback_on: sometimes"))
    with pytest.raises(ConfigError, match="rollback_on"):
        load_config({**app_env, "AUTODEPLOYER_CONFIG": str(config)})


def test_health_policy_from_env(app_env: dict[str, str]):
    policy = load_config({**app_env, "HEALTH_WINDOW": "7", "ROLLBACK_ON": "degraded"}).apps[0].policy
    assert (policy.health_window, policy.health_poll, policy.rollback_on) == (7.0, 5.0, "degraded")
    assert load_config(app_env).apps[0].policy.rollback_on == "never"
    with pytest.raises(ConfigError, match="ROLLBACK_ON"):
        load_config({**app_env, "ROLLBACK_ON": "always"})
    with pytest.raises(ConfigError, match="HEALTH_WINDOW"):
        load_config({**app_env, "HEALTH_WINDOW": "-1"})
