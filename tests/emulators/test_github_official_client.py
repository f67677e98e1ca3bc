"""The GitHub emulator driven by PyGithub, GitHub's independent client library.

Each test makes the calls the product (``sources/github.py``, ``github.py``) and its tests make,
through PyGithub, against a repository whose content is a real Git repository on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from github import Auth, Github, GithubException

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo

TOKEN = "ghp_official-client-SECRET"
HOOK_URL = "http://127.0.0.1:9/webhook"


@pytest.fixture
def work(tmp_path: Path) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "acme" / "config.git", tmp_path / "work", branch="master")
    repo.write({"pipes/orders.conf.json": '{"_id": "orders", "type": "pipe"}\n', "README.md": "x\n"})
    repo.commit("initial configuration")
    repo.write({"pipes/orders.conf.json": '{"_id": "orders", "type": "pipe", "x": 1}\n',
                "README.md": None})
    repo.commit("second")
    repo.push()
    return repo


@pytest.fixture
def gh(work: WorkRepo) -> Iterator[tuple[GitHubEmulator, str]]:
    emulator = GitHubEmulator(token=TOKEN)
    emulator.add_repo("acme", "config", repo_id=42, default_branch="master", git_dir=work.bare_path)
    emulator.add_repo("acme", "secret", default_branch="master", private=True)
    with emulator.serve() as server:
        yield emulator, server.url


def client(url: str, token: str | None = TOKEN) -> Github:
    auth = Auth.Token(token) if token is not None else None
    # No pause between writes: PyGithub's default second per write is for github.com's limits.
    return Github(auth=auth, base_url=url, retry=None, timeout=10,
                  seconds_between_requests=None, seconds_between_writes=None)


def test_status_on_a_sha_the_repository_lacks_is_422(gh: tuple[GitHubEmulator, str],
                                                     work: WorkRepo) -> None:
    _, url = gh
    repo = client(url).get_repo("acme/config")
    pending = repo.get_commit(work.head).create_status("pending", context="autodeployer/node")
    assert pending.state == "pending"
    # A lazy commit: the status POST is the first request that names the unknown SHA.
    lazy = Github(auth=Auth.Token(TOKEN), base_url=url, retry=None, lazy=True,
                  seconds_between_writes=None)
    with pytest.raises(GithubException) as refused:
        lazy.get_repo("acme/config").get_commit("e" * 40).create_status("pending")
    assert refused.value.status == 422
    assert "No commit found for SHA" in refused.value.data["message"]
    with pytest.raises(GithubException) as unknown_read:
        repo.get_commit("d" * 40)
    assert unknown_read.value.status == 422
    repo.get_commit(work.head).create_status(
        "success", target_url="http://127.0.0.1/", description="synced", context="autodeployer/node")
    combined = repo.get_commit(work.head).get_combined_status()
    assert combined.state == "success" and combined.total_count == 1
    assert [s.state for s in repo.get_commit(work.head).get_statuses()] == ["success", "pending"]


def test_full_commit_object_from_git(gh: tuple[GitHubEmulator, str], work: WorkRepo) -> None:
    _, url = gh
    commit = client(url).get_repo("acme/config").get_commit("master")
    assert commit.sha == work.head
    assert commit.commit.message == "second"
    assert commit.commit.author.name and commit.commit.committer.email
    assert len(commit.parents) == 1
    assert (commit.stats.additions, commit.stats.deletions) == (1, 2)
    assert {(f.filename, f.status) for f in commit.files} == {
        ("pipes/orders.conf.json", "modified"), ("README.md", "removed")}


def test_branches_and_refs(gh: tuple[GitHubEmulator, str], work: WorkRepo) -> None:
    _, url = gh
    repo = client(url).get_repo("acme/config")
    assert [(b.name, b.commit.sha) for b in repo.get_branches()] == [("master", work.head)]
    branch = repo.get_branch("master")
    assert branch.commit.sha == work.head and branch.protected is False
    assert branch.commit.commit.message == "second"
    ref = repo.get_git_ref("heads/master")
    assert (ref.ref, ref.object.sha, ref.object.type) == ("refs/heads/master", work.head, "commit")
    with pytest.raises(GithubException) as missing:
        repo.get_branch("nope")
    assert missing.value.status == 404
    with pytest.raises(GithubException) as no_ref:
        repo.get_git_ref("heads/nope")
    assert no_ref.value.status == 404


def test_user_and_bad_token(gh: tuple[GitHubEmulator, str]) -> None:
    emulator, url = gh
    assert client(url).get_user().login == emulator.user_login
    with pytest.raises(GithubException) as bad:
        _ = client(url, "ghp_wrong").get_user().login  # the user is fetched lazily, on this first attribute read
    assert bad.value.status == 401


def test_unauthenticated_reads_of_a_public_repository(gh: tuple[GitHubEmulator, str],
                                                      work: WorkRepo) -> None:
    _, url = gh
    anonymous = client(url, None)
    repo = anonymous.get_repo("acme/config")
    assert repo.default_branch == "master" and repo.get_commit("master").sha == work.head
    with pytest.raises(GithubException) as private:
        anonymous.get_repo("acme/secret")
    assert private.value.status == 404
    with pytest.raises(GithubException) as write:
        repo.get_commit(work.head).create_status("pending")
    assert write.value.status == 401
    with pytest.raises(GithubException) as hooks:
        list(repo.get_hooks())
    assert hooks.value.status == 401


def test_hooks_paginated_duplicates_and_edit(gh: tuple[GitHubEmulator, str]) -> None:
    emulator, url = gh
    repo = client(url).get_repo("acme/config")
    config = {"url": HOOK_URL, "content_type": "json", "secret": "s3cret", "insecure_ssl": "0"}
    hook = repo.create_hook("web", config, events=["push"], active=True)
    assert hook.config["secret"] == "********" and hook.events == ["push"]
    # GitHub's rule (REST docs, "Create a repository webhook"): hooks may share a config only
    # when their events do not overlap; the config is the whole object, not the URL alone.
    with pytest.raises(GithubException) as duplicate:
        repo.create_hook("web", config, events=["push", "ping"], active=True)
    assert duplicate.value.status == 422
    assert duplicate.value.data["errors"][0]["resource"] == "Hook"
    other = repo.create_hook("web", config, events=["pull_request"], active=True)
    assert other.id != hook.id
    form = repo.create_hook("web", {**config, "content_type": "form"}, events=["push"])
    assert form.id not in (hook.id, other.id)
    for n in range(35):
        repo.create_hook("web", {**config, "url": f"http://127.0.0.1:9/h{n}"}, events=["push"])
    assert len(list(repo.get_hooks())) == 38  # PyGithub follows the Link header over two pages
    hook.edit("web", config, events=["push"], active=False)
    assert repo.get_hook(hook.id).active is False
    hook.delete()
    with pytest.raises(GithubException) as gone:
        repo.get_hook(hook.id)
    assert gone.value.status == 404
    emulator.wait_idle()


def test_missing_hook_scope_is_403(gh: tuple[GitHubEmulator, str]) -> None:
    emulator, url = gh
    emulator.token_scopes = {"repo:status"}
    repo = client(url).get_repo("acme/config")
    with pytest.raises(GithubException) as denied:
        list(repo.get_hooks())
    assert denied.value.status == 403
