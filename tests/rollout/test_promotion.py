"""Promotion: prod deploys only what test runs verified (and healthy) for `soak`; a revision failed or
rolled back on test never reaches prod. Two apps of one YAML file, one store (as two replicas share
one), real Git over loopback, in-process FakeTargets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from autodeployer.config.loader import load_config
from autodeployer.errors import ConfigError
from autodeployer.model import Reason, Result, Trigger
from autodeployer.reconcile import Reconciler
from autodeployer.rollout.promotion import check_graph, promotion_hold
from autodeployer.runtime import build_runtime
from autodeployer.scheduling import Scheduler
from autodeployer.store import AppState
from autodeployer.store.base import HistoryRow
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

from ..fakes import FakeTarget, MemoryStore
from ..helpers import GIT_TOKEN

R = "a" * 40
X = "b" * 40


# --------------------------------------------------------------------------- the rule
def row(revision: str, result: str, finished: float) -> HistoryRow:
    return HistoryRow(1, "test", "poll", revision, finished - 1, finished, 1.0, result, "", "", None, [], [],
                      False, {})


def synced(**fields: object) -> AppState:
    return AppState("test", **{"last_synced_revision": R, "last_revision": R, "last_result": "synced",
                               "last_success_at": 1000.0, **fields})  # type: ignore[arg-type]


def test_waits_for_the_soak_then_lets_the_revision_through() -> None:
    rows = [row(R, "no-change", 1090.0), row(R, "synced", 1000.0), row(X, "synced", 900.0)]
    hold = promotion_hold("test", synced(last_success_at=1090.0), R, 600, 1180.0, rows)
    assert hold is not None and hold.by == "promotion"
    # live since its first verified sync (a later no-change sync does not restart the soak)
    assert hold.reason == "waiting for test: aaaaaaa live for 3 min of 10 min" and hold.until == 1600.0
    assert promotion_hold("test", synced(), R, 600, 1600.0, rows) is None


@pytest.mark.parametrize(("state", "reason"), [
    (synced(suspended=True, suspended_reason="rolled back to 1234567"), "it is suspended (rolled back to 1234567)"),
    (synced(last_result="failed", last_revision=X), "its last attempt (bbbbbbb) failed"),
    (synced(last_result="refused", last_revision=X), "its last attempt (bbbbbbb) refused"),
    (synced(last_synced_revision=X), "aaaaaaa is not the revision verified there"),
    (synced(health={"revision": R, "state": "degraded", "since": 1.0}), "aaaaaaa is degraded there"),
    (synced(health={"revision": R, "state": "checking", "since": 1.0, "evidence": ["deployment running"]}),
     "aaaaaaa is checking there"),
])
def test_never_promotes_what_is_not_good_upstream(state: AppState, reason: str) -> None:
    hold = promotion_hold("test", state, R, 0, 10_000.0, [row(R, "synced", 1000.0)])
    assert hold is not None and hold.reason == f"waiting for test: {reason}" and hold.until is None


def test_health_since_starts_the_soak_when_there_is_a_health_check() -> None:
    state = synced(health={"revision": R, "state": "healthy", "since": 1500.0})
    hold = promotion_hold("test", state, R, 600, 1560.0, [row(R, "synced", 1000.0)])
    assert hold is not None and hold.reason == "waiting for test: aaaaaaa healthy for 60 s of 10 min"


def test_a_clean_health_check_counts_up_to_its_last_look() -> None:
    """Healthy so far: a soak shorter than the health window promotes before the window's verdict."""
    rows = [row(R, "synced", 1000.0)]
    watching = {"revision": R, "state": "checking", "since": 1000.0, "evidence": []}
    early = promotion_hold("test", synced(health={**watching, "checked_at": 1002.0}), R, 3, 1004.0, rows)
    assert early is not None and early.reason == "waiting for test: aaaaaaa healthy so far for 2 s of 3 s"
    assert early.until is None  # the soak's end has passed: the next look decides, at the next poll
    assert promotion_hold("test", synced(health={**watching, "checked_at": 1003.5}), R, 3, 1004.0, rows) is None
    young = promotion_hold("test", synced(health={**watching, "checked_at": 1001.0}), R, 3, 1001.5, rows)
    assert young is not None and young.until == 1003.0


