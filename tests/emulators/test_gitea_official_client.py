"""The Gitea (Forgejo) emulator driven by gitea-api-client, a client generated from Gitea's published
OpenAPI (swagger) description: every answer is parsed into the swagger's pydantic models, so a field of
the wrong type or a missing required field fails here.

Each test makes, through that client, the calls the product makes (``providers/gitea.py``,
``providers/gitea_reviews.py``): hooks (listed page by page, following `Link` rel="next" as the
product does), commit statuses, pull requests and their issue comments, against a repository linked to
a real Git repository on disk. The client is asynchronous; each test runs one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from gitea_api_client import (
    ApiClient,
    Configuration,
    CreateHookOption,
    CreateIssueCommentOption,
    CreatePullRequestOption,
    CreateStatusOption,
    EditHookOption,
    EditIssueCommentOption,
    EditPullRequestOption,
    IssueApi,
    RepositoryApi,
)
from gitea_api_client.api_response import ApiResponse
from gitea_api_client.exceptions import (
    ApiException,
    ConflictException,
    NotFoundException,
    UnauthorizedException,
    UnprocessableEntityException,
)
from requests.utils import parse_header_links

from autodeployer_emulators.gitea import GiteaEmulator
from autodeployer_emulators.gitserver import WorkRepo

TOKEN = "gitea-official-client-SECRET"
OWNER, NAME = "acme", "config"


@pytest.fixture
def tea(config_repo: WorkRepo, tmp_path: Path) -> Iterator[GiteaEmulator]:
    emulator = GiteaEmulator(token=TOKEN)
    emulator.add_repo(f"{OWNER}/{NAME}", default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    with emulator.serve():
        yield emulator


def run(emulator: GiteaEmulator, body: Callable[[RepositoryApi, IssueApi], Awaitable[None]],
        token: str = TOKEN) -> None:
    """Run `body` with the client's two API groups, authenticated as the product is (`token <t>`)."""
    async def main() -> None:
        config = Configuration(host=emulator.api_url, api_key={"AuthorizationHeaderToken": token},
                               api_key_prefix={"AuthorizationHeaderToken": "token"})
        async with ApiClient(config) as api:
            await body(RepositoryApi(api), IssueApi(api))

    asyncio.run(main())


def next_page(response: ApiResponse[Any]) -> int | None:
    """The page that `Link: <...>; rel="next"` names, None on the last page."""
    links = parse_header_links((response.headers or {}).get("link", "") or "")
    url = next((link["url"] for link in links if link.get("rel") == "next"), None)
    return int(parse_qs(urlsplit(url).query)["page"][0]) if url else None


def feature(repo: WorkRepo, name: str, text: str) -> str:
    repo.git("checkout", "-q", "-B", name, "master")
    repo.write({f"{name}.txt": text})
    sha = repo.commit(f"on {name}")
    repo.push(name, force=True)
    repo.git("checkout", "-q", "master")
    return sha


def test_hooks_paged_created_edited_deleted(tea: GiteaEmulator) -> None:
    tea.max_page_size = 2

    async def body(repos: RepositoryApi, _: IssueApi) -> None:
        made = [await repos.repo_create_hook(OWNER, NAME, CreateHookOption(
            type="gitea", config={"url": f"http://127.0.0.1:9/h{i}", "content_type": "json", "secret": f"s{i}"},
            events=["push"], active=True)) for i in range(5)]
        assert [h.config["url"] for h in made if h.config] == [f"http://127.0.0.1:9/h{i}" for i in range(5)]
        assert made[0].type == "gitea" and made[0].active is True and made[0].events == ["push"]
        assert made[0].config and "secret" not in made[0].config

        seen: list[int] = []
        page: int | None = 1
        while page:
            response = await repos.repo_list_hooks_with_http_info(OWNER, NAME, page=page, limit=50)
            assert response.headers and response.headers["x-total-count"] == "5"
            seen += [h.id for h in response.data if h.id is not None]
            page = next_page(response)
        assert seen == [h.id for h in made]
        assert len(await repos.repo_list_hooks(OWNER, NAME, page=3, limit=2)) == 1

        hook_id = made[1].id
        assert hook_id is not None
        edited = await repos.repo_edit_hook(OWNER, NAME, hook_id, EditHookOption(
            config={"url": "http://127.0.0.1:9/moved", "content_type": "json"}, events=["push", "pull_request"]))
        assert edited.config and edited.config["url"] == "http://127.0.0.1:9/moved"
        assert edited.events == ["push", "pull_request"]
        assert (await repos.repo_get_hook(OWNER, NAME, hook_id)).events == ["push", "pull_request"]
        assert tea.hooks(f"{OWNER}/{NAME}")[1]["config"]["secret"] == "s1"  # kept when not given

        await repos.repo_delete_hook(OWNER, NAME, hook_id)
        with pytest.raises(NotFoundException):
            await repos.repo_get_hook(OWNER, NAME, hook_id)
        with pytest.raises(UnprocessableEntityException):
            await repos.repo_create_hook(OWNER, NAME, CreateHookOption(type="gitea", config={"url": "http://x/"}))

    run(tea, body)


