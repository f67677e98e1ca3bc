"""TAG: following a tag (annotated or lightweight) instead of a branch, over real Git servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from autodeployer.errors import SourceError
from autodeployer.sources.git import GitSource
from autodeployer.sources.smarthttp import find_ref, parse_pkt_lines
from autodeployer.sources.spec import SourceSpec
from autodeployer_emulators.gitserver import GitDaemon, GitHttpServer, WorkRepo

from ..helpers import GIT_TOKEN


def tag(repo: WorkRepo, name: str, *, annotated: bool, force: bool = False) -> None:
    """Tag the work tree's HEAD and push the tag (force-pushed when it moves)."""
    args = ["tag", *(["-a", "-m", f"release {name}"] if annotated else []), *(["-f"] if force else []), name]
    repo.git(*args)
    repo.git("push", *(["--force"] if force else []), "origin", f"refs/tags/{name}")


def pkt_lines(*lines: str) -> list[bytes | None]:
    body = b"".join(f"{len(line) + 4:04x}".encode() + line.encode() for line in lines) + b"0000"
    return parse_pkt_lines(body)


def test_find_ref_peels_annotated_tags_in_both_protocols():
    tag_oid, commit = "a" * 40, "b" * 40
    v2 = pkt_lines(f"{tag_oid} refs/tags/v1 peeled:{commit}\n", f"{commit} refs/tags/v10\n")
    assert find_ref(v2, "refs/tags/v1") == commit
    assert find_ref(v2, "refs/tags/v10") == commit  # a lightweight tag names its commit itself
    v0 = pkt_lines(f"{tag_oid} refs/tags/v1\n", f"{commit} refs/tags/v1^{{}}\n")
    assert find_ref(v0, "refs/tags/v1") == commit
    assert find_ref(v0, "refs/tags/v2") is None


@pytest.mark.parametrize("annotated", [True, False], ids=["annotated", "lightweight"])
def test_tag_is_followed_over_smart_http(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo,
                                         annotated: bool):
    first = config_repo.head
    tag(config_repo, "v1", annotated=annotated)
    config_repo.write({"pipes/later.conf.json": '{"_id": "later", "type": "pipe"}\n'})
    config_repo.commit("on master, not tagged")
    config_repo.push()

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            spec = SourceSpec(url=git_server.url_for("acme/config.git"), tag="v1", token=SecretStr(GIT_TOKEN))
            src = GitSource(spec, tmp_path / "s", http=client)
            head = await src.head()
            assert head == first  # the commit, also for an annotated tag; not master's head
            git_server.reset_stats()
            assert await src.head() == first
            assert [r.method for r in git_server.requests] == ["POST"]  # still one ls-refs per check
            assert await src.fetch(head) == first
            assert "pipes/later.conf.json" not in (await src.read(head)).files

            # a new commit tagged with a new tag is not followed; the tag moved (force-pushed) is
            config_repo.write({"pipes/v1b.conf.json": '{"_id": "v1b", "type": "pipe"}\n'})
            moved = config_repo.commit("moves v1")
            config_repo.push()
            tag(config_repo, "v1", annotated=annotated, force=True)
            assert await src.head() == moved
            assert await src.fetch(moved) == moved
            assert "pipes/v1b.conf.json" in (await src.read(moved)).files
            # fetching without the sha the head check saw (rollback, resolve) peels the tag too
            assert await src.fetch(None) == moved

    asyncio.run(scenario())


def test_tag_over_git_daemon_uses_ls_remote(tmp_path: Path, git_daemon: GitDaemon, config_repo: WorkRepo):
    tag(config_repo, "release-2", annotated=True)
    head = config_repo.head

    async def scenario() -> None:
        src = GitSource(SourceSpec(url=git_daemon.url_for("acme/config.git"), tag="release-2"), tmp_path / "s")
        assert await src.head() == head
        assert await src.fetch(head) == head
        assert await src.fetch(None) == head

    asyncio.run(scenario())


def test_missing_tag_is_named(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo):
    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            spec = SourceSpec(url=git_server.url_for("acme/config.git"), tag="nope", token=SecretStr(GIT_TOKEN))
            with pytest.raises(SourceError, match="tag 'nope' not found"):
                await GitSource(spec, tmp_path / "s", http=client).head()

    asyncio.run(scenario())


