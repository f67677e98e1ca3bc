"""Shared head checks: N apps following one repository cost one head check per interval, counted on a real
loopback Git server (smart HTTP); other credentials, webhooks and a lone app never get a shared answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from autodeployer.errors import SourceError
from autodeployer.sources.git import GitSource
from autodeployer.sources.sharedhead import SharedHeads
from autodeployer.sources.spec import SourceSpec
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

from ..helpers import GIT_TOKEN

INTERVAL = 10.0


def ls_refs(server: GitHttpServer) -> int:
    """Head checks the server answered: protocol-v2 POSTs to git-upload-pack (nothing else is fetched here)."""
    return sum(1 for r in server.requests if r.method == "POST" and r.path.endswith("/git-upload-pack"))


def sources(url: str, state: Path, client: httpx.AsyncClient, heads: SharedHeads, n: int,
            token: str = GIT_TOKEN) -> list[GitSource]:
    spec = SourceSpec(url=url, branch="master", token=SecretStr(token))
    return [GitSource(spec, state, http=client, heads=heads) for _ in range(n)]


def test_n_apps_on_one_repository_cost_one_check_per_interval(tmp_path: Path, git_server: GitHttpServer,
                                                              config_repo: WorkRepo):
    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            heads = SharedHeads()
            apps = sources(git_server.url_for("acme/config.git"), tmp_path / "s", client, heads, 20)
            git_server.reset_stats()
            # Concurrent polls wait for one request in flight.
            assert set(await asyncio.gather(*(a.head(INTERVAL) for a in apps))) == {config_repo.head}
            assert ls_refs(git_server) == 1
            # Three more intervals, the apps one after the other (as jittered polls come): one check each.
            for interval in range(2, 5):
                for app in apps:
                    assert await app.head(INTERVAL) == config_repo.head
                assert ls_refs(git_server) == interval
            assert heads.requests == 4 and heads.shared == 20 * 4 - 4

    asyncio.run(scenario())


def test_a_lone_app_checks_on_every_poll(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo):
    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            (app,) = sources(git_server.url_for("acme/config.git"), tmp_path / "s", client, SharedHeads(), 1)
            git_server.reset_stats()
            for _ in range(3):
                assert await app.head(INTERVAL) == config_repo.head
            assert ls_refs(git_server) == 3  # its own earlier answer is never served back to it

    asyncio.run(scenario())


def test_an_answer_older_than_the_interval_is_not_shared(tmp_path: Path, git_server: GitHttpServer,
                                                         config_repo: WorkRepo):
    async def scenario() -> None:
        now = [0.0]
        heads = SharedHeads(clock=lambda: now[0])
        async with httpx.AsyncClient() as client:
            a, b = sources(git_server.url_for("acme/config.git"), tmp_path / "s", client, heads, 2)
            git_server.reset_stats()
            await a.head(INTERVAL)
            now[0] = INTERVAL + 0.5
            await b.head(INTERVAL)
            assert ls_refs(git_server) == 2

    asyncio.run(scenario())


def test_a_push_checked_afresh_reaches_the_polls_of_the_other_apps(tmp_path: Path, git_server: GitHttpServer,
                                                                   config_repo: WorkRepo):
    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            a, b = sources(git_server.url_for("acme/config.git"), tmp_path / "s", client, SharedHeads(), 2)
            old = await a.head(INTERVAL)
            assert await b.head(INTERVAL) == old
            config_repo.write({"pipes/new.conf.json": '{"_id": "new", "type": "pipe"}'})
            config_repo.commit("a push")
            config_repo.push()
            git_server.reset_stats()
            assert await a.head() == config_repo.head != old  # a webhook's check: never from the cache
            assert await b.head(INTERVAL) == config_repo.head  # b's next poll takes that answer
            assert ls_refs(git_server) == 1

    asyncio.run(scenario())


def test_other_credentials_are_another_question(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo):
    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            heads = SharedHeads()
            url = git_server.url_for("acme/config.git")
            (good,) = sources(url, tmp_path / "s", client, heads, 1)
            (bad,) = sources(url, tmp_path / "s", client, heads, 1, token="wrong-token-123")
            assert await good.head(INTERVAL) == config_repo.head
            with pytest.raises(SourceError, match="cannot reach") as caught:
                await bad.head(INTERVAL)  # not answered from the good token's check
            assert "wrong-token-123" not in str(caught.value)
            assert heads.requests == 2 and heads.shared == 0
            assert not any("wrong-token" in "".join(k) or GIT_TOKEN in "".join(k) for k in heads._entries)

    asyncio.run(scenario())


def test_a_failed_check_fails_its_waiters_and_is_not_cached(tmp_path: Path, git_server: GitHttpServer,
                                                            config_repo: WorkRepo):
    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            heads = SharedHeads()
            apps = sources(git_server.url_for("acme/config.git"), tmp_path / "s", client, heads, 3)
            git_server.down()
            results = await asyncio.gather(*(a.head(INTERVAL) for a in apps), return_exceptions=True)
            assert all(isinstance(r, SourceError) for r in results) and heads.requests == 1
            git_server.up()
            assert await apps[0].head(INTERVAL) == config_repo.head and heads.requests == 2

    asyncio.run(scenario())
