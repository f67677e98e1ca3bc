"""GitSource against real Git servers: head checks, fetch on change, reads from objects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from autodeployer.config import SourceSpec
from autodeployer.emulators.gitserver import GitDaemon, GitHttpServer, WorkRepo
from autodeployer.errors import SourceError
from autodeployer.sources.git import GitSource
from autodeployer.sources.smarthttp import find_ref, ls_refs_request, parse_pkt_lines

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
        with pytest.raises(SourceError, match="cannot reach .*503"):
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

    from autodeployer.emulators._server import LoopbackServer

    app = Starlette(routes=[Route("/{path:path}", lambda r: HTMLResponse("<html>login</html>"))])
    with LoopbackServer(app) as server:
        async def scenario() -> None:
            src, client = source(server.url + "/acme/config.git", tmp_path / "s")
            with pytest.raises(SourceError):
                await src.head()
            assert src._smart is None  # switched to the git client for good
            await client.aclose()

        run(scenario())
