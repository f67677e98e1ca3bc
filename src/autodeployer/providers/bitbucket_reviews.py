"""Bitbucket Server's / Data Center's pull requests as previews need them: the delivery parser and a
`reviews.ReviewsClient`. Bitbucket Cloud's pull requests are not handled (its API is not implemented).

Facts relied on (Bitbucket Data Center REST 1.0 and "Event payload" pages):

* Deliveries: `X-Event-Key` pr:opened, pr:from_ref_updated (new commits on the source branch; the body
  adds `previousFromHash`), pr:modified (title, description or target branch; `previousTarget` only when
  the target changed), pr:reopened, pr:merged, pr:declined, pr:deleted. The body's `pullRequest` has `id`,
  `state` (OPEN, MERGED, DECLINED), `fromRef` {`id`, `displayId`, `latestCommit`, `repository` {`slug`,
  `project.key`}}, `toRef` {the same, the target}. A fork is a `fromRef.repository` other than the target's.
* `GET /rest/api/1.0/projects/{key}/repos/{slug}/pull-requests/{id}`; open ones into a branch:
  `GET .../pull-requests?state=OPEN&direction=INCOMING&at=refs/heads/B` (paged: `start`, `limit`,
  `isLastPage`, `nextPageStart`); `GET .../pull-requests/{id}/merge` says `canMerge`, `conflicted` and
  `outcome` (CLEAN, CONFLICTED, UNKNOWN).
* Comments: `POST .../pull-requests/{id}/comments` with `text` (201: `id`, `version`, `text`);
  `GET .../comments/{commentId}` (404 once deleted); `PUT .../comments/{commentId}` with `text` and the
  current `version` (409 when it is stale). They are listed through `GET .../pull-requests/{id}/
  activities` (paged as above; `action` COMMENTED with the `comment`).
* Build statuses as for deploys (`BitbucketServerClient.create_status`).
* Refs: `refs/pull-requests/<id>/from` (the head) and `refs/pull-requests/<id>/merge` (the head merged
  into the target, written by Bitbucket once it checked the merge; absent on conflicts).
"""

from __future__ import annotations

from typing import Any

from ..reviews import OpenPull, PullRequestEvent, ReviewDelivery
from .base import Ignored, Parsed, call, failure
from .bitbucket import BitbucketServerClient

#: Bitbucket's pull-request events in GitHub's action words.
ACTIONS = {"pr:opened": "opened", "pr:from_ref_updated": "synchronize", "pr:reopened": "reopened",
           "pr:modified": "synchronize", "pr:merged": "closed", "pr:declined": "closed", "pr:deleted": "closed"}
_STATES = {"OPEN": "open", "MERGED": "merged", "DECLINED": "closed"}


def _repo_path(ref: dict[str, Any]) -> str | None:
    repository = ref.get("repository")
    project = repository.get("project") if isinstance(repository, dict) else None
    key = project.get("key") if isinstance(project, dict) else None
    slug = repository.get("slug") if isinstance(repository, dict) else None
    return f"{key}/{slug}" if isinstance(key, str) and isinstance(slug, str) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def pull_request(event: str, payload: dict[str, Any]) -> Parsed:
    """A `pr:*` delivery as the pull-request event previews plan, or why it asks for nothing."""
    if event not in ACTIONS:
        return Ignored(f"{event} events change no plan")
    if event == "pr:modified" and "previousTarget" not in payload:
        return Ignored("pull request modified without a new target branch changes no plan")
    pull = payload.get("pullRequest")
    if not isinstance(pull, dict):
        return ReviewDelivery(None, f"{event} payload without pullRequest")
    source, target = _mapping(pull.get("fromRef")), _mapping(pull.get("toRef"))
    repo, head_repo = _repo_path(target), _repo_path(source)
    values = {"pullRequest.id": pull.get("id"), "pullRequest.toRef.displayId": target.get("displayId"),
              "pullRequest.fromRef.latestCommit": source.get("latestCommit"),
              "pullRequest.toRef.repository": repo}
    missing = [name for name, value in values.items() if value in (None, "")]
    if missing or not isinstance(values["pullRequest.id"], int):
        return ReviewDelivery(None, f"{event} payload without {', '.join(missing) or 'a numeric pullRequest.id'}")
    assert repo is not None
    fork = head_repo is not None and head_repo.lower() != repo.lower()
    return ReviewDelivery(PullRequestEvent(repo, int(pull["id"]), ACTIONS[event], str(target["displayId"]),
                                           str(source["latestCommit"]), head_repo or repo, fork, "bitbucket"))


