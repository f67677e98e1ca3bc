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
        """Open pull requests into `base` (first 100); None when unchanged since `etag` (a free 304)."""
        headers = {"If-None-Match": etag} if etag else {}
        path = f"/repos/{self.repo}/pulls?state=open&base={quote(base, safe='')}&per_page=100"
        response = await self.client.request("GET", path, headers=headers)
        if response.status_code == 304:
            return None, etag
        if response.status_code != 200:
            raise self.client.failure(response, f"listing open pull requests of {self.repo} into {base}")
        return [OpenPull.from_json(p) for p in response.json()], response.headers.get("etag")

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
