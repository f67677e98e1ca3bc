"""The reconcile pipeline's overlap of steps: the target's live state is read while Git is fetched,
and a file that did not change between commits is not parsed again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autodeployer.model import SourceFile, Tree
from autodeployer.targets.sesam import ParseMemo, parse_desired
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import entity_json, history_rows, pipe, run_cli, stripped, wait_for


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
    assert second.entities["p1"] is first.entities["p1"]  # unchanged bytes: the parsed entity is reused
    assert second.entities["p7"] is not first.entities["p7"]
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


def test_pending_status_does_not_hold_the_sync_back(app_env, config_repo: WorkRepo, sesam: SesamEmulator, github):
    """GitHub answering slowly delays only the statuses, and `pending` still lands before `success`."""
    env = {**app_env, "GITHUB_API_URL": github.url, "GITHUB_USER": "acme", "GITHUB_PROJECT": "config"}
    github.set_delay(2.0, "/repos/acme/config/statuses")
    head = config_repo.head
    with sync_process(env) as proc:
        wait_for(lambda: github.statuses("acme", "config", head), what="pending status", timeout=30, interval=0.01)
        posted = time.monotonic()
        wait_for(lambda: sesam.put_count >= 1, what="upload", timeout=30, interval=0.01)
        uploaded = time.monotonic()
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert uploaded - posted < 1.5, f"the upload waited {uploaded - posted:.2f} s for GitHub's answer"
    states = [s["state"] for s in github.statuses("acme", "config", head)]
    assert states == ["pending", "success"], states


def app_state_rows(state_dir: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(state_dir / "history.sqlite3")
    try:
        return db.execute("SELECT app, data FROM app_state ORDER BY app").fetchall()
    finally:
        db.close()


def test_quiet_drift_checks_write_nothing(service, app_env, sesam: SesamEmulator, state_dir: Path):
    """A drift check that finds none must not cost a disk write."""
    service({**app_env, "SYNC_INTERVAL": "0.2", "DRIFT_INTERVAL": "0.2"})
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")
    wait_for(lambda: app_state_rows(state_dir), what="state saved")
    before = app_state_rows(state_dir)
    gets = sesam.count("GET", "/api/config")
    wait_for(lambda: sesam.count("GET", "/api/config") >= gets + 5, what="five drift checks", timeout=30)
    assert app_state_rows(state_dir) == before
    assert sesam.put_count == 1  # and nothing was uploaded again


def test_fast_polls_check_for_drift_at_most_once_a_minute_by_default(service, app_env, config_repo: WorkRepo,
                                                                      sesam: SesamEmulator, git_server: GitHttpServer,
                                                                      state_dir: Path):
    """SYNC_INTERVAL is about picking up commits quickly; reading the whole target is spaced out."""
    service({**app_env, "SYNC_INTERVAL": "0.2"})
    wait_for(lambda: [r for r in history_rows(state_dir) if r["result"] == "synced"], what="first sync verified")
    gets, polls = sesam.count("GET", "/api/config"), upload_pack_posts(git_server)
    wait_for(lambda: upload_pack_posts(git_server) >= polls + 10, what="ten polls", timeout=30)
    assert sesam.count("GET", "/api/config") == gets  # ten head checks, no drift check
    config_repo.write({"pipes/fresh.conf.json": entity_json(pipe("fresh"))})
    config_repo.commit("fresh")
    config_repo.push()
    wait_for(lambda: "fresh" in stripped(sesam.entities()), what="the new commit, picked up by a poll")
