"""GitHub's pull-request and issue-comment API, as pull-request previews need it.

Kept beside `sources/github.py` (hooks, statuses, heads) rather than in it: previews are the only user,
and the calls go through that module's `GitHubClient` plumbing (rate limits, errors that name the
request, the token in the Authorization header only, never in a URL or a message)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .reviews import OpenPull
from .sources.github import GitHubClient, GitHubError

MAX_COMMENT = 65536  # GitHub's limit on an issue comment's body


class PullRequestsClient:
    """Pull requests and their comments of one repository, over a `GitHubClient`."""

    provider = "github"
    page_size = 100  # GitHub's largest page

    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self.repo = client.repo

    def merge_ref(self, number: int) -> str:
        return f"refs/pull/{number}/merge"

    def head_ref(self, number: int) -> str | None:
        return None  # GitHub: the test merge only, as previews always planned

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        await self.client.create_status(sha, state, context, description, target_url)

    async def _json(self, method: str, path: str, ok: int, what: str, **kwargs: Any) -> Any:
        # The shared plumbing of GitHubClient: one place for rate limits and error messages.
        response = await self.client.request(method, path, **kwargs)
        if response.status_code != ok:
            raise self.client.failure(response, what)
        return response.json()

    async def get(self, number: int) -> OpenPull:
        data = await self._json("GET", f"/repos/{self.repo}/pulls/{number}", 200,
                                f"reading pull request #{number} of {self.repo}")
        return OpenPull.from_json(data)

    async def list_open(self, base: str, etag: str | None) -> tuple[list[OpenPull] | None, str | None]:
        """Every open pull request into `base`, page by page; None when the first page is unchanged since
        `etag` (a free 304). Most recently updated first, so a new pull request or a new head always changes
        the first page; one closed beyond it is dropped by its webhook, or once the first page changes."""
        headers = {"If-None-Match": etag} if etag else {}
        url = (f"/repos/{self.repo}/pulls?state=open&base={quote(base, safe='')}"
               f"&sort=updated&direction=desc&per_page={self.page_size}")
        what = f"listing open pull requests of {self.repo} into {base}"
        response = await self.client.request("GET", url, headers=headers)
        if response.status_code == 304:
            return None, etag
        first_etag = response.headers.get("etag")
        found: list[OpenPull] = []
        while True:
            if response.status_code != 200:
                raise self.client.failure(response, what)
            found += [OpenPull.from_json(p) for p in response.json()]
            following = response.links.get("next", {}).get("url")
            if not following:
                return found, first_etag
            response = await self.client.request("GET", following)

    async def find_comment(self, number: int, marker: str) -> int | None:
        """Id of the comment whose body carries `marker`, following the pages to the end."""
        url: str | None = f"/repos/{self.repo}/issues/{number}/comments?per_page=100"
        while url:
            response = await self.client.request("GET", url)
            if response.status_code != 200:
                raise self.client.failure(response, f"listing comments of #{number} on {self.repo}")
            for comment in response.json():
                if marker in str(comment.get("body") or ""):
                    return int(comment["id"])
            url = response.links.get("next", {}).get("url")
        return None

    async def create_comment(self, number: int, body: str) -> int:
        data = await self._json("POST", f"/repos/{self.repo}/issues/{number}/comments", 201,
                                f"commenting on #{number} of {self.repo}", json={"body": body[:MAX_COMMENT]})
        return int(data["id"])

    async def update_comment(self, number: int, comment_id: int, body: str) -> bool:
        """False when the comment is gone (deleted by someone): the caller creates a new one."""
        response = await self.client.request("PATCH", f"/repos/{self.repo}/issues/comments/{comment_id}",
                                           json={"body": body[:MAX_COMMENT]})
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise self.client.failure(response, f"updating comment {comment_id} on {self.repo}")
        return True


__all__ = ["GitHubError", "OpenPull", "PullRequestsClient"]
