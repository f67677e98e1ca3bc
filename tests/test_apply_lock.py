"""One apply at a time per app across processes: the service and a CLI run on the same STATE_DIR.

Both take the app's lock (a flock in STATE_DIR/locks) around every sync: the CLI waits for the
service's sync to end, the service's worker retries after the CLI's. A node that counts the uploads
in flight shows they never overlap. And a rollback that fails says so, in its output, its exit code
and the app's state.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autodeployer.store import SQLiteStore
from autodeployer.store.locks import AppLock
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .conftest import ServiceFactory
from .helpers import SESAM_JWT, entity_json, history_rows, pipe, run_cli, stripped, wait_for

DELAY = 2.5  # seconds per /api/config request while the node is slow


class UploadsInFlight:
    """ASGI wrapper of a node: how many uploads (PUT) it is handling at once, and the most ever."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now = 0
        self.most = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "PUT":
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
def counted_node() -> Iterator[tuple[SesamEmulator, UploadsInFlight, str]]:
    node = SesamEmulator(jwt=SESAM_JWT)
    counter = UploadsInFlight(node.app)
    server = LoopbackServer(counter).start()
    try:
        yield node, counter, server.url + "/api"
    finally:
        server.stop()


def commit(repo: WorkRepo, name: str) -> str:
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push()
    return repo.head


def cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "autodeployer", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, output


def test_service_and_cli_never_apply_the_same_app_at_once(service: ServiceFactory, app_env: dict[str, str],
                                                          config_repo: WorkRepo, counted_node: Any,
                                                          state_dir: Path):
    node, uploads, api_url = counted_node
    env = {**app_env, "SESAM_API_URL": api_url}
    svc = service({**env, "SYNC_INTERVAL": "0.5"})
    first = config_repo.head
    wait_for(lambda: "orders" in stripped(node.entities()), timeout=30, what="first sync")

    # `sync` from the CLI while the service's poll of a new commit is in flight
    node.set_delay(DELAY, "/api/config")
    reads = node.count("GET", "/api/config")
    later = commit(config_repo, "later")
    wait_for(lambda: node.count("GET", "/api/config") > reads, timeout=30, what="the service's sync in flight")
    code, output = finish(cli(env, "sync"))
    assert code == 0, output
    assert "later" in stripped(node.entities())

    # `rollback` from the CLI while the service's poll of another commit is in flight
    reads = node.count("GET", "/api/config")
    commit(config_repo, "newest")
    wait_for(lambda: node.count("GET", "/api/config") > reads, timeout=30, what="the service's sync in flight")
    code, output = finish(cli(env, "rollback", "--app", "node", "--to", first))
    assert code == 0, output
    assert f"rolled back to {first[:12]}" in output
    assert "later" not in stripped(node.entities()) and "newest" not in stripped(node.entities())

    # `resume` from the CLI deploys the head; the service follows it again afterwards
    code, output = finish(cli(env, "resume", "--app", "node"))
    assert code == 0, output
    assert "newest" in stripped(node.entities())
    node.set_delay(0, "/api/config")
    commit(config_repo, "after-resume")
    wait_for(lambda: "after-resume" in stripped(node.entities()), timeout=30, what="the service syncing again")

    assert uploads.most == 1, f"{uploads.most} uploads to the node were in flight at once"
    applied = [r for r in history_rows(state_dir) if r["result"] == "synced"]
    assert len(applied) >= 4 and later
    spans = sorted((r["started_at"], r["finished_at"]) for r in applied)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"two applies of the app overlapped: {spans}"
    log = svc.log()
    assert "is being synced by pid" in log  # the service's worker met the CLI's lock and retried
    # ... every second, but said so once per holder, not once per retry
    holders = re.findall(r"is being synced by pid (\d+)", log)
    assert max(holders.count(pid) for pid in set(holders)) <= 2, log


def test_a_held_lock_names_its_holder_and_is_freed_when_it_dies(tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import asyncio, sys; from pathlib import Path; "
         "from autodeployer.store.locks import AppLock; lock = AppLock.in_state_dir(Path(sys.argv[1]), 'a/b'); "
         "assert asyncio.run(lock.acquire(5)); print('held', flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = AppLock.in_state_dir(tmp_path, "a/b")
        assert lock.path == tmp_path / "locks" / "a_b.lock"
        assert not asyncio.run(lock.acquire(0.3))
        assert lock.busy_message("a/b") == (f"app a/b is being synced by pid {holder.pid}; retry, or use "
                                            "--server URL to ask the running service")
    finally:
        holder.kill()  # a killed holder leaves nothing locked
        holder.wait()
    assert asyncio.run(lock.acquire(2))
    assert lock.try_acquire()  # re-entrant: a CLI rollback holds it across the pin and the sync
    lock.release()
    lock.release()
    other = AppLock.in_state_dir(tmp_path, "a/b")
    assert other.try_acquire()
    other.release()


def test_a_failed_rollback_says_so(app_env: dict[str, str], config_repo: WorkRepo, sesam: SesamEmulator,
                                   state_dir: Path):
    first = config_repo.head
    assert run_cli(app_env, "sync").returncode == 0
    commit(config_repo, "later")
    assert run_cli(app_env, "sync").returncode == 0
    sesam.set_token("rotated-elsewhere")  # the node now refuses the deployer's token
    done = run_cli(app_env, "rollback", "--app", "node", "--to", first)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"node: rollback to {first[:12]} failed: " in done.stdout
    assert "rolled back to" not in done.stdout + done.stderr
    state = SQLiteStore.in_state_dir(state_dir).get_state("node")
    assert state.suspended and state.pinned_revision == first and state.last_result == "failed"
    assert state.suspended_reason is not None and state.suspended_reason.startswith(f"rollback to {first[:12]} failed")
    assert state.last_synced_revision == config_repo.head  # still live: what the status shows
    assert "later" in stripped(sesam.entities())