def test_the_graph_is_checked() -> None:
    assert check_graph({"test": None, "prod": "test"}) is None
    assert "no app named 'tset'" in (check_graph({"test": None, "prod": "tset"}) or "")
    assert "promotion cycle a -> b -> a" in (check_graph({"a": "b", "b": "a"}) or "")
    assert "promotion cycle a -> a" in (check_graph({"a": "a"}) or "")


# --------------------------------------------------------------------------- configuration
def yaml_for(url: str, prod_policy: str) -> str:
    return f"""
apps:
  - name: test
    source: {{url: "{url}", token: "{GIT_TOKEN}"}}
    target: {{kind: sesam, api_url: "http://127.0.0.1:1/api", jwt: jwt-test-123}}
    policy: {{interval: 0.2}}
  - name: prod
    source: {{url: "{url}", token: "{GIT_TOKEN}"}}
    target: {{kind: sesam, api_url: "http://127.0.0.1:1/api", jwt: jwt-prod-123}}
    policy: {prod_policy}
"""


@pytest.mark.parametrize(("policy", "message"), [
    ("{promote_from: tset}", r"apps\[prod\]\.policy\.promote_from: no app named 'tset' \(known: prod, test\)"),
    ("{promote_from: prod}", r"apps\[prod\]\.policy\.promote_from: promotion cycle prod -> prod"),
    ("{promote_from: test, soak: soon}", r"apps\[prod\]\.policy\.soak: .*expected seconds or a duration"),
])
def test_a_wrong_promotion_stops_the_start(tmp_path: Path, policy: str, message: str) -> None:
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(yaml_for("https://github.com/acme/config.git", policy))
    with pytest.raises(ConfigError, match=message):
        load_config({"STATE_DIR": str(tmp_path / "state")}, config_file)


def test_soak_is_read_as_a_duration(tmp_path: Path) -> None:
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(yaml_for("https://github.com/acme/config.git", "{promote_from: test}"))
    assert load_config({"STATE_DIR": str(tmp_path / "s")}, config_file).app("prod").policy.soak == 600
    config_file.write_text(yaml_for("https://github.com/acme/config.git", "{promote_from: test, soak: 1h30m}"))
    assert load_config({"STATE_DIR": str(tmp_path / "s")}, config_file).app("prod").policy.soak == 5400


# --------------------------------------------------------------------------- two apps, one store
@asynccontextmanager
async def chain(tmp_path: Path, url: str, soak: str) -> AsyncIterator[tuple[Reconciler, Reconciler, MemoryStore]]:
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(yaml_for(url, f"{{promote_from: test, soak: {soak}, interval: 0.2}}"))
    config = load_config({"STATE_DIR": str(tmp_path / "state"), "COMMIT_STATUS": "false"}, config_file)
    store = MemoryStore()
    runtime = build_runtime(config, store=store)
    for rec in runtime.reconcilers.values():
        await rec.target.aclose()
        rec.target = FakeTarget()
    try:
        yield runtime.reconcilers["test"], runtime.reconcilers["prod"], store
    finally:
        await runtime.aclose()


