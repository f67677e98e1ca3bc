"""Gitea's (and Forgejo's) pull requests as pull-request previews need them: the delivery parser and a
`reviews.ReviewsClient`.

Facts relied on (Gitea API v1 and webhook documentation; Forgejo is the same here):

* Deliveries: `X-Gitea-Event: pull_request` for every pull-request action (`X-Gitea-Event-Type` says
  `pull_request` or, for new commits, `pull_request_sync`; both are accepted as the event name). The
  body is close to GitHub's: `action` (opened, reopened, synchronized, closed, edited, ...), `number`,
  `pull_request` {`number`, `state` open/closed, `merged`, `mergeable`, `base` {`ref`, `sha`,
  `repo_id`, `repo`}, `head` {`ref`, `sha`, `repo_id`, `repo`}}, `repository` (the base), `sender`.
  A fork is a head repository other than the base one (`head.repo_id` != `base.repo_id`).
* `GET /repos/{owner}/{repo}/pulls/{index}` (fields as above), `GET /repos/{owner}/{repo}/pulls?
  state=open` (paged with `page`/`limit` and a `Link: rel="next"` header; no ETag used, no base filter:
  the base is compared here).
* A pull request's comments are its issue's: `GET /repos/{owner}/{repo}/issues/{index}/comments`
  (the whole list; a `Link` header is followed if one is sent), `POST` with `body` (201),
  `PATCH /repos/{owner}/{repo}/issues/comments/{id}` with `body` (200; 404 once deleted).
* Statuses go through `GiteaClient.create_status` (`/repos/{owner}/{repo}/statuses/{sha}`).
* Refs: `refs/pull/<index>/head` is the head, fetchable from the base repository. Gitea writes **no**
  test-merge ref, so the head is planned alone (`test_merge = False`) and the comment says so: the plan
  does not include what changed on the base branch since the pull request forked. (Merging locally with
  `git merge-tree` would need the plan machinery to plan a commit that exists only here; not done.)
"""

from __future__ import annotations

from typing import Any

from ..reviews import OpenPull, PullRequestEvent, ReviewDelivery
from .base import Ignored, Parsed, call, failure
from .gitea import GiteaClient

#: Gitea's pull-request actions in GitHub's words (the others, such as edited or labelled, plan nothing).
ACTIONS = {"opened": "opened", "reopened": "reopened", "synchronized": "synchronize", "closed": "closed"}
EVENTS = ("pull_request", "pull_request_sync")


def pull_request(payload: dict[str, Any]) -> Parsed:
    """A `pull_request` delivery as the pull-request event previews plan, or why it asks for nothing."""
    pull, repository = payload.get("pull_request"), payload.get("repository")
    if not isinstance(pull, dict) or not isinstance(repository, dict):
        return ReviewDelivery(None, "pull_request payload without pull_request or repository")
    action = str(payload.get("action") or "")
    if action not in ACTIONS:
        return Ignored(f"pull request action {action or '(none)'} changes no plan")
    head, base = pull.get("head"), pull.get("base")
    head = head if isinstance(head, dict) else {}
    base = base if isinstance(base, dict) else {}
    number = payload.get("number", pull.get("number"))
    values = {"repository.full_name": repository.get("full_name"), "number": number,
              "pull_request.base.ref": base.get("ref"), "pull_request.head.sha": head.get("sha")}
    missing = [name for name, value in values.items() if value in (None, "")]
    if missing or not isinstance(number, int):
        return ReviewDelivery(None, f"pull_request payload without {', '.join(missing) or 'a numeric number'}")
    repo = str(values["repository.full_name"])
    head_repo, fork = _head_repo(head, base, repo)
    return ReviewDelivery(PullRequestEvent(repo, number, ACTIONS[action], str(base["ref"]), str(head["sha"]),
                                           head_repo, fork, "gitea"))


def _head_repo(head: dict[str, Any], base: dict[str, Any], repo: str) -> tuple[str, bool]:
    """The head's repository and whether it is a fork (another repository than the base)."""
    raw = head.get("repo")
    name = str(raw.get("full_name") or repo) if isinstance(raw, dict) else repo
    head_id, base_id = head.get("repo_id"), base.get("repo_id")
    if head_id is not None and base_id is not None:
        return name, head_id != base_id
    return name, name.lower() != repo.lower()


class GiteaReviewsClient:
    """Pull requests, their (issue) comments and commit statuses of one repository, over a `GiteaClient`."""

    provider = "gitea"
    test_merge = False  # Gitea has no refs/pull/N/merge: the head is planned alone

    def __init__(self, client: GiteaClient) -> None:
        self.client = client
        self.repo = client.repo
        self._base = f"{client.api_url}/repos/{client.repo}"

    def merge_ref(self, number: int) -> str:
        return f"refs/pull/{number}/head"  # no test merge on Gitea; see `test_merge`

    def head_ref(self, number: int) -> str | None:
        return f"refs/pull/{number}/head"

    def _open_pull(self, data: dict[str, Any]) -> OpenPull:
        head, base = data.get("head") or {}, data.get("base") or {}
        head_repo, fork = _head_repo(head, base, self.repo)
        state = "merged" if data.get("merged") else str(data.get("state", ""))
        return OpenPull(int(data["number"]), state, str(base.get("ref", "")), str(head.get("sha") or ""),
                        head_repo, fork, data.get("mergeable"))

    async def get(self, number: int) -> OpenPull:
        response = await call(self.client._http, "GET", f"{self._base}/pulls/{number}", self.client._headers)
        if response.status_code != 200:
            raise failure(response, f"reading pull request #{number} of {self.repo}")
        return self._open_pull(response.json())

    async def list_open(self, base: str, etag: str | None) -> tuple[list[OpenPull] | None, str | None]:
        """Every open pull request into `base`, page by page (`Link: rel="next"`)."""
        found: list[OpenPull] = []
        url: str | None = f"{self._base}/pulls?state=open&limit=50&page=1"
        while url:
            response = await call(self.client._http, "GET", url, self.client._headers)
            if response.status_code != 200:
                raise failure(response, f"listing open pull requests of {self.repo}")
            found += [p for p in (self._open_pull(item) for item in response.json()) if p.base_ref == base]
            url = response.links.get("next", {}).get("url")
        return found, None

    async def find_comment(self, number: int, marker: str) -> int | None:
        """Id of the issue comment whose body carries `marker`."""
        url: str | None = f"{self._base}/issues/{number}/comments"
        while url:
            response = await call(self.client._http, "GET", url, self.client._headers)
            if response.status_code != 200:
                raise failure(response, f"listing comments of #{number} on {self.repo}")
            for comment in response.json():
                if marker in str(comment.get("body") or ""):
                    return int(comment["id"])
            url = response.links.get("next", {}).get("url")
        return None

    async def create_comment(self, number: int, body: str) -> int:
        response = await call(self.client._http, "POST", f"{self._base}/issues/{number}/comments",
                              self.client._headers, json={"body": body})
        if response.status_code != 201:
            raise failure(response, f"adding a comment to #{number} of {self.repo}")
        return int(response.json()["id"])

    async def update_comment(self, number: int, comment_id: int, body: str) -> bool:
        response = await call(self.client._http, "PATCH", f"{self._base}/issues/comments/{comment_id}",
                              self.client._headers, json={"body": body})
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 204):
            raise failure(response, f"updating comment {comment_id} of #{number} on {self.repo}")
        return True

    async def create_status(
        self, sha: str, state: str, context: str, description: str, target_url: str | None = None
    ) -> None:
        await self.client.create_status(sha, state, context, description, target_url)
