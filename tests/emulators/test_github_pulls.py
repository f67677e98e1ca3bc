"""Pull requests of the GitHub emulator, driven by PyGithub and by plain git over the loopback
Git server (``refs/pull/N/head`` and ``refs/pull/N/merge``), plus the signed ``pull_request``
deliveries a receiver on loopback gets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from github import Auth, Github, GithubException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autodeployer.pull_requests import PullRequestsClient
from autodeployer.sources.github import GitHubClient
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.github import GitHubEmulator, sign_sha256
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

TOKEN = "ghp_pulls-SECRET"
HOOK_SECRET = "hook-SECRET-value"


@pytest.fixture
def work(tmp_path: Path) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "config.git", tmp_path / "work")
    repo.write({"a.txt": "base\n", "b.txt": "one\n"})
    repo.commit("initial")
    repo.push()
    repo.git("checkout", "-q", "-b", "feature")
    repo.write({"a.txt": "feature\n"})
    repo.commit("feature change")
    repo.push("feature")
    repo.git("checkout", "-q", "master")
    return repo


@pytest.fixture
def gh(work: WorkRepo) -> Iterator[tuple[GitHubEmulator, str]]:
    emulator = GitHubEmulator(token=TOKEN)
    emulator.add_repo("acme", "config", repo_id=7, default_branch="master", git_dir=work.bare_path)
    with emulator.serve() as server:
        yield emulator, server.url


def client(url: str) -> Github:
    return Github(auth=Auth.Token(TOKEN), base_url=url, retry=None, timeout=10,
                  seconds_between_requests=None, seconds_between_writes=None)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def _fetch_ref(tmp_path: Path, work: WorkRepo, ref: str) -> str:
    """Fetch a ref from the loopback smart-HTTP server into a fresh repository; its SHA."""
    server = GitHttpServer(work.bare_path.parent.parent, token=None)
    with server.serve():
        clone = tmp_path / "fetcher"
        if not clone.exists():
            _git(tmp_path, "init", "-q", str(clone))
        _git(clone, "fetch", "-q", server.url_for("acme/config.git"), f"+{ref}:refs/fetched")
    return _git(clone, "rev-parse", "refs/fetched")


def test_create_push_to_head_and_merge(gh: tuple[GitHubEmulator, str], work: WorkRepo,
                                      tmp_path: Path) -> None:
    emulator, url = gh
    master = work.git("rev-parse", "master").strip()
    work.write({"b.txt": "two\n"})  # the base moves on, touching another file: still mergeable
    moved_base = work.commit("base change")
    work.push()
    repo = client(url).get_repo("acme/config")
    pr = repo.create_pull(base="master", head="acme:feature", title="Feature", body="why")
    assert (pr.number, pr.state, pr.draft, pr.merged) == (1, "open", False, False)
    feature = work.git("rev-parse", "feature").strip()
    assert (pr.head.sha, pr.head.ref, pr.base.ref, pr.base.sha) == (feature, "feature", "master",
                                                                    moved_base)
    assert pr.head.repo.full_name == "acme/config" and pr.mergeable is True
    assert pr.html_url.endswith("/acme/config/pull/1") and pr.user.login == "autodeployer-bot"
    assert moved_base != master

    assert _fetch_ref(tmp_path, work, "refs/pull/1/head") == feature
    merge = _fetch_ref(tmp_path, work, "refs/pull/1/merge")
    fetcher = tmp_path / "fetcher"
    assert _git(fetcher, "show", f"{merge}:a.txt") == "feature"
    assert _git(fetcher, "show", f"{merge}:b.txt") == "two"
    assert _git(fetcher, "rev-parse", f"{merge}^1", f"{merge}^2").split() == [moved_base, feature]

    # Push to the head: the emulator follows it, and the head commit takes statuses.
    work.git("checkout", "-q", "feature")
    work.write({"c.txt": "more\n"})
    new_head = work.commit("more on feature")
    work.push("feature")
    emulator.pull_pushed("acme", "config", 1)
    pr = repo.get_pull(1)
    assert pr.head.sha == new_head
    assert _fetch_ref(tmp_path, work, "refs/pull/1/head") == new_head
    repo.get_commit(new_head).create_status("success", context="autodeployer/preview")
    assert repo.get_commit(new_head).get_combined_status().state == "success"

    assert [p.number for p in repo.get_pulls(state="open")] == [1]
    status = pr.merge(sha=new_head)
    assert status.merged
    assert _git(fetcher, "--git-dir", str(work.bare_path), "rev-parse", "master") == status.sha
    pr = repo.get_pull(1)
    assert (pr.state, pr.merged, pr.is_merged()) == ("closed", True, True)
    assert list(repo.get_pulls(state="open")) == []
    assert [p.number for p in repo.get_pulls(state="closed")] == [1]


def test_conflict_has_no_merge_ref_and_merge_is_405(gh: tuple[GitHubEmulator, str],
                                                    work: WorkRepo, tmp_path: Path) -> None:
    _, url = gh
    work.write({"a.txt": "conflicting\n"})
    work.commit("conflict on base")
    work.push()
    repo = client(url).get_repo("acme/config")
    pr = repo.create_pull(base="master", head="feature", title="Conflict")
    assert pr.mergeable is False
    refs = _git(tmp_path, "--git-dir", str(work.bare_path), "for-each-ref", "refs/pull")
    assert "refs/pull/1/head" in refs and "refs/pull/1/merge" not in refs
    with pytest.raises(GithubException) as refused:
        pr.merge()
    assert refused.value.status == 405


def test_bad_requests_name_the_field(gh: tuple[GitHubEmulator, str]) -> None:
    _, url = gh
    repo = client(url).get_repo("acme/config")
    with pytest.raises(GithubException) as missing:
        repo.create_pull(base="master", head="nope", title="x")
    assert missing.value.status == 422 and missing.value.data["errors"][0]["field"] == "head"
    repo.create_pull(base="master", head="feature", title="x")
    with pytest.raises(GithubException) as duplicate:
        repo.create_pull(base="master", head="feature", title="again")
    assert duplicate.value.status == 422


def test_list_etag_gives_304_until_something_changes(gh: tuple[GitHubEmulator, str]) -> None:
    _, url = gh
    client(url).get_repo("acme/config").create_pull(base="master", head="feature", title="x")
    headers = {"Authorization": f"token {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        first = http.get("/repos/acme/config/pulls")
        assert first.status_code == 200 and len(first.json()) == 1
        again = http.get("/repos/acme/config/pulls",
                         headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        http.patch("/repos/acme/config/pulls/1", json={"title": "renamed"})
        changed = http.get("/repos/acme/config/pulls",
                           headers={"If-None-Match": first.headers["etag"]})
        assert changed.status_code == 200 and changed.json()[0]["title"] == "renamed"


def test_pull_request_deliveries_are_signed(gh: tuple[GitHubEmulator, str], work: WorkRepo,
                                            tmp_path: Path) -> None:
    emulator, url = gh
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(b"ok")

    with LoopbackServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        repo = client(url).get_repo("acme/config")
        repo.create_hook("web", {"url": f"{receiver.url}/hook", "content_type": "json",
                                 "secret": HOOK_SECRET}, events=["pull_request"])
        start = len(emulator.deliveries)
        pr = repo.create_pull(base="master", head="feature", title="x", draft=True)
        emulator.wait_for_delivery("pull_request", start=start)
        emulator.wait_idle()
        work.git("checkout", "-q", "feature")
        work.write({"c.txt": "more\n"})
        after = work.commit("more")
        work.push("feature")
        emulator.pull_pushed("acme", "config", 1)
        pr.edit(state="closed")
        emulator.wait_idle()
        pr.edit(state="open")
        emulator.wait_idle()
    payloads = []
    for headers, body in received:
        if headers["x-github-event"] == "ping":  # sent when the hook is created
            continue
        assert headers["x-github-event"] == "pull_request" and headers["x-github-delivery"]
        assert headers["x-hub-signature-256"] == sign_sha256(HOOK_SECRET, body)
        assert HOOK_SECRET not in body.decode()
        payloads.append(json.loads(body))
    assert [p["action"] for p in payloads] == ["opened", "synchronize", "closed", "reopened"]
    sync = payloads[1]
    assert sync["after"] == after and sync["before"] != after and sync["number"] == 1
    assert sync["pull_request"]["head"]["sha"] == after and sync["pull_request"]["draft"] is True
    assert sync["repository"]["full_name"] == "acme/config" and sync["sender"]["login"]


def test_issue_comments_paginate_edit_delete_and_fail_on_demand(
        gh: tuple[GitHubEmulator, str]) -> None:
    emulator, url = gh
    repo = client(url).get_repo("acme/config")
    pr = repo.create_pull(base="master", head="feature", title="x")
    for n in range(5):
        pr.create_issue_comment(f"comment {n}")
    headers = {"Authorization": f"token {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        page = http.get("/repos/acme/config/issues/1/comments", params={"per_page": 2, "page": 2})
        assert [c["body"] for c in page.json()] == ["comment 2", "comment 3"]
        assert 'rel="next"' in page.headers["link"] and 'rel="last"' in page.headers["link"]
        assert http.get("/repos/acme/config/issues/9/comments").status_code == 404
    comments = list(pr.get_issue_comments())  # PyGithub follows the Link header
    assert [c.body for c in comments] == [f"comment {n}" for n in range(5)]
    first = comments[0]
    assert first.user.login == "autodeployer-bot" and "#issuecomment-" in first.html_url
    first.edit("edited")
    assert pr.get_issue_comment(first.id).body == "edited"
    comments[1].delete()
    assert [c.body for c in pr.get_issue_comments()][:2] == ["edited", "comment 2"]
    for status in (403, 422, 500):
        emulator.fail_comments("acme", "config", status)
        with pytest.raises(GithubException) as failed:
            pr.create_issue_comment("refused")
        assert failed.value.status == status
    assert "refused" not in [c.body for c in pr.get_issue_comments()]


def test_merge_ref_follows_the_base_and_drafts_become_ready(gh: tuple[GitHubEmulator, str],
                                                            work: WorkRepo) -> None:
    emulator, url = gh
    repo = client(url).get_repo("acme/config")
    hook = repo.create_hook("web", {"url": "http://127.0.0.1:9/hook", "content_type": "json"},
                            events=["pull_request"])
    pr = repo.create_pull(base="master", head="feature", title="x", draft=True)
    first_merge = pr.merge_commit_sha
    with pytest.raises(GithubException) as draft:
        pr.merge()
    assert draft.value.status == 405
    work.write({"b.txt": "base moved\n"})
    moved = work.commit("base moves after the PR was opened")
    work.push()
    pr = repo.get_pull(1)
    assert pr.base.sha == moved and pr.merge_commit_sha != first_merge
    bare = ("--git-dir", str(work.bare_path))
    merge_ref = work.git(*bare, "rev-parse", "refs/pull/1/merge").strip()
    assert merge_ref == pr.merge_commit_sha
    assert work.git(*bare, "rev-parse", f"{merge_ref}^1").strip() == moved
    start = len(emulator.deliveries)
    # PyGithub has no draft edit (github.com marks ready through GraphQL); the emulator's PATCH does.
    with httpx.Client(base_url=url, headers={"Authorization": f"token {TOKEN}"}) as http:
        assert http.patch("/repos/acme/config/pulls/1", json={"draft": False}).status_code == 200
    emulator.wait_idle()
    ready = emulator.wait_for_delivery("pull_request", hook_id=hook.id, start=start)
    assert ready.payload["action"] == "ready_for_review"
    assert ready.payload["pull_request"]["draft"] is False


def test_pull_request_from_a_fork(gh: tuple[GitHubEmulator, str], work: WorkRepo,
                                  tmp_path: Path) -> None:
    emulator, url = gh
    fork_bare = tmp_path / "git" / "bob" / "config.git"
    _git(tmp_path, "clone", "-q", "--bare", str(work.bare_path), str(fork_bare))
    fork = WorkRepo.create(fork_bare, tmp_path / "fork-work")
    fork.git("checkout", "-q", "-b", "fix")
    fork.write({"d.txt": "from the fork\n"})
    fork_head = fork.commit("fork change")
    fork.push("fix")
    emulator.add_repo("bob", "config", default_branch="master", git_dir=fork_bare)
    repo = client(url).get_repo("acme/config")
    pr = repo.create_pull(base="master", head="bob:fix", title="From a fork")
    assert pr.head.repo.full_name == "bob/config" and pr.head.label == "bob:fix"
    assert pr.head.sha == fork_head and pr.base.repo.full_name == "acme/config"
    assert [p.number for p in repo.get_pulls(head="bob:fix")] == [1]
    assert _fetch_ref(tmp_path, work, "refs/pull/1/head") == fork_head
    assert pr.merge().merged
    assert _git(tmp_path, "--git-dir", str(work.bare_path), "show", "master:d.txt") == "from the fork"
    with pytest.raises(GithubException) as unknown:
        repo.create_pull(base="master", head="carol:fix", title="x")
    assert unknown.value.status == 422 and unknown.value.data["errors"][0]["field"] == "head"


def test_open_pull_requests_are_listed_across_pages_most_recently_updated_first(
        gh: tuple[GitHubEmulator, str], work: WorkRepo) -> None:
    """The preview poll's listing (pull_requests.py) follows `Link: rel="next"` to the last page; sorted by
    update, a push to an older pull request's branch changes the first page, so the poll's If-None-Match
    answer is a 200, not a 304 that would hide it."""
    _, url = gh
    repo = client(url).get_repo("acme/config")
    for name in ("f1", "f2", "f3"):
        work.git("checkout", "-q", "-b", name, "master")
        work.write({f"{name}.txt": name})
        work.commit(name)
        work.push(name)
        repo.create_pull(base="master", head=name, title=name)
        time.sleep(0.01)  # distinct update times
    work.git("checkout", "-q", "master")

    async def listing(etag: str | None) -> tuple[list[int] | None, str | None]:
        async with httpx.AsyncClient() as http:
            pulls = PullRequestsClient(GitHubClient(url, TOKEN, "acme/config", http))
            pulls.page_size = 2
            found, new_etag = await pulls.list_open("master", etag)
            return (None if found is None else [p.number for p in found]), new_etag

    numbers, etag = asyncio.run(listing(None))
    assert numbers == [3, 2, 1]  # three pull requests over two pages
    assert asyncio.run(listing(etag)) == (None, etag)  # nothing changed: the first page's 304
    work.git("checkout", "-q", "f1")  # the oldest, on the second page, gets a new head
    work.write({"f1.txt": "again"})
    work.commit("f1 again")
    work.push("f1")
    work.git("checkout", "-q", "master")
    numbers, _ = asyncio.run(listing(etag))
    assert numbers == [1, 3, 2]
