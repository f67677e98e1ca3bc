"""GitSource against real Git servers: head checks, fetch on change, reads from objects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from autodeployer.errors import SourceError
from autodeployer.sources.git import GitSource
from autodeployer.sources.smarthttp import find_ref, ls_refs_request, parse_pkt_lines
from autodeployer.sources.spec import SourceSpec
from autodeployer_emulators.gitserver import GitDaemon, GitHttpServer, WorkRepo

from ..helpers import GIT_TOKEN


def source(url: str, state: Path, token: str | None = GIT_TOKEN, root: str = "", http: bool = True,
           branch: str = "master") -> tuple[GitSource, httpx.AsyncClient | None]:
    client = httpx.AsyncClient() if http else None
    spec = SourceSpec(url=url, branch=branch, sync_root=root, token=SecretStr(token) if token else None)
    return GitSource(spec, state, http=client), client


def run(coro):
    return asyncio.run(coro)


def test_pkt_line_codec():
    body = ls_refs_request("refs/heads/main")
    assert body.startswith(b"0014command=ls-refs\n") and body.endswith(b"0000")
    line = b"a" * 40 + b" refs/heads/x\n"
    lines = parse_pkt_lines(f"{len(line) + 4:04x}".encode() + line + b"0000")
    assert find_ref(lines, "refs/heads/x") == "a" * 40 and find_ref(lines, "refs/heads/y") is None


def test_head_fetch_and_read(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo):
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        head = await src.head()
        assert head == config_repo.head
        git_server.reset_stats()
        assert await src.head() == head
        assert [r.method for r in git_server.requests] == ["POST"]  # one ls-refs, kept-alive, no process
        assert await src.fetch(head) == head
        fetches = len(git_server.requests)
        assert await src.fetch(head) == head and len(git_server.requests) == fetches  # present: no fetch
        tree = await src.read(head)
        assert "pipes/orders.conf.json" in tree.files and tree.tree_id
        info = await src.commit_info(head)
        assert info.message == "initial configuration"
        assert await src.resolve(head[:8]) == head
        with pytest.raises(SourceError, match="not a commit sha"):
            await src.resolve("HEAD~1")
        await client.aclose()

    run(scenario())


def test_sync_root_and_symlinks_read_from_objects(tmp_path: Path, git_server, config_repo: WorkRepo):
    config_repo.write({"node/pipes/a.conf.json": "{}", "elsewhere.txt": "x"})
    config_repo.symlink("node/pipes/link.conf.json", "../../elsewhere.txt")
    config_repo.commit("root")
    config_repo.push()

    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s", root="node")
        tree = await src.read(await src.fetch(await src.head()))
        assert set(tree.files) == {"pipes/a.conf.json", "pipes/link.conf.json"}
        assert tree.files["pipes/link.conf.json"].is_symlink
        assert tree.files["pipes/link.conf.json"].data == b"../../elsewhere.txt"  # the link, never its target
        missing, _ = source(git_server.url_for("acme/config.git"), tmp_path / "s", root="nope", http=False)
        assert (await missing.read(tree.revision)).tree_id == ""
        await client.aclose()

    run(scenario())


def test_wrong_token_missing_branch_and_down_server(tmp_path: Path, git_server: GitHttpServer, config_repo):
    async def scenario() -> None:
        bad, c1 = source(git_server.url_for("acme/config.git"), tmp_path / "a", token="wrong-token-xyz")
        with pytest.raises(SourceError, match="401") as info:
            await bad.head()
        assert "wrong-token-xyz" not in str(info.value)
        nobranch, c2 = source(git_server.url_for("acme/config.git"), tmp_path / "b", branch="nope")
        with pytest.raises(SourceError, match="branch 'nope' not found"):
            await nobranch.head()
        git_server.down()
        down, c3 = source(git_server.url_for("acme/config.git"), tmp_path / "c")
        with pytest.raises(SourceError, match=r"cannot reach .*503"):
            await down.head()
        git_server.up()
        assert await down.head() == config_repo.head
        for client in (c1, c2, c3):
            await client.aclose()

    run(scenario())


def test_git_daemon_and_subprocess_fallback(tmp_path: Path, git_daemon: GitDaemon, config_repo: WorkRepo):
    async def scenario() -> None:
        src, _ = source(git_daemon.url_for("acme/config.git"), tmp_path / "s", token=None, http=False)
        head = await src.head()
        assert head == config_repo.head
        tree = await src.read(await src.fetch(head))
        assert "pipes/orders.conf.json" in tree.files

    run(scenario())


def test_non_smart_server_falls_back_to_git(tmp_path: Path):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from autodeployer_emulators._server import LoopbackServer

    app = Starlette(routes=[Route("/{path:path}", lambda r: HTMLResponse("<html>login</html>"))])
    with LoopbackServer(app) as server:
        async def scenario() -> None:
            src, client = source(server.url + "/acme/config.git", tmp_path / "s")
            with pytest.raises(SourceError):
                await src.head()
            assert src._smart is None  # switched to the git client for good
            await client.aclose()

        run(scenario())


def test_locks_are_kept_while_another_live_process_uses_the_mirror(tmp_path: Path, git_server: GitHttpServer,
                                                                   config_repo: WorkRepo):
    """A CLI run next to the service must not take the service's in-flight fetch for a killed one: while
    another live process holds its presence in the mirror, a lock older than this process is kept, and
    cleared once that process is gone. The other process is real: `autodeployer sync` holding the mirror
    is stood in for by a python process holding the same flock."""
    import os
    import subprocess
    import sys

    from autodeployer.sources import git as gitmod

    url = git_server.url_for("acme/config.git")

    async def scenario() -> None:
        made, c0 = source(url, tmp_path / "s")
        await made.fetch(await made.head())
        await c0.aclose()
        made.close()
        mirror = made.mirror
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
             "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()",
             str(mirror / gitmod.PRESENCE_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            lock = mirror / "refs/heads/master.lock"
            lock.write_text("")
            old = gitmod.PROCESS_START - 5  # older than this process, yet the other one may be fetching
            os.utime(lock, (old, old))
            beside, c1 = source(url, tmp_path / "s")
            await beside.ensure_mirror()
            assert lock.exists()
            beside.close()
            await c1.aclose()
        finally:
            holder.communicate("", timeout=10)  # the other process exits: its flock goes with it
        alone, c2 = source(url, tmp_path / "s")
        await alone.ensure_mirror()
        assert not lock.exists()
        alone.close()
        await c2.aclose()

    run(scenario())


def test_stale_lock_files_left_by_a_killed_git_are_cleared(tmp_path: Path, git_server: GitHttpServer,
                                                           config_repo: WorkRepo):
    """A git killed mid-fetch leaves refs/heads/<branch>.lock (and friends) in the mirror; without the
    cleanup every later fetch fails with "cannot lock ref"."""
    import os
    import time

    from autodeployer.sources import git as gitmod

    url = git_server.url_for("acme/config.git")

    async def scenario() -> None:
        first, c1 = source(url, tmp_path / "s")
        await first.fetch(await first.head())
        await c1.aclose()
        first.close()  # its process ends
        mirror = first.mirror
        old = gitmod.PROCESS_START - 5  # left by an earlier process
        for name in ("refs/heads/master.lock", "packed-refs.lock", "shallow.lock", "config.lock"):
            (mirror / name).write_text("")
            os.utime(mirror / name, (old, old))
        config_repo.write({"pipes/after.conf.json": "{}"})
        config_repo.commit("after the kill")
        head = config_repo.push()

        again, c2 = source(url, tmp_path / "s")  # the next process's first use of the mirror
        assert await again.fetch(head) == head
        assert not list(mirror.rglob("*.lock"))
        await c2.aclose()

        # A lock newer than this process may belong to a live git: kept, and the error is git's own line.
        (mirror / "refs/heads/master.lock").write_text("")
        config_repo.write({"pipes/later.conf.json": "{}"})
        config_repo.commit("later")
        later = config_repo.push()
        third, c3 = source(url, tmp_path / "s")
        with pytest.raises(SourceError, match=r"git fetch failed for .*: error: cannot lock ref 'refs/heads/master'"):
            await third.fetch(later)
        assert (mirror / "refs/heads/master.lock").exists()
        # ... until it is older than any git of ours can live: then the fetch clears it and retries.
        ancient = time.time() - gitmod.STALE_LOCK_AFTER - 5
        os.utime(mirror / "refs/heads/master.lock", (ancient, ancient))
        config_repo.write({"pipes/latest.conf.json": "{}"})
        config_repo.commit("latest")
        latest = config_repo.push()  # (the failed fetch got `later`'s objects; only the ref was not updated)
        assert await third.fetch(latest) == latest
        assert not (mirror / "refs/heads/master.lock").exists()
        await c3.aclose()

    run(scenario())


def test_git_error_is_gits_own_first_error_line():
    from autodeployer.sources.git import git_error

    stderr = ("error: cannot lock ref 'refs/heads/master': Unable to create 'x/master.lock': File exists.\n\n"
              "Another git process seems to be running in this repository, e.g.\n"
              "remove the file manually to continue.\n")
    assert git_error(stderr) == \
        "error: cannot lock ref 'refs/heads/master': Unable to create 'x/master.lock': File exists."
    assert git_error("remote: Invalid credentials\nfatal: Authentication failed for 'u'\n") == \
        "fatal: Authentication failed for 'u'"
    assert git_error("warning: something\nlast words\n") == "last words"
    assert git_error("") == "no error output"


def test_reading_a_new_commit_reuses_the_blobs_it_shares(tmp_path: Path, git_server: GitHttpServer,
                                                          config_repo: WorkRepo):
    first = config_repo.head
    config_repo.write({"pipes/orders.conf.json": '{"_id": "orders", "type": "pipe", "changed": true}'})
    config_repo.commit("change one file")
    config_repo.push()
    second = config_repo.head

    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        await src.fetch(second)
        a = await src.read(first)
        b = await src.read(second)
        again = await src.read(first)
        fresh, fresh_client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        for sha, tree in ((first, a), (second, b), (first, again)):
            expected = await fresh.read(sha)  # a new source: every blob read with cat-file
            assert {p: f.data for p, f in tree.files.items()} == {p: f.data for p, f in expected.files.items()}
        assert b"changed" in b.files["pipes/orders.conf.json"].data
        assert b"changed" not in again.files["pipes/orders.conf.json"].data
        shared = [p for p in a.files if p != "pipes/orders.conf.json"]
        assert shared and all(b.files[p].data is a.files[p].data for p in shared)  # not read from Git again
        await client.aclose()
        await fresh_client.aclose()

    run(scenario())


def test_fetch_asks_for_the_commit_the_head_check_saw(tmp_path: Path, git_server: GitHttpServer,
                                                      config_repo: WorkRepo):
    """Protocol v2 by id: no ref listing before the pack, one round trip less than fetching the branch."""
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        await src.fetch(await src.head())
        config_repo.write({"pipes/new.conf.json": '{"_id": "new", "type": "pipe"}'})
        config_repo.commit("new")
        config_repo.push()
        head = await src.head()
        git_server.reset_stats()
        assert await src.fetch(head) == head
        posts = [r for r in git_server.requests if r.method == "POST"]
        assert len(posts) == 1, [(r.method, r.path) for r in git_server.requests]  # the fetch itself, no ls-refs
        assert "pipes/new.conf.json" in (await src.read(head)).files
        await client.aclose()

    run(scenario())


def test_fetch_after_a_force_push_deploys_the_branch(tmp_path: Path, git_server: GitHttpServer,
                                                     config_repo: WorkRepo):
    """The commit the head check saw is gone from the branch: whatever the server still serves, the
    mirror ends on a commit of the branch's history and the next fetch reaches the new head."""
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        base = await src.head()
        await src.fetch(base)
        config_repo.write({"pipes/doomed.conf.json": '{"_id": "doomed", "type": "pipe"}'})
        config_repo.commit("doomed")
        config_repo.push()
        seen = await src.head()
        config_repo.git("reset", "--hard", base)
        config_repo.write({"pipes/kept.conf.json": '{"_id": "kept", "type": "pipe"}'})
        config_repo.commit("kept")
        config_repo.git("push", "--force", "origin", "HEAD:master")
        got = await src.fetch(seen)
        assert got in (seen, config_repo.head)
        assert await src.fetch(await src.head()) == config_repo.head
        assert "pipes/kept.conf.json" in (await src.read(config_repo.head)).files
        await client.aclose()

    run(scenario())