def test_prod_waits_for_the_soak_then_follows_test(git_server: GitHttpServer, config_repo: WorkRepo,
                                                    tmp_path: Path) -> None:
    async def scenario() -> None:
        async with chain(tmp_path, git_server.url_for("acme/config.git"), "2s") as (test, prod, store):
            first = await prod.sync(Trigger.POLL)  # test has deployed nothing yet
            assert first.result is Result.HELD and first.revision is None
            assert first.summary == "waiting for test: nothing deployed there yet"
            assert (await test.sync(Trigger.POLL)).result is Result.SYNCED
            held = await prod.sync(Trigger.POLL)
            assert held.result is Result.HELD and held.reason is Reason.HELD and held.revision == config_repo.head
            assert held.summary.startswith(f"waiting for test: {config_repo.head[:7]} live for ")
            assert held.summary.endswith(" of 2 s") and not prod.target.applied  # type: ignore[attr-defined]
            assert held.wake_at is not None and 0 < held.wake_at - time.time() <= 2
            rows = len(store.history("prod"))
            assert (await prod.sync(Trigger.POLL)).result is Result.HELD and len(store.history("prod")) == rows
            await asyncio.sleep(held.wake_at - time.time() + 0.05)
            deployed = await prod.sync(Trigger.POLL)
            assert deployed.result is Result.SYNCED and deployed.revision == config_repo.head
            assert prod.target.live == test.target.live  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_revision_failing_on_test_never_reaches_prod(git_server: GitHttpServer, config_repo: WorkRepo,
                                                        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with chain(tmp_path, git_server.url_for("acme/config.git"), "0") as (test, prod, store):
            good = config_repo.head
            assert (await test.sync(Trigger.POLL)).result is Result.SYNCED
            assert (await prod.sync(Trigger.POLL)).result is Result.SYNCED
            config_repo.write({"pipes/bad.conf.json": '{"_id": "bad"}'})
            config_repo.commit("a change test rejects")
            config_repo.push()
            test.target.fail_with = "pipe 'bad': rejected"  # type: ignore[attr-defined]
            assert (await test.sync(Trigger.POLL)).result is Result.FAILED
            for _ in range(3):
                result = await prod.sync(Trigger.POLL, force=True)
                assert result.revision == good and len(prod.target.applied) == 1  # type: ignore[attr-defined]
            assert store.get_state("prod").last_synced_revision == good
            # refused on test: the same
            test.target.fail_with = None  # type: ignore[attr-defined]
            test.target.refuse_with = "pipes/bad.conf.json: invalid"  # type: ignore[attr-defined]
            assert (await test.sync(Trigger.MANUAL, force=True)).result is Result.REFUSED
            assert (await prod.sync(Trigger.POLL, force=True)).revision == good
            assert len(prod.target.applied) == 1  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_rolled_back_upstream_holds_prod(git_server: GitHttpServer, config_repo: WorkRepo, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with chain(tmp_path, git_server.url_for("acme/config.git"), "0") as (test, prod, store):
            first = config_repo.head
            assert (await test.sync(Trigger.POLL)).result is Result.SYNCED
            assert (await prod.sync(Trigger.POLL)).result is Result.SYNCED
            revisions = []
            for name in ("second", "third"):
                config_repo.write({f"pipes/{name}.conf.json": f'{{"_id": "{name}"}}'})
                config_repo.commit(name)
                config_repo.push()
                revisions.append(config_repo.head)
                assert (await test.sync(Trigger.MANUAL, force=True)).result is Result.SYNCED
            assert (await test.rollback(revisions[0])).result is Result.SYNCED  # test: suspended, pinned
            held = await prod.sync(Trigger.POLL)
            assert held.result is Result.HELD and held.revision == revisions[0]
            assert held.summary.startswith("waiting for test: it is suspended (rolled back to ")
            assert store.get_state("prod").last_synced_revision == first
            assert len(prod.target.applied) == 1  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_sync_of_test_wakes_prod_at_once(git_server: GitHttpServer, config_repo: WorkRepo, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with chain(tmp_path, git_server.url_for("acme/config.git"), "0") as (test, prod, _store):
            scheduler = Scheduler([test, prod])
            hook = scheduler.workers["test"].on_result
            assert hook is not None and scheduler.workers["prod"].on_result is None
            hook(await test.sync(Trigger.POLL))
            assert scheduler.workers["prod"].pending is Trigger.POLL

    asyncio.run(scenario())
