"""The reconcile pipeline's overlap of steps: the target's live state is read while Git is fetched,
and a file that did not change between commits is not parsed again; when it reads the target, when
it writes history and state.

The first test runs the CLI against the Sesam emulator: it is about the Sesam target's own prefetch.
The others only need a target's behaviour: they drive the product's reconciler in-process against a
real Git server with a `FakeTarget` and a `MemoryStore` (tests/fakes.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from autodeployer.model import Result, SourceFile, Tree, Trigger
from autodeployer.targets.sesam import ParseMemo, parse_desired
from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .fakes import FakeTarget, MemoryStore, reconciler
from .helpers import GIT_TOKEN, SESAM_JWT, base_env, entity_json, pipe, run_cli, stripped, wait_for


@contextmanager
def sync_process(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`autodeployer sync` running as a process, observed while it runs; killed if a wait fails."""
    proc = subprocess.Popen([sys.executable, "-m", "autodeployer", "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def upload_pack_posts(server: GitHttpServer) -> int:
    """Finished `git-upload-pack` POSTs: the head check is one, a fetch adds at least one more."""
    return sum(1 for r in server.requests if r.method == "POST" and r.path.endswith("/git-upload-pack"))


def test_live_state_is_read_while_git_fetches(app_env, git_server: GitHttpServer, config_repo: WorkRepo,
                                              sesam: SesamEmulator):
    assert run_cli(app_env, "sync").returncode == 0  # the mirror exists; the next sync fetches one commit
    config_repo.write({"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    config_repo.commit("fresh")
    config_repo.push()
    sesam.reset_log()
    git_server.reset_stats()
    git_server.set_delay(1.0)  # every Git answer takes a second: a serial pipeline would GET after 3 s
    with sync_process(app_env) as proc:
        wait_for(lambda: sesam.count("GET", "/api/config") >= 1, what="GET /config", timeout=30)
        posts_at_get = upload_pack_posts(git_server)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "fresh" in stripped(sesam.entities())
    # Only the head check had finished when the node was asked; the fetch was still under way.
    assert posts_at_get <= 1, f"GET /config came after {posts_at_get} upload-pack requests"
    assert upload_pack_posts(git_server) >= 2


def tree(files: dict[str, str], revision: str) -> Tree:
    return Tree(revision=revision, tree_id=revision, files={
        path: SourceFile(path=path, data=text.encode(), mode="100644", size=len(text.encode()))
        for path, text in files.items()})


def test_a_new_commit_parses_only_the_files_that_changed():
    files = {f"pipes/p{i}.conf.json": entity_json(pipe(f"p{i}")) for i in range(50)}
    memo: ParseMemo = {}
    first = parse_desired(tree(files, "a" * 40), memo=memo)
    files["pipes/p7.conf.json"] = entity_json(pipe("p7", dataset="other"))
    del files["pipes/p9.conf.json"]
    second = parse_desired(tree(files, "b" * 40), memo=memo)
    fresh = parse_desired(tree(files, "b" * 40))
    assert second.entities == fresh.entities and second.files == fresh.files
    # unchanged bytes: the parsed file (its entities' digests, sesam_entities.Record) is reused
    assert second.digests["p1"] is first.digests["p1"]
    assert second.digests["p7"] != first.digests["p7"]
    assert second.entities["p7"]["source"]["dataset"] == "other"
    assert "p9" not in second.entities and "pipes/p9.conf.json" not in memo  # the memo follows the tree


def test_the_memo_keeps_refusing_a_bad_file_that_did_not_change():
    files = {"pipes/a.conf.json": entity_json(pipe("a")), "pipes/bad.conf.json": '{"_id": "bad", '}
    memo: ParseMemo = {}
    for revision in ("a" * 40, "b" * 40):
        try:
            parse_desired(tree(files, revision), memo=memo)
        except Exception as exc:  # Refused
            assert any(p.file == "pipes/bad.conf.json" for p in exc.problems), exc  # type: ignore[attr-defined]
        else:
            raise AssertionError("a file with invalid JSON was accepted")
        files["pipes/a.conf.json"] = entity_json(pipe("a", dataset="changed"))


@pytest.fixture
def fake_env(git_server: GitHttpServer, config_repo: WorkRepo, state_dir: Path) -> dict[str, str]:
    """One app on the config repository; its Sesam target is replaced by a FakeTarget, so the node
    address is never contacted."""
    return base_env(GIT_URL=git_server.url_for("acme/config.git"), GITHUB_TOKEN=GIT_TOKEN, JWT=SESAM_JWT,
                    SESAM_API_URL="http://127.0.0.1:9/api", STATE_DIR=str(state_dir), APP_NAME="node",
                    COMMIT_STATUS="false")


def test_pending_status_does_not_hold_the_sync_back(fake_env, config_repo: WorkRepo, github: GitHubEmulator):
    """GitHub answering slowly delays only the statuses, and `pending` still lands before `success`."""
    env = {**fake_env, "COMMIT_STATUS": "true", "GITHUB_API_URL": github.url,  # type: ignore[attr-defined]
           "GITHUB_USER": "acme", "GITHUB_PROJECT": "config"}
    github.set_delay(2.0, "/repos/acme/config/statuses")
    target = FakeTarget()

    async def sync() -> tuple[float, Result]:
        async with reconciler(env, target) as rec:
            started = time.monotonic()
            result = await rec.sync(Trigger.MANUAL)
            return started, result.result

    started, result = asyncio.run(sync())
    assert result is Result.SYNCED
    assert len(target.applied) == 1
    assert target.applied_at[0] - started < 1.5, f"the apply waited {target.applied_at[0] - started:.2f} s for GitHub"
    states = [s["state"] for s in github.statuses("acme", "config", config_repo.head)]
    assert states == ["pending", "success"], states


def test_quiet_drift_checks_write_nothing(fake_env):
    """A drift check that finds none must not cost a disk write."""
    env = {**fake_env, "SYNC_INTERVAL": "0.2", "DRIFT_INTERVAL": "0.01"}  # a drift check at every poll
    target, store = FakeTarget(), MemoryStore()

    async def polls() -> list[Result]:
        async with reconciler(env, target, store) as rec:
            first = await rec.sync(Trigger.POLL)
            assert first.result is Result.SYNCED, first.error
            store.writes.clear()
            reads = target.reads
            results = []
            for _ in range(5):
                await asyncio.sleep(0.02)
                results.append((await rec.sync(Trigger.POLL)).result)
            assert target.reads == reads + 5  # five drift checks read the target
            return results

    assert asyncio.run(polls()) == [Result.NO_CHANGE] * 5
    assert store.writes == []
    assert len(target.applied) == 1  # and nothing was applied again


def test_fast_polls_check_for_drift_at_most_once_a_minute_by_default(fake_env, config_repo: WorkRepo,
                                                                      git_server: GitHttpServer):
    """SYNC_INTERVAL is about picking up commits quickly; reading the whole target is spaced out."""
    target = FakeTarget()

    async def polls() -> None:
        async with reconciler({**fake_env, "SYNC_INTERVAL": "0.2"}, target) as rec:
            assert (await rec.sync(Trigger.POLL)).result is Result.SYNCED
            reads, head_checks = target.reads, upload_pack_posts(git_server)
            for _ in range(10):
                assert (await rec.sync(Trigger.POLL)).summary == "head unchanged"
            assert upload_pack_posts(git_server) == head_checks + 10  # ten head checks ...
            assert target.reads == reads  # ... and no drift check
            config_repo.write({"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
            config_repo.commit("fresh")
            config_repo.push()
            assert (await rec.sync(Trigger.POLL)).result is Result.SYNCED  # the new commit, picked up by a poll

    asyncio.run(polls())
    assert "pipes/fresh.conf.json" in target.live


def test_refused_plans_and_failed_applies_are_recorded_and_retried(fake_env):
    """A refusal leaves the target untouched and is not retried by polls of the same commit; a failed
    apply is recorded with the history row opened before the write, and retried."""
    target, store = FakeTarget(), MemoryStore()
    target.refuse_with = "pipes/x.conf.json: no"

    async def syncs() -> None:
        async with reconciler(fake_env, target, store) as rec:
            refused = await rec.sync(Trigger.POLL)
            assert refused.result is Result.REFUSED and "pipes/x.conf.json: no" in (refused.error or "")
            assert (await rec.sync(Trigger.POLL)).summary == "head unchanged"  # the same commit stays refused
            target.refuse_with, target.fail_with = None, "node answered 503"
            store.writes.clear()
            failed = await rec.sync(Trigger.MANUAL)
            assert failed.result is Result.FAILED and failed.error == "node answered 503"
            assert store.writes[0] == "begin"  # the history row was opened before the apply
            target.fail_with = None
            assert (await rec.sync(Trigger.POLL)).result is Result.SYNCED  # a failure is retried by the next poll
            assert [r.result for r in store.history("node")] == ["synced", "failed", "refused"]

    asyncio.run(syncs())
    assert len(target.applied) == 1
