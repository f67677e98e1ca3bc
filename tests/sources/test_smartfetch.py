"""A push's fetch over smart HTTP without `git fetch` (sources/smartfetch.py), against the real loopback
Git server (`git http-backend`): one protocol-v2 fetch POST, the pack stored by `git index-pack`; the
first fetch, a commit the server will not serve and a protocol surprise all fall back to `git fetch`."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from autodeployer.sources.git import GitSource
from autodeployer.sources.smartfetch import demux_pack, fetch_request, idx_has, read_ref
from autodeployer.sources.smarthttp import ProtocolError, pkt
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

from ..helpers import GIT_TOKEN
from .test_git import source


def spied(src: GitSource) -> list[tuple[str, ...]]:
    """Record the argv of every git the source runs (the real git still runs)."""
    calls: list[tuple[str, ...]] = []
    real = src._git

    async def recording(*args: str, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(*args, **kwargs)

    src._git = recording  # type: ignore[method-assign]
    return calls


def push_one(repo: WorkRepo, name: str) -> str:
    repo.write({f"pipes/{name}.conf.json": f'{{"_id": "{name}", "type": "pipe"}}'})
    repo.commit(name)
    repo.push()
    return repo.head


def test_a_push_is_fetched_with_one_post_and_index_pack(tmp_path: Path, git_server: GitHttpServer,
                                                        config_repo: WorkRepo):
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        assert client is not None
        await src.fetch(await src.head())  # the first fetch makes the mirror with git's own fetch
        head = push_one(config_repo, "new")
        calls = spied(src)
        git_server.reset_stats()
        assert await src.fetch(head) == head
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in git_server.requests] == [("POST", "git-upload-pack")]
        assert git_server.requests[0].git_protocol == "version=2" and git_server.requests[0].authenticated
        assert "fetch" not in [c[0] for c in calls] and ("index-pack", "--stdin", "--fix-thin") in calls
        assert read_ref(src.mirror, "refs/heads/master") == head
        indexes = list((src.mirror / "objects" / "pack").glob("*.idx"))
        assert any(idx_has(i, head) for i in indexes)  # the index lookup that replaces a `git cat-file`
        assert not any(idx_has(i, "0123456789abcdef" * 2 + "01234567") for i in indexes)
        assert not list(src.mirror.rglob("*.lock"))
        assert "pipes/new.conf.json" in (await src.read(head)).files
        # the next push builds on it (the mirror's new head is the `have`)
        newer = push_one(config_repo, "newer")
        assert await src.fetch(newer) == newer
        assert "pipes/newer.conf.json" in (await src.read(newer)).files
        await client.aclose()

    asyncio.run(scenario())


def test_the_token_is_only_in_the_authorization_header(tmp_path: Path, git_server: GitHttpServer,
                                                       config_repo: WorkRepo):
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        assert client is not None
        sent: list[Any] = []

        async def on_request(request: Any) -> None:
            sent.append(request)

        client.event_hooks["request"] = [on_request]
        await src.fetch(await src.head())
        head = push_one(config_repo, "secretive")
        calls = spied(src)
        sent.clear()
        assert await src.fetch(head) == head
        fetches = [r for r in sent if r.url.path.endswith("/git-upload-pack")]
        assert len(fetches) == 1
        basic = base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()
        assert any(GIT_TOKEN in base64.b64decode(v.split()[-1]).decode() for k, v in fetches[0].headers.items()
                   if k.lower() == "authorization"), "the fetch was not authenticated by header"
        for request in sent:
            assert GIT_TOKEN not in str(request.url) and basic not in str(request.url)
        for argv in calls:
            assert not any(GIT_TOKEN in a or basic in a for a in argv), argv
        await client.aclose()

    asyncio.run(scenario())


def test_first_fetch_and_unserved_commits_fall_back_to_git_fetch(tmp_path: Path, git_server: GitHttpServer,
                                                                 config_repo: WorkRepo):
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        assert client is not None
        calls = spied(src)
        head = await src.head()
        assert await src.fetch(head) == head  # no mirror ref yet: git's fetch
        assert "fetch" in [c[0] for c in calls]
        # A commit the server does not have: its ERR answer is a surprise, git fetch runs and the branch
        # head is deployed.
        calls.clear()
        missing = "0123456789abcdef" * 2 + "01234567"
        assert await src.fetch(missing) == config_repo.head
        assert "fetch" in [c[0] for c in calls]
        await client.aclose()

    asyncio.run(scenario())


def test_the_answer_is_demultiplexed_and_surprises_are_protocol_errors():
    body = (pkt("packfile\n") + b"0009\x01PACK" + b"0008\x02..." + b"0009\x01DATA" + b"0000")
    assert demux_pack(body) == b"PACKDATA"
    with pytest.raises(ProtocolError):
        demux_pack(pkt("ERR upload-pack: not our ref 0123\n"))
    with pytest.raises(ProtocolError):
        demux_pack(pkt("acknowledgments\n") + b"0000")
    with pytest.raises(ProtocolError):
        demux_pack(pkt("packfile\n") + b"0009\x03oops")
    with pytest.raises(ProtocolError):
        demux_pack(pkt("packfile\n") + b"0009\x01PACK")  # no flush: cut short
    request = fetch_request("a" * 40, ["b" * 40])
    assert request.startswith(pkt("command=fetch\n")) and pkt(f"want {'a' * 40}\n") in request
    assert pkt(f"have {'b' * 40}\n") in request and request.endswith(pkt("done\n") + b"0000")


def test_a_pack_larger_than_the_cap_is_left_to_git_fetch(tmp_path: Path, git_server: GitHttpServer,
                                                         config_repo: WorkRepo):
    """The answer is held in memory until index-pack reads it, so it is read only up to a cap; a push beyond
    it (a large binary) is fetched by `git fetch`, which streams to disk, and still deployed."""
    async def scenario() -> None:
        src, client = source(git_server.url_for("acme/config.git"), tmp_path / "s")
        assert client is not None and src._smart_fetch is not None
        await src.fetch(await src.head())
        src._smart_fetch.max_bytes = 64 * 1024
        calls = spied(src)
        config_repo.write({"assets/blob.bin": os.urandom(256 * 1024)})  # random: the pack cannot compress it
        config_repo.commit("a large binary")
        config_repo.push()
        assert await src.fetch(config_repo.head) == config_repo.head
        assert "fetch" in [c[0] for c in calls]  # git's fetch, after the answer went over the cap
        assert "assets/blob.bin" in (await src.read(config_repo.head)).files
        calls.clear()
        small = push_one(config_repo, "small")  # a small push is still fetched the lean way
        assert await src.fetch(small) == small
        assert "fetch" not in [c[0] for c in calls] and ("index-pack", "--stdin", "--fix-thin") in calls
        await client.aclose()

    asyncio.run(scenario())
