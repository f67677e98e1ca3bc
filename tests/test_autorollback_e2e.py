"""Automatic rollback end to end: `autodeployer run` as a real process, real Git over loopback, the
Sesam and Marathon emulators switched bad by the configuration pushed (as a real change would break a
real node), a loopback notification receiver and the GitHub emulator for commit statuses."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import ADMIN_TOKEN, GIT_TOKEN, MARATHON_TOKEN, base_env, entity_json, history_rows, pipe, wait_for
from .test_notify import Receiver

WINDOW, POLL = 2.0, 0.3
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def notified() -> Iterator[Receiver]:
    """The loopback receiver of NOTIFY_URL (test_notify's), recording every POST."""
    rec = Receiver()
    with rec.server:
        yield rec


def state_of(state_dir: Path, app: str) -> dict[str, Any]:
    """The app's state as the service stored it (read straight from its SQLite file)."""
    db = sqlite3.connect(str(state_dir / "history.sqlite3"))
    try:
        row = db.execute("SELECT data FROM app_state WHERE app = ?", (app,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row else {}


def health_of(state_dir: Path, app: str) -> dict[str, Any]:
    return state_of(state_dir, app).get("health") or {}


def push(repo: WorkRepo, files: dict[str, str | None], message: str) -> str:
    repo.write(files)
    repo.commit(message)
    repo.push()
    return repo.head


def rollout_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"SYNC_INTERVAL": "0.3", "HEALTH_WINDOW": str(WINDOW), "HEALTH_POLL": str(POLL),
            "ROLLBACK_ON": "degraded", "NOTIFY_URL": receiver.url + "/notify", "ADMIN_TOKEN": ADMIN_TOKEN, **extra}


def rolled_back_in_time(state_dir: Path, app: str, bad: str) -> float:
    """Seconds from the bad deploy's end to the start of its automatic rollback (from the history rows)."""
    rows = history_rows(state_dir, app)
    deployed = next(r for r in rows if r["revision"] == bad and r["trigger"] != "rollback")
    rollback = next(r for r in rows if r["trigger"] == "rollback" and r["id"] > deployed["id"])
    seconds = float(rollback["started_at"]) - float(deployed["finished_at"])
    print(f"{app}: automatic rollback started {seconds:.2f} s after the bad deploy was verified")  # the figure
    return seconds


def resume_and_follow(svc: Any, state_dir: Path, app: str, good_next: str) -> None:
    """`resume` through the API; the next push then deploys and is healthy."""
    assert httpx.post(f"{svc.url}/api/apps/{app}/resume", headers=AUTH).status_code == 202
    wait_for(lambda: health_of(state_dir, app).get("revision") == good_next
             and health_of(state_dir, app).get("state") == "healthy", timeout=WINDOW + 15, what="next push healthy")
    state = state_of(state_dir, app)
    assert not state["suspended"] and state["pinned_revision"] is None
    assert state["last_synced_revision"] == good_next


def test_sesam_pipe_failing_after_a_push_is_rolled_back_once(
    service, app_env: dict[str, str], config_repo: WorkRepo, sesam: SesamEmulator, github: GitHubEmulator,
    notified: Receiver, state_dir: Path,
):
    env = {**app_env, **rollout_env(notified, GITHUB_API_URL=github.url, HEAD_CHECK="git")}  # type: ignore[attr-defined]
    good = config_repo.head
    svc = service(env)
    wait_for(lambda: health_of(state_dir, "node").get("state") == "healthy", timeout=WINDOW + 15, what="healthy")

    failing = pipe("orders", metadata={"emulator-fail-runs": "source table orders is gone"})
    bad = push(config_repo, {"pipes/orders.conf.json": entity_json(failing)}, "orders reads a dropped table")
    wait_for(lambda: notified.events(), timeout=WINDOW + 15, what="the notification")
    state = state_of(state_dir, "node")
    assert state["suspended"] and state["pinned_revision"] == good and state["last_synced_revision"] == good
    assert "automatic rollback" in state["suspended_reason"]
    assert "pipe orders" in state["suspended_reason"] and "source table orders is gone" in state["suspended_reason"]
    assert rolled_back_in_time(state_dir, "node", bad) <= WINDOW + POLL
    assert "metadata" not in {e["_id"]: e for e in sesam.entities()}["orders"]

    statuses = lambda: github.statuses("acme", "config", bad)  # noqa: E731
    wait_for(lambda: any(s["state"] == "failure" for s in statuses()), what="the bad revision's failure status")
    failure = next(s for s in statuses() if s["state"] == "failure")
    assert failure["description"].startswith("rolled back: pipe orders: run at ") and len(failure["description"]) <= 140
    bad_row = next(r for r in history_rows(state_dir, "node") if r["revision"] == bad)
    assert json.loads(bad_row["details"])["health"]["state"] == "degraded"
    shown = httpx.get(f"{svc.url}/api/apps/node").json()
    assert shown["status"] == "suspended" and shown["health"]["revision"] == good  # the rollback is watched now
    assert set(shown["health"]) == {"revision", "state", "since", "checked_at", "evidence"}
    api_row = next(r for r in httpx.get(f"{svc.url}/api/apps/node/history").json()["history"] if r["revision"] == bad)
    assert api_row["details"]["health"]["state"] == "degraded"
    assert "Health" in httpx.get(f"{svc.url}/apps/node").text

    fixed = push(config_repo, {"pipes/orders.conf.json": entity_json(pipe("orders", dataset="orders2"))}, "fix")
    time.sleep(1.0)  # suspended: the push waits for resume
    assert state_of(state_dir, "node")["last_synced_revision"] == good
    resume_and_follow(svc, state_dir, "node", fixed)
    assert [body["event"] for body in notified.bodies()] == ["rolled-back"]  # exactly one notification
    assert notified.bodies()[0]["revision"] == bad and notified.bodies()[0]["rollback_to"] == good


# --------------------------------------------------------------------------- Marathon
WEB = {"id": "/web", "cmd": "serve", "instances": 2,
       "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/health", "portIndex": 0}]}