def test_tag_beats_a_branch_of_the_same_name(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo):
    tagged = config_repo.head
    tag(config_repo, "master-tag", annotated=False)
    config_repo.git("branch", "master-tag")
    config_repo.commit("branch moves on")
    config_repo.git("push", "origin", "HEAD:refs/heads/master-tag")

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            spec = SourceSpec(url=git_server.url_for("acme/config.git"), tag="master-tag", token=SecretStr(GIT_TOKEN))
            assert await GitSource(spec, tmp_path / "s", http=client).head() == tagged

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["", "a b", "../x", "x..y", "-x", "x.lock", "x^", "x:y", "x/"])
def test_invalid_tag_names_are_refused(name: str):
    with pytest.raises(ValueError, match="tag"):
        SourceSpec(url="https://example.org/a/b.git", tag=name)


@pytest.mark.parametrize("head_check", ["auto", "api"])
def test_a_tag_is_checked_with_ls_refs_even_when_github_reads_heads(tmp_path: Path, git_server: GitHttpServer,
                                                                  config_repo: WorkRepo, github, head_check: str):
    """GitHub's sha media type reads branches; a tag falls back to the one ls-refs, never to a wrong sha."""
    from autodeployer.sources.github import GitHubClient

    tagged = config_repo.head
    tag(config_repo, "v1", annotated=True)
    config_repo.commit("master moves on")
    config_repo.push()

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            spec = SourceSpec(url=git_server.url_for("acme/config.git"), tag="v1", token=SecretStr(GIT_TOKEN),
                              head_check=head_check)
            src = GitSource(spec, tmp_path / "s", http=client)
            src.github = GitHubClient(github.url, GIT_TOKEN, "acme/config", client)
            assert await src.head() == tagged
            assert github.count(path_prefix="/repos/acme/config/commits/") == 0
            branch = GitSource(SourceSpec(url=spec.url, token=SecretStr(GIT_TOKEN)), tmp_path / "b", http=client)
            branch.github = src.github
            assert await branch.head() == config_repo.head  # branches still use the API
            assert github.count(path_prefix="/repos/acme/config/commits/") == 1

    asyncio.run(scenario())


def test_tag_env_deploys_the_tagged_commit_and_follows_the_tag(app_env: dict[str, str], config_repo: WorkRepo,
                                                              sesam):
    """The CLI as a real process with TAG and BRANCH both set: the tag wins, and says so."""
    from ..helpers import run_cli

    tag(config_repo, "prod", annotated=True)
    config_repo.write({"pipes/untagged.conf.json": '{"_id": "untagged", "type": "pipe", "source": '
                                                   '{"type": "dataset", "dataset": "x"}}\n'})
    config_repo.commit("on master only")
    config_repo.push()
    env = {**app_env, "TAG": "prod", "BRANCH": "master", "LOG_LEVEL": "INFO"}
    first = run_cli(env, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "TAG is set: following tag 'prod', BRANCH=master is ignored" in first.stderr
    assert "untagged" not in {e["_id"] for e in sesam.entities()}
    tag(config_repo, "prod", annotated=True, force=True)  # the release moves to master's head
    second = run_cli(env, "sync")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "untagged" in {e["_id"] for e in sesam.entities()}
    status = run_cli(env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert '"tag": "prod"' in status.stdout  # what is followed is shown, not only the ignored branch



def test_a_pushed_tag_wakes_the_apps_following_it(service, app_env: dict[str, str], github, config_repo: WorkRepo,
                                                  sesam):
    """A signed push of the tag deploys at once (polling is 1 h); a push to master does not wake it."""
    import time

    from ..helpers import WEBHOOK_SECRET, free_port, wait_for

    tag(config_repo, "prod", annotated=True)
    port = free_port()
    env = {**app_env, "TAG": "prod", "SYNC_INTERVAL": "3600", "GITHUB_API_URL": github.url,
           "WEBHOOK_SECRET": WEBHOOK_SECRET, "HEAD_CHECK": "git", "PORT": str(port),
           "PUBLIC_URL": f"http://127.0.0.1:{port}"}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    before = config_repo.head
    config_repo.write({"pipes/tagged.conf.json": '{"_id": "tagged", "type": "pipe", "source": '
                                                 '{"type": "dataset", "dataset": "x"}}\n'})
    config_repo.commit("next release")
    config_repo.push()
    [on_master] = github.push("acme", "config", "refs/heads/master", before, config_repo.head)
    assert on_master.status_code == 202 and b"no app follows" in on_master.response_body
    time.sleep(0.5)
    assert "tagged" not in {e["_id"] for e in sesam.entities()}  # master moved, the tag did not
    tag(config_repo, "prod", annotated=True, force=True)
    [on_tag] = github.push("acme", "config", "refs/tags/prod", before, config_repo.head)
    assert on_tag.status_code == 202 and b"queued" in on_tag.response_body
    wait_for(lambda: "tagged" in {e["_id"] for e in sesam.entities()}, what="the tagged release on the node")
