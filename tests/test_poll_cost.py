"""What an idle poll does, counted: the work it no longer does must stay gone (issue 18, CPU per poll).

Real parts throughout: a real Git server over loopback, a real Sesam emulator, the real SQLite store and
reconciler built by `build_runtime`; the counts come from wrapping the store's read, the HTTP client's
request building, and `Path.mkdir` (what each optimisation removed from the hot path).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from autodeployer.config.loader import AppConfig, Config, Policy, ServiceSettings
from autodeployer.model import Result, Trigger
from autodeployer.runtime import build_runtime
from autodeployer.scheduling import AppWorker
from autodeployer.sources.leanpost import LeanPool, LeanPost, proxied
from autodeployer.sources.smarthttp import SmartHttpHead, Unreachable
from autodeployer.sources.spec import SourceSpec
from autodeployer.store import AppState, SQLiteStore
from autodeployer.store.locks import AppLock
from autodeployer.targets import sesam as sesam_target
from autodeployer_emulators.gitserver import GitHttpServer
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, SESAM_JWT


class CountingStore(SQLiteStore):
    """The real SQLite store, counting reads of app state."""

    reads = 0

    def get_state(self, app: str) -> AppState:
        self.reads += 1
        return super().get_state(app)


def app_config(git_server: GitHttpServer, sesam: SesamEmulator) -> AppConfig:
    return AppConfig(
        name="idle",
        source=SourceSpec(url=git_server.url_for("acme/config.git"), branch="master", token=SecretStr(GIT_TOKEN)),
        target=sesam_target.Spec(api_url=sesam.api_url, jwt=SecretStr(SESAM_JWT)),  # type: ignore[attr-defined]
        policy=Policy(interval=3600, drift_interval=0),
    )


def test_an_idle_poll_reads_the_app_state_from_the_store_once(git_server: GitHttpServer, config_repo: Any,
                                                               sesam: SesamEmulator, state_dir: Path) -> None:
    """The worker reads the state before each run (a suspend may have come from the CLI); the reconciler
    takes that read instead of reading again."""
    config = Config(service=ServiceSettings(state_dir=state_dir, commit_status=False), apps=[app_config(git_server,
                                                                                                    sesam)])
    store = CountingStore(state_dir / "history.db")

    async def run() -> tuple[int, Result]:
        runtime = build_runtime(config, store=store)
        try:
            reconciler = runtime.reconcilers["idle"]
            first = await reconciler.sync(Trigger.MANUAL)
            assert first.result is Result.SYNCED, first.error
            worker = AppWorker(reconciler)
            before = store.reads
            state = worker.read_state()
            assert state is not None
            result = await worker._run_once(Trigger.POLL, state)
            assert result is not None
            return store.reads - before, result.result
        finally:
            await runtime.aclose()

    reads, result = asyncio.run(run())
    assert result is Result.NO_CHANGE
    assert reads == 1  # the worker's own read; the reconciler used to read the same row again


def test_ls_refs_request_is_built_once_and_re_sent(git_server: GitHttpServer, config_repo: Any) -> None:
    built: list[str] = []

    class CountingClient(httpx.AsyncClient):
        def build_request(self, method: str, url: Any, **kwargs: Any) -> httpx.Request:
            built.append(f"{method} {url}")
            return super().build_request(method, url, **kwargs)

    async def run() -> list[str | None]:
        async with CountingClient(trust_env=False) as http:
            token = base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()
            header = f"Basic {token}"  # as GitSource sends a token
            head = SmartHttpHead(git_server.url_for("acme/config.git"), http, {"Authorization": header}, 10.0)
            return [await head.head("refs/heads/master") for _ in range(5)]

    git_server.reset_stats()
    heads = asyncio.run(run())
    assert heads == [config_repo.head] * 5
    posts = [r for r in git_server.requests if r.method == "POST" and r.path.endswith("/git-upload-pack")]
    assert len(posts) == 5  # every poll still asks the server
    assert sum(1 for b in built if b.startswith("POST")) == 1  # but the request is built once


def test_the_apply_lock_makes_its_directory_only_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real = Path.mkdir

    def counting_mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", counting_mkdir)
    lock = AppLock.in_state_dir(tmp_path / "state", "app")
    assert lock.try_acquire()
    lock.release()
    assert made and made[0] == tmp_path / "state" / "locks"  # the first acquisition made it (and its parents)
    first = len(made)
    for _ in range(4):
        assert lock.try_acquire()
        lock.release()
    assert len(made) == first  # the next four did not try again
    other = AppLock.in_state_dir(tmp_path / "state", "app")
    assert lock.try_acquire() and not other.try_acquire()  # still an exclusive lock across descriptors
    lock.release()


def test_a_waiting_worker_keeps_no_task_per_wait_and_stops_at_once(state_dir: Path) -> None:
    """Waiting for the next poll was two tasks and an asyncio.wait each time; now it is one future and
    one timer, with one watch of the stop event for the whole run."""

    class Quiet:
        def __init__(self) -> None:
            self.app = AppConfig(name="q", source=SourceSpec(url="file:///x"),
                                 target=sesam_target.Spec(jwt=SecretStr("j" * 8)), policy=Policy(interval=3600))
            self.store = SQLiteStore(state_dir / "history.db")
            self.runs = 0

        async def sync(self, trigger: Trigger, **_: Any) -> Any:
            from autodeployer.model import SyncResult
            self.runs += 1
            return SyncResult(self.app.name, trigger, Result.NO_CHANGE)

    async def run() -> tuple[int, float]:
        reconciler = Quiet()
        worker = AppWorker(reconciler)  # type: ignore[arg-type]
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        while reconciler.runs == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        others = len(asyncio.all_tasks()) - 2  # this test's coroutine and the worker
        started = asyncio.get_running_loop().time()
        stopping.set()
        await asyncio.wait_for(task, 5)
        return others, asyncio.get_running_loop().time() - started

    tasks, stop_took = asyncio.run(run())
    assert tasks == 1  # the stop watch (two per wait before)
    assert stop_took < 0.5  # a poll an hour away does not delay the stop


# ---------------------------------------------------------------------- the lean ls-refs (sources/leanpost.py)
def basic_header() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()}


class SendCounter(httpx.AsyncClient):
    """The real httpx client, counting the requests it sends."""

    sent = 0

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        self.sent += 1
        return await super().send(request, **kwargs)


def test_lean_ls_refs_answers_polls_on_one_kept_alive_connection(git_server: GitHttpServer, config_repo: Any) -> None:
    pool = LeanPool()

    async def run() -> tuple[list[str | None], int, int]:
        async with SendCounter(trust_env=False) as http:
            head = SmartHttpHead(git_server.url_for("acme/config.git"), http, basic_header(), 10.0, pool=pool)
            heads = [await head.head("refs/heads/master") for _ in range(5)]
            idle = pool._count
            pool.close()
            return heads, http.sent, idle

    git_server.reset_stats()
    heads, through_httpx, idle = asyncio.run(run())
    assert heads == [config_repo.head] * 5
    posts = [r for r in git_server.requests if r.method == "POST" and r.path.endswith("/git-upload-pack")]
    assert len(posts) == 5  # every poll asks the server...
    assert through_httpx == 1  # ...through httpx only for the protocol probe (GET info/refs), never the POST
    assert idle == 1  # one socket, kept alive between polls and back in the pool


def test_lean_ls_refs_reports_an_error_status_as_httpx_would_once(git_server: GitHttpServer, config_repo: Any
                                                                   ) -> None:
    pool = LeanPool()

    async def run() -> tuple[str, str | None]:
        async with httpx.AsyncClient(trust_env=False) as http:
            head = SmartHttpHead(git_server.url_for("acme/config.git"), http, basic_header(), 10.0, pool=pool)
            await head.head("refs/heads/master")  # learns protocol v2
            git_server.reset_stats()
            git_server.fail_next(503)
            try:
                await head.head("refs/heads/master")
            except Unreachable as exc:
                error = str(exc)
            else:
                error = "no error"
            after = await head.head("refs/heads/master")  # a fresh connection serves the next poll
            pool.close()
            return error, after

    error, after = asyncio.run(run())
    assert error.startswith("503"), error
    assert GIT_TOKEN not in error
    posts = [r for r in git_server.requests if r.method == "POST"]
    assert len(posts) == 2  # the failed poll was sent once (not retried through httpx), then the next poll
    assert after == config_repo.head


def test_lean_ls_refs_leaves_proxied_and_credentialed_urls_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = LeanPool()
    plain = LeanPost("http://127.0.0.1:1/r.git/git-upload-pack", {}, b"", content_type="x", timeout=1, pool=pool)
    assert plain.usable
    creds = LeanPost("http://u:p@127.0.0.1:1/r.git/git-upload-pack", {}, b"", content_type="x", timeout=1, pool=pool)
    assert not creds.usable
    assert proxied({"HTTPS_PROXY": "http://proxy:3128"}) and proxied({"all_proxy": "socks5://p"})
    assert not proxied({"NO_PROXY": "*"})
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert not LeanPost("http://127.0.0.1:1/x", {}, b"", content_type="x", timeout=1, pool=pool).usable
