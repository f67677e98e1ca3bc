"""`autodeployer run` as a real process: polling, drift, shutdown, outages, and secrecy."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import ALL_SECRETS, SESAM_JWT, entity_json, history_rows, pipe, stripped, wait_for


def test_polling_applies_commits_and_reverts_drift(service, app_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                   state_dir: Path):
    svc = service({**app_env, "SYNC_INTERVAL": "0.3", "DRIFT_INTERVAL": "0.3"})  # a drift check at every poll
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")
    config_repo.write({"pipes/polled.conf.json": entity_json(pipe("polled"))})
    config_repo.commit("polled")
    config_repo.push()
    wait_for(lambda: any(r["revision"] == config_repo.head and r["result"] == "synced"
                         for r in history_rows(state_dir)), what="polled commit synced and verified")

    # someone edits the node by hand (after the sync's verification, so this is drift, not a race)
    live = [e for e in sesam.entities()]
    for entity in live:
        if entity["_id"] == "orders":
            entity["source"] = {"type": "dataset", "dataset": "edited-by-hand"}
    live.append(pipe("hand-made"))
    response = httpx.put(sesam.api_url + "/config", json=live, headers={"Authorization": f"Bearer {SESAM_JWT}"})
    assert response.status_code == 200

    def reverted() -> bool:
        now = stripped(sesam.entities())
        return "hand-made" not in now and now["orders"]["source"]["dataset"] == "src"

    wait_for(reverted, what="drift reverted")
    # the node is reverted by the PUT; the row is written after the verifying read-back
    drift_rows = wait_for(lambda: [r for r in history_rows(state_dir) if r["drift"]], what="drift row")
    assert drift_rows and drift_rows[-1]["result"] == "synced"
    assert drift_rows[-1]["summary"] == "1 changed, 1 removed"
    assert "drift detected" in svc.log()


def test_secrets_stay_out_of_logs_ps_and_state(service, app_env, config_repo: WorkRepo, sesam, state_dir: Path,
                                               git_server):
    env = {**app_env, "SYNC_INTERVAL": "0.1", "LOG_LEVEL": "debug", "LOG_FORMAT": "json"}
    seen: list[str] = []
    stop = threading.Event()

    def sample_ps() -> None:
        while not stop.is_set():
            seen.append(subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_ps)
    sampler.start()
    # pushes are fetched without git processes of ours (sources/smartfetch.py): a slow Git server keeps the
    # start-up clone's `git fetch` alive long enough to be sampled
    git_server.set_delay(0.3)
    try:
        svc = service(env)
        for i in range(5):
            config_repo.write({f"pipes/p{i}.conf.json": entity_json(pipe(f"p{i}"))})
            config_repo.commit(f"p{i}")
            config_repo.push()
            wait_for(lambda i=i: f"p{i}" in stripped(sesam.entities()), what=f"p{i}")
            git_server.set_delay(0)
    finally:
        stop.set()
        sampler.join()
    assert len(seen) > 20
    ours = ("git fetch", "git-remote-http", "git cat-file", "git index-pack")
    assert any(word in s for s in seen for word in ours), "no git child sampled"
    for snapshot in seen:
        for secret in ALL_SECRETS:
            assert secret not in snapshot
    svc.stop()
    log = svc.log()
    assert '"event": "sync finished"' in log
    for secret in ALL_SECRETS:
        assert secret not in log
    for path in state_dir.rglob("*"):
        if path.is_file() and path.name != "webhook-secret":
            data = path.read_bytes()
            for secret in ALL_SECRETS:
                assert secret.encode() not in data, f"{secret} found in {path}"


def test_sigterm_lets_the_inflight_apply_finish(service, app_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                state_dir: Path):
    svc = service({**app_env, "SYNC_INTERVAL": "0.2"})
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")
    sesam.set_delay(1.0, "/api/config")
    sesam.set_delay(1.0, "/api/pipes")  # one new pipe is written on its own (sesam_apply): POST /api/pipes
    puts_before = sesam.put_count
    config_repo.write({"pipes/late.conf.json": entity_json(pipe("late"))})
    config_repo.commit("late")
    config_repo.push()
    # The emulator records a request when it arrives, before the delay: the upload is in flight.
    wait_for(lambda: sesam.put_count > puts_before, what="upload started", timeout=20)
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(30) == 0
    assert "late" in stripped(sesam.entities())
    results = [r["result"] for r in history_rows(state_dir)]
    assert results[-1] == "synced" and "interrupted" not in results


def test_unreachable_repository_is_reported_and_retried(service, app_env, git_server: GitHttpServer,
                                                        config_repo: WorkRepo, sesam, state_dir: Path):
    git_server.down()
    svc = service({**app_env, "SYNC_INTERVAL": "0.2"})
    wait_for(lambda: any(r["result"] == "failed" for r in history_rows(state_dir)), what="failure recorded")
    assert httpx.get(svc.url + "/healthz").status_code == 200
    failed = next(r for r in history_rows(state_dir) if r["result"] == "failed")
    assert "cannot reach" in failed["error"] and "503" in failed["error"]
    git_server.up()
    wait_for(lambda: "orders" in stripped(sesam.entities()), timeout=30, what="recovery after the outage")
    assert svc.proc.poll() is None