def test_commit_statuses(tea: GiteaEmulator, config_repo: WorkRepo) -> None:
    tea.max_page_size = 2
    sha = config_repo.head

    async def body(repos: RepositoryApi, _: IssueApi) -> None:
        made = [await repos.repo_create_status(OWNER, NAME, sha, CreateStatusOption(
            state=state, context="autodeployer/node", description=f"d{i}", target_url="http://127.0.0.1/r"))
            for i, state in enumerate(["pending", "failure", "success"])]
        assert [s.status for s in made] == ["pending", "failure", "success"]
        assert made[0].context == "autodeployer/node" and made[0].target_url == "http://127.0.0.1/r"
        newest = await repos.repo_list_statuses_with_http_info(OWNER, NAME, sha)
        assert [s.status for s in newest.data] == ["success", "failure"]  # newest first, 2 a page
        assert newest.headers and newest.headers["x-total-count"] == "3" and next_page(newest) == 2
        oldest = await repos.repo_list_statuses(OWNER, NAME, sha, sort="oldest", limit=5)
        assert [s.status for s in oldest] == ["pending", "failure"]
        only = await repos.repo_list_statuses(OWNER, NAME, sha, state="failure")
        assert [s.description for s in only] == ["d1"]
        by_ref = await repos.repo_list_statuses_by_ref(OWNER, NAME, sha, page=2, limit=2)
        assert [s.status for s in by_ref] == ["pending"]
        with pytest.raises(UnprocessableEntityException):
            # the client refuses the state itself: build the body past its check to see the host's answer
            await repos.repo_create_status(OWNER, NAME, sha, CreateStatusOption.model_construct(state="running"))
        with pytest.raises(NotFoundException):
            await repos.repo_create_status(OWNER, NAME, "e" * 40, CreateStatusOption(state="success"))

    run(tea, body)


def test_pull_requests_and_comments(tea: GiteaEmulator, config_repo: WorkRepo) -> None:
    tea.max_page_size = 2
    heads = [feature(config_repo, f"f{i}", f"{i}\n") for i in range(3)]

    async def body(repos: RepositoryApi, issues: IssueApi) -> None:
        for i in range(3):
            made = await repos.repo_create_pull_request(OWNER, NAME, CreatePullRequestOption(
                head=f"f{i}", base="master", title=f"T{i}"))
            assert made.number == i + 1
        with pytest.raises(ConflictException):
            await repos.repo_create_pull_request(OWNER, NAME, CreatePullRequestOption(head="f0", base="master"))

        pull = await repos.repo_get_pull_request(OWNER, NAME, 2)
        assert (pull.number, pull.state, pull.merged, pull.mergeable) == (2, "open", False, True)
        assert pull.head and pull.base and (pull.head.ref, pull.head.sha, pull.base.ref) == ("f1", heads[1], "master")
        assert pull.head.repo_id == pull.base.repo_id and pull.base.repo and pull.base.repo.full_name == "acme/config"

        numbers: list[int] = []
        page: int | None = 1
        while page:  # as the product lists open pull requests: limit=50, Link rel="next"
            response = await repos.repo_list_pull_requests_with_http_info(OWNER, NAME, state="open", page=page,
                                                                          limit=50)
            numbers += [p.number for p in response.data if p.number is not None]
            page = next_page(response)
        assert numbers == [3, 2, 1]  # newest first
        into = await repos.repo_list_pull_requests(OWNER, NAME, base_branch="master", sort="oldest", limit=5)
        assert [p.number for p in into] == [1, 2]
        assert await repos.repo_list_pull_requests(OWNER, NAME, base_branch="release") == []
        closed = await repos.repo_edit_pull_request(OWNER, NAME, 2, EditPullRequestOption(state="closed"))
        assert closed.state == "closed"
        assert [p.number for p in await repos.repo_list_pull_requests(OWNER, NAME, state="closed")] == [2]

        made = [await issues.issue_create_comment(OWNER, NAME, 1, CreateIssueCommentOption(
            body=f"<!-- autodeployer --> {i}")) for i in range(3)]
        assert made[0].body == "<!-- autodeployer --> 0" and made[0].user and made[0].user.login
        listed = await issues.issue_get_comments(OWNER, NAME, 1)
        assert [c.id for c in listed] == [c.id for c in made]
        comment_id = made[1].id
        assert comment_id is not None
        edited = await issues.issue_edit_comment(OWNER, NAME, comment_id, EditIssueCommentOption(body="edited"))
        assert edited is not None and edited.body == "edited"
        await issues.issue_delete_comment(OWNER, NAME, comment_id)
        with pytest.raises(NotFoundException):
            await issues.issue_edit_comment(OWNER, NAME, comment_id, EditIssueCommentOption(body="again"))
        with pytest.raises(UnprocessableEntityException):
            await issues.issue_create_comment(OWNER, NAME, 1, CreateIssueCommentOption(body=""))
        with pytest.raises(NotFoundException):
            await repos.repo_get_pull_request(OWNER, NAME, 99)

    run(tea, body)


def test_wrong_token_and_unknown_repository(tea: GiteaEmulator) -> None:
    async def refused(repos: RepositoryApi, _: IssueApi) -> None:
        with pytest.raises(UnauthorizedException) as failed:
            await repos.repo_list_hooks(OWNER, NAME)
        assert failed.value.status == 401
        with pytest.raises(UnauthorizedException):
            await repos.repo_create_hook(OWNER, NAME, CreateHookOption(
                type="gitea", config={"url": "http://127.0.0.1:9/", "content_type": "json"}))

    run(tea, refused, token="gitea-wrong")
    assert tea.hooks(f"{OWNER}/{NAME}") == []

    async def unknown(repos: RepositoryApi, _: IssueApi) -> None:
        with pytest.raises(NotFoundException) as missing:
            await repos.repo_list_hooks(OWNER, "missing")
        assert isinstance(missing.value, ApiException) and missing.value.status == 404

    run(tea, unknown)
