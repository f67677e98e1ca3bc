"""Admin actions racing a slow sync, against the real service over HTTP, on SQLite and on PostgreSQL.

The Sesam emulator delays every /api/config request, so a sync (read, upload, read back) takes
seconds; each admin action is sent while one is in flight. Operator intent must survive the sync's
end: the sync records only its own fields (result, revision, timestamps, failures), never
``suspended``, ``suspended_reason`` or ``pinned_revision``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .conftest import Service, ServiceFactory
from .helpers import ADMIN_TOKEN, entity_json, pipe, stripped, wait_for
from .scale.pgserver import PASSWORD

DELAY = 2.0  # seconds per /api/config request: a sync takes about three of them


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables that select the store under test (none: SQLite in STATE_DIR)."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("pg_url")
    return {"STORE_URL": url, "STORE_PASSWORD": PASSWORD, "REPLICA_ID": "r1", "HEARTBEAT_INTERVAL": "1"}


@pytest.fixture
def start(service: ServiceFactory, app_env: dict[str, str], store_env: dict[str, str]) -> Any:
    def run(**extra: str) -> Service:
        return service({**app_env, **store_env, "SYNC_INTERVAL": "1", "ADMIN_TOKEN": ADMIN_TOKEN, **extra})
    return run


def admin(svc: Service, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{svc.url}/api/apps/node/{action}", json=body,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


def app(svc: Service) -> dict[str, Any]:
    return dict(httpx.get(f"{svc.url}/api/apps/node", timeout=10).json())


def commit(repo: WorkRepo, name: str) -> str:
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push()
    return repo.head


def on_node(sesam: SesamEmulator, name: str) -> bool:
    return name in stripped(sesam.entities())


def wait_live(svc: Service, revision: str, timeout: float = 40) -> dict[str, Any]:
    return wait_for(lambda: (row := app(svc))["live_revision"] == revision and not row["running"] and row,
                    timeout=timeout, interval=0.2, what=f"{revision[:12]} live and recorded")


def wait_in_flight(sesam: SesamEmulator, reads_before: int) -> None:
    """A sync has started talking to the node (its first read is held by the delay)."""
    wait_for(lambda: sesam.count("GET", "/api/config") > reads_before, timeout=30, what="a sync in flight")


def slow_sync_of_a_new_commit(svc: Service, sesam: SesamEmulator, repo: WorkRepo, name: str) -> str:
    """Make the node slow, push a commit and return once the poll that deploys it is in flight."""
    sesam.set_delay(DELAY, "/api/config")
    reads = sesam.count("GET", "/api/config")
    head = commit(repo, name)
    wait_in_flight(sesam, reads)
    return head


def test_suspend_during_the_startup_sync_survives_it(start, sesam: SesamEmulator, config_repo: WorkRepo):
    """The issue's repro: a suspend sent while the start-up sync is in flight."""
    sesam.set_delay(DELAY, "/api/config")
    svc = start()
    wait_in_flight(sesam, 0)
    answer = admin(svc, "suspend")
    assert answer.status_code == 200 and answer.json()["suspended"]
    assert answer.json()["running"] == "startup"  # the race did happen
    first = config_repo.head
    wait_live(svc, first)  # the start-up sync ended and recorded its result
    sesam.set_delay(0, "/api/config")
    commit(config_repo, "after-suspend")
    time.sleep(4)  # several polls
    row = app(svc)
    assert row["suspended"] and row["suspended_reason"] == "suspended through the API"
    assert row["status"] == "suspended" and row["live_revision"] == first
    assert not on_node(sesam, "after-suspend")


def test_rollback_during_a_poll_sync_deploys_the_earlier_commit(start, sesam: SesamEmulator,
                                                                config_repo: WorkRepo):
    svc = start()
    first = wait_live(svc, config_repo.head)["live_revision"]
    later = slow_sync_of_a_new_commit(svc, sesam, config_repo, "later")
    answer = admin(svc, "rollback", {"revision": first})
    assert answer.status_code == 202 and answer.json()["revision"] == first
    assert app(svc)["running"] == "poll"  # the rollback arrived while the poll of `later` ran
    # The poll ends (with `later` on the node), then the rollback runs: `first` is what stays.
    row = wait_live(svc, first, timeout=60)
    assert not on_node(sesam, "later") and on_node(sesam, "orders")
    assert row["suspended"] and row["pinned_revision"] == first and row["last_revision"] == first
    assert row["suspended_reason"].startswith(f"rolled back to {first[:12]}")
    sesam.set_delay(0, "/api/config")
    commit(config_repo, "after-rollback")
    time.sleep(4)
    row = app(svc)
    assert row["suspended"] and row["live_revision"] == first and row["pinned_revision"] == first
    assert not on_node(sesam, "after-rollback") and not on_node(sesam, "later")
    assert later != first


def test_resume_during_a_rollback_sync_follows_the_branch_again(start, sesam: SesamEmulator,
                                                                config_repo: WorkRepo):
    svc = start()
    first = wait_live(svc, config_repo.head)["live_revision"]
    later = commit(config_repo, "later")
    wait_live(svc, later)
    sesam.set_delay(DELAY, "/api/config")
    reads = sesam.count("GET", "/api/config")
    assert admin(svc, "rollback", {"revision": first}).status_code == 202
    wait_in_flight(sesam, reads)
    answer = admin(svc, "resume")
    assert answer.status_code == 202 and not answer.json()["suspended"]
    assert answer.json()["running"] == "rollback"
    row = wait_live(svc, later, timeout=60)  # the rollback ends, then the resume's sync returns to the head
    assert on_node(sesam, "later")
    assert not row["suspended"] and row["pinned_revision"] is None and row["suspended_reason"] is None
    sesam.set_delay(0, "/api/config")
    newest = commit(config_repo, "after-resume")  # auto-sync follows the branch again
    wait_live(svc, newest)
    assert on_node(sesam, "after-resume")


def test_sync_during_a_slow_sync_deploys_the_newest_commit(start, sesam: SesamEmulator, config_repo: WorkRepo):
    svc = start()
    wait_live(svc, config_repo.head)
    slow_sync_of_a_new_commit(svc, sesam, config_repo, "later")
    newest = commit(config_repo, "newest")
    answer = admin(svc, "sync")
    assert answer.status_code == 202
    assert app(svc)["running"] == "poll"
    row = wait_live(svc, newest, timeout=60)
    assert on_node(sesam, "later") and on_node(sesam, "newest") and not row["suspended"]