@pytest.fixture
def mara() -> Iterator[MarathonEmulator]:
    emulator = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=0.05)
    with emulator.serve() as server:
        emulator.url = server.url  # type: ignore[attr-defined]
        yield emulator


def test_marathon_app_turning_unhealthy_is_rolled_back_once(
    service, tmp_path: Path, git_server: GitHttpServer, mara: MarathonEmulator, notified: Receiver,
):
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "shop.git", tmp_path / "shop", branch="master")
    good = push(repo, {"specs/web.json": json.dumps(WEB)}, "web")
    state_dir = tmp_path / "state"
    env = base_env(GIT_URL=git_server.url_for("acme/shop.git"), GITHUB_TOKEN=GIT_TOKEN, TARGET="marathon",
                   MARATHON_URL=mara.url, MARATHON_TOKEN=MARATHON_TOKEN, APP_NAME="shop",  # type: ignore[attr-defined]
                   STATE_DIR=str(state_dir), COMMIT_STATUS="false", **rollout_env(notified))
    svc = service(env)
    wait_for(lambda: health_of(state_dir, "shop").get("state") == "healthy", timeout=WINDOW + 15, what="healthy")

    breaking = {**WEB, "cmd": "serve --new-cache", "env": {"AUTODEPLOYER_EMULATOR_UNHEALTHY_AFTER": "0.5"}}
    bad = push(repo, {"specs/web.json": json.dumps(breaking)}, "new cache")
    wait_for(lambda: notified.events(), timeout=WINDOW + 15, what="the notification")
    state = state_of(state_dir, "shop")
    assert state["suspended"] and state["pinned_revision"] == good
    assert "app /web: 2 task(s) unhealthy" in state["suspended_reason"]
    assert rolled_back_in_time(state_dir, "shop", bad) <= WINDOW + POLL
    assert mara.apps()["/web"]["cmd"] == "serve"  # the good spec runs again
    assert not mara.apps()["/web"].get("env")

    fixed = push(repo, {"specs/web.json": json.dumps({**WEB, "cmd": "serve --cache"})}, "cache, fixed")
    resume_and_follow(svc, state_dir, "shop", fixed)
    assert notified.events() == ["rolled-back"]
    assert mara.apps()["/web"]["cmd"] == "serve --cache"