class BitbucketReviewsClient:
    """Pull requests, their comments and build statuses of one repository, over a `BitbucketServerClient`."""

    provider = "bitbucket"

    def __init__(self, client: BitbucketServerClient) -> None:
        self.client = client
        self.repo = client.repo
        key, _, slug = client.repo.partition("/")
        self._base = f"{client.api_url}/rest/api/1.0/projects/{key}/repos/{slug}/pull-requests"

    def merge_ref(self, number: int) -> str:
        return f"refs/pull-requests/{number}/merge"

    def head_ref(self, number: int) -> str | None:
        return f"refs/pull-requests/{number}/from"

    async def _get(self, url: str, what: str) -> Any:
        response = await call(self.client._http, "GET", url, self.client._headers)
        if response.status_code != 200:
            raise failure(response, what)
        return response.json()

    def _open_pull(self, data: dict[str, Any], mergeable: bool | None) -> OpenPull:
        source, target = data.get("fromRef") or {}, data.get("toRef") or {}
        head_repo = _repo_path(source) or self.repo
        state = str(data.get("state", ""))
        return OpenPull(int(data["id"]), _STATES.get(state, state.lower()), str(target.get("displayId", "")),
                        str(source.get("latestCommit") or ""), head_repo, head_repo.lower() != self.repo.lower(),
                        mergeable)

    async def get(self, number: int) -> OpenPull:
        """The pull request, with whether it merges (asked of `/merge` while it is open)."""
        data = await self._get(f"{self._base}/{number}", f"reading pull request #{number} of {self.repo}")
        mergeable: bool | None = None
        if data.get("state") == "OPEN":
            merge = await self._get(f"{self._base}/{number}/merge",
                                    f"reading the mergeability of pull request #{number} of {self.repo}")
            mergeable = not merge.get("conflicted", False)
        return self._open_pull(data, mergeable if data.get("state") == "OPEN" else False)

    async def _pages(self, url: str, what: str) -> list[dict[str, Any]]:
        """Every value of a paged list (`start` = the previous page's `nextPageStart`)."""
        values: list[dict[str, Any]] = []
        start: int | None = 0
        separator = "&" if "?" in url else "?"
        while start is not None:
            page = await self._get(f"{url}{separator}limit=100&start={start}", what)
            values += page.get("values") or []
            start = None if page.get("isLastPage", True) else page.get("nextPageStart")
        return values

    async def list_open(self, base: str, etag: str | None) -> tuple[list[OpenPull] | None, str | None]:
        """Every open pull request into `base` (Bitbucket sends no ETag)."""
        pulls = await self._pages(f"{self._base}?state=OPEN&direction=INCOMING&at=refs/heads/{base}",
                                  f"listing open pull requests of {self.repo} into {base}")
        return [p for p in (self._open_pull(item, True) for item in pulls) if p.base_ref == base], None

    async def find_comment(self, number: int, marker: str) -> int | None:
        """Id of the comment carrying `marker`, from the pull request's activities, page by page."""
        activities = await self._pages(f"{self._base}/{number}/activities",
                                       f"listing activities of pull request #{number} on {self.repo}")
        for activity in activities:
            comment = activity.get("comment") if activity.get("action") == "COMMENTED" else None
            if isinstance(comment, dict) and marker in str(comment.get("text") or ""):
                return int(comment["id"])
        return None

    async def create_comment(self, number: int, body: str) -> int:
        response = await call(self.client._http, "POST", f"{self._base}/{number}/comments", self.client._headers,
                              json={"text": body})
        if response.status_code != 201:
            raise failure(response, f"adding a comment to pull request #{number} of {self.repo}")
        return int(response.json()["id"])

    async def update_comment(self, number: int, comment_id: int, body: str) -> bool:
        """PUT needs the comment's current `version`, read just before (False once it is deleted)."""
        url = f"{self._base}/{number}/comments/{comment_id}"
        current = await call(self.client._http, "GET", url, self.client._headers)
        if current.status_code == 404:
            return False
        if current.status_code != 200:
            raise failure(current, f"reading comment {comment_id} of pull request #{number} on {self.repo}")
        response = await call(self.client._http, "PUT", url, self.client._headers,
                              json={"text": body, "version": current.json().get("version", 0)})
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise failure(response, f"updating comment {comment_id} of pull request #{number} on {self.repo}")
        return True

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        await self.client.create_status(sha, state, context, description, target_url)
