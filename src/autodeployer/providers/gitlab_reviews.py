"""GitLab's merge requests as pull-request previews need them (a `reviews.ReviewsClient`).

Facts relied on (GitLab REST v4): `GET /projects/:id/merge_requests/:iid` gives `iid`, `state`
(opened, closed, locked, merged), `target_branch`, `sha` (the head), `source_project_id` /
`target_project_id` (different for a fork) and `merge_status` / `detailed_merge_status`
(`unchecked`/`checking` while GitLab computes it, `can_be_merged`, `cannot_be_merged`);
`GET /projects/:id/merge_requests?state=opened&target_branch=B` lists them (paged with
`X-Next-Page`; no ETag, so a poll costs one request per page). Notes: `GET /projects/:id/
merge_requests/:iid/notes` (paged with `page`/`per_page` and `X-Next-Page`), `POST` with `body`
(201), `PUT .../notes/:note_id` with `body` (200; 404 when deleted), bodies up to 1,000,000
characters. The merge result is `refs/merge-requests/:iid/merge`, written by GitLab once it has checked
that the request merges cleanly (absent on conflicts); the head is `refs/merge-requests/:iid/head`.
Statuses go through `GitLabClient.create_status` (failure and error become `failed`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..reviews import OpenPull
from .base import call, failure
from .gitlab import GitLabClient

MAX_NOTE = 1_000_000  # GitLab's limit on a note's body
_MERGEABLE = {"can_be_merged": True, "cannot_be_merged": False, "cannot_be_merged_recheck": False}


class GitLabReviewsClient:
    """Merge requests, their notes and commit statuses of one project, over a `GitLabClient`."""

    provider = "gitlab"

    def __init__(self, client: GitLabClient) -> None:
        self.client = client
        self.repo = client.repo
        self._project = f"{client.api_url}/projects/{quote(client.repo, safe='')}"

    def merge_ref(self, number: int) -> str:
        return f"refs/merge-requests/{number}/merge"

    def head_ref(self, number: int) -> str | None:
        return f"refs/merge-requests/{number}/head"

    async def _json(self, method: str, path: str, ok: int, what: str, **kwargs: Any) -> Any:
        response = await call(self.client._http, method, self._project + path, self.client._headers, **kwargs)
        if response.status_code != ok:
            raise failure(response, what)
        return response.json()

    def _open_pull(self, data: dict[str, Any]) -> OpenPull:
        state = str(data.get("state", ""))
        fork = data.get("source_project_id") != data.get("target_project_id")
        source = data.get("source_project_id")
        return OpenPull(int(data["iid"]), "open" if state == "opened" else state, str(data.get("target_branch", "")),
                        str(data.get("sha") or ""), f"project {source}" if fork else self.repo, fork,
                        _MERGEABLE.get(str(data.get("merge_status", ""))))

    async def get(self, number: int) -> OpenPull:
        data = await self._json("GET", f"/merge_requests/{number}", 200,
                                f"reading merge request !{number} of {self.repo}")
        return self._open_pull(data)

    async def list_open(self, base: str, etag: str | None) -> tuple[list[OpenPull] | None, str | None]:
        """Every open merge request into `base`, page by page (GitLab sends no ETag here)."""
        found: list[OpenPull] = []
        page = "1"
        while page:
            response = await call(self.client._http, "GET",
                                  f"{self._project}/merge_requests?state=opened&target_branch={quote(base, safe='')}"
                                  f"&per_page=100&page={page}", self.client._headers)
            if response.status_code != 200:
                raise failure(response, f"listing open merge requests of {self.repo} into {base}")
            found += [self._open_pull(item) for item in response.json()]
            page = response.headers.get("x-next-page", "")
        return found, None

    async def find_comment(self, number: int, marker: str) -> int | None:
        """Id of the note whose body carries `marker`, following the pages to the end."""
        page = "1"
        while page:
            response = await call(self.client._http, "GET",
                                  f"{self._project}/merge_requests/{number}/notes?per_page=100&page={page}",
                                  self.client._headers)
            if response.status_code != 200:
                raise failure(response, f"listing notes of !{number} on {self.repo}")
            for note in response.json():
                if marker in str(note.get("body") or ""):
                    return int(note["id"])
            page = response.headers.get("x-next-page", "")
        return None

    async def create_comment(self, number: int, body: str) -> int:
        data = await self._json("POST", f"/merge_requests/{number}/notes", 201,
                                f"adding a note to !{number} of {self.repo}", json={"body": body[:MAX_NOTE]})
        return int(data["id"])

    async def update_comment(self, number: int, comment_id: int, body: str) -> bool:
        response = await call(self.client._http, "PUT", f"{self._project}/merge_requests/{number}/notes/{comment_id}",
                              self.client._headers, json={"body": body[:MAX_NOTE]})
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise failure(response, f"updating note {comment_id} of !{number} on {self.repo}")
        return True

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        await self.client.create_status(sha, state, context, description, target_url)
