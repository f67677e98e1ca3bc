"""The head start of a push's sync (headstart.py): the commit a delivery names is fetched, and the
node's live state read, while the head check runs; the delivery is never trusted for the revision.

The product's reconciler in-process, against a real Git server (slowed down, so the order of the
requests shows what overlapped) and the Sesam emulator over HTTP."""

from __future__ import annotations

import asyncio
import json

from autodeployer.config.loader import AppConfig, Policy
from autodeployer.headstart import commit_hint
from autodeployer.model import Result, SyncResult, Trigger
from autodeployer.scheduling import AppWorker
from autodeployer.sources.spec import SourceSpec
from autodeployer.targets.sesam import Spec
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .fakes import MemoryStore
from .helpers import entity_json, pipe
from .targets.test_sesam_verify import sesam_reconciler, sync


def upload_pack_posts(server: GitHttpServer) -> int:
    """Finished `git-upload-pack` POSTs (the head check's ls-refs is one; a fetch is at least one more)."""
    return sum(1 for r in server.requests if r.method == "POST" and r.path.endswith("/git-upload-pack"))


def hinted_sync(env: dict[str, str], hint: str, sesam: SesamEmulator, git: GitHttpServer) -> tuple[SyncResult, int]:
    """A webhook sync with `hint`; also the upload-pack POSTs finished when the node was first asked."""
    async def run() -> tuple[SyncResult, int]:
        async with sesam_reconciler(env) as rec:
            task = asyncio.ensure_future(rec.sync(Trigger.WEBHOOK, force=True, commit_hint=hint))
            while sesam.count("GET", "/api/config") == 0 and not task.done():
                await asyncio.sleep(0.005)
            posts = upload_pack_posts(git)
            return await task, posts
    return asyncio.run(run())


def test_the_delivered_commit_is_fetched_while_the_head_is_checked(app_env, config_repo: WorkRepo,
                                                                   sesam: SesamEmulator, git_server: GitHttpServer):
    assert sync(app_env).result is Result.SYNCED  # the mirror exists: the next sync fetches one commit
    sha = config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="pushed"))})
    sesam.reset_log()
    git_server.reset_stats()
    git_server.set_delay(0.4)  # each Git answer takes 0.4 s: the head check alone would hold the node's read back
    result, posts_when_node_asked = hinted_sync(app_env, sha, sesam, git_server)
    assert result.result is Result.SYNCED and result.revision == sha, result.error
    assert posts_when_node_asked == 0, "the live state was read only after the head check"
    # The head check still ran (the delivery is only a guess): ls-refs plus the fetch's request.
    assert upload_pack_posts(git_server) >= 2
    assert {e["_id"]: e for e in sesam.entities()}["orders"]["source"]["dataset"] == "pushed"


def test_a_late_delivery_naming_an_older_commit_deploys_the_head(app_env, config_repo: WorkRepo,
                                                                 sesam: SesamEmulator, git_server: GitHttpServer):
    assert sync(app_env).result is Result.SYNCED
    older = config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="first"))})
    head = config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="second"))})
    result, _ = hinted_sync(app_env, older, sesam, git_server)
    assert result.result is Result.SYNCED and result.revision == head, (result.revision, head, older)
    assert {e["_id"]: e for e in sesam.entities()}["orders"]["source"]["dataset"] == "second"
    # a sha the repository never had: the speculative fetch fails quietly, the head is deployed
    missing = "0123456789abcdef" * 2 + "01234567"
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="third"))})
    result, _ = hinted_sync(app_env, missing, sesam, git_server)
    assert result.result is Result.SYNCED and result.revision == config_repo.head, result.error
    assert json.dumps(sesam.entities()).count('"third"') == 1


def test_only_full_commit_ids_are_hints():
    assert commit_hint("a" * 40) == "a" * 40
    assert commit_hint("b" * 64) == "b" * 64
    assert commit_hint("0" * 40) is None  # a deleted branch
    assert commit_hint("abc123") is None and commit_hint(None) is None and commit_hint("A" * 40) is None


class HintRecorder:
    """Stands in for the reconciler: records the head-start hint of each sync the worker runs."""

    def __init__(self) -> None:
        self.app = AppConfig(name="a", source=SourceSpec(url="file:///x"), target=Spec(jwt="j" * 8),
                             policy=Policy(interval=3600))
        self.store = MemoryStore()
        self.calls: list[tuple[Trigger, str | None]] = []

    async def sync(self, trigger: Trigger, force: bool = False, lock_wait: float = 0.0,
                   commit_hint: str | None = None) -> SyncResult:
        self.calls.append((trigger, commit_hint))
        await asyncio.sleep(0.05)
        return SyncResult(self.app.name, trigger, Result.NO_CHANGE)


def test_the_worker_hands_the_newest_delivered_commit_to_the_sync():
    rec = HintRecorder()
    worker = AppWorker(rec, settle=0.05)  # type: ignore[arg-type]

    async def drive() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        await asyncio.sleep(0.2)  # the start-up sync: no hint
        worker.trigger(Trigger.WEBHOOK, "a" * 40)
        await asyncio.sleep(0.3)
        worker.trigger(Trigger.WEBHOOK, "b" * 40)
        worker.trigger(Trigger.WEBHOOK, "c" * 40)  # while settling: the newest delivery's commit wins
        await asyncio.sleep(0.4)
        worker.trigger(Trigger.MANUAL)  # no delivery: no hint
        await asyncio.sleep(0.3)
        stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(drive())
    assert rec.calls == [(Trigger.STARTUP, None), (Trigger.WEBHOOK, "a" * 40), (Trigger.WEBHOOK, "c" * 40),
                         (Trigger.MANUAL, None)], rec.calls
