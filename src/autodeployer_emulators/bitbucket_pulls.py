"""Pull requests of the emulated Bitbucket Server / Data Center: their model, `refs/pull-requests/<id>/
from` and `/merge` in the linked bare repository, comments with their versions, activities, and `pr:*`
deliveries (`bitbucket.py` routes the HTTP here).

Facts it follows (Bitbucket Data Center REST 1.0 reference and "Event payload" page):

* `GET /rest/api/1.0/projects/{key}/repos/{slug}/pull-requests/{id}`: `id`, `version`, `title`,
  `state` (OPEN, DECLINED, MERGED), `open`, `closed`, `fromRef`/`toRef` {`id` `refs/heads/B`,
  `displayId` B, `latestCommit`, `repository` {`slug`, `id`, `name`, `project` {`key`}}},
  `createdDate`/`updatedDate` (epoch ms), `links.self`. `GET .../pull-requests?state=OPEN|DECLINED|
  MERGED|ALL&direction=INCOMING&at=refs/heads/B&order=NEWEST|OLDEST` lists them (newest first by
  default), paged (`start`, `limit`; `size`,
  `isLastPage`, `nextPageStart`, `values`). `POST .../pull-requests` with `title`, `fromRef.id`,
  `toRef.id` creates one (201; 409 DuplicatePullRequestException when one is open for the same refs).
  `POST .../pull-requests/{id}/decline?version=N` declines it (409 on a stale version).
* `GET .../pull-requests/{id}/merge`: `canMerge`, `conflicted`, `outcome` (CLEAN, CONFLICTED), `vetoes`.
* Refs: `refs/pull-requests/<id>/from` (the head) and `refs/pull-requests/<id>/merge` (the head merged
  into the target; absent while they conflict).
* Comments: `POST .../pull-requests/{id}/comments` with `text` (201: `id`, `version` 0, `text`, `author`,
  `createdDate`, `updatedDate`); `GET .../comments/{commentId}`; `PUT` with `text` and `version` (200,
  the version incremented; 409 CommentOutOfDateException when `version` is not the current one; 400
  without `version`); `DELETE ...?version=N` (204); 404 for an unknown comment. `GET .../pull-requests/
  {id}/activities` (paged as above, newest first) holds one `COMMENTED` activity per comment (with the
  comment as it is now) and the `OPENED` activity.
* Deliveries: `X-Event-Key` pr:opened, pr:from_ref_updated (body adds `previousFromHash`), pr:modified,
  pr:reopened, pr:merged, pr:declined, pr:deleted; `X-Request-Id`, `X-Hub-Signature: sha256=<hex>` when
  the hook has a secret. Body: `eventKey`, `date`, `actor`, `pullRequest` (as the API shows it). Sent to
  active hooks whose `events` hold the key.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from autodeployer_emulators._forge import ForgeRepo, Sent, Tamper, json_error
from autodeployer_emulators._pulls import Comment, Pull, PullBook

if TYPE_CHECKING:
    from autodeployer_emulators.bitbucket import BitbucketEmulator

PULLS = re.compile(r"^/rest/api/1\.0/projects/(?P<key>[^/]+)/repos/(?P<slug>[^/]+)/pull-requests(?P<rest>/.*)?$")
_STATES = {"open": "OPEN", "closed": "DECLINED", "merged": "MERGED"}


def _error(status: int, message: str, exception: str = "") -> Response:
    return json_error(status, {"errors": [{"context": None, "message": message, "exceptionName": exception}]})


def _ms(when: float) -> int:
    return int(when * 1000)


class BitbucketPulls(PullBook):
    """The pull requests of every repository of one `BitbucketEmulator`."""

    duplicate = "Only one pull request may be open for a given source and target branch: {source}"

    def __init__(self, host: BitbucketEmulator) -> None:
        super().__init__(host)
        self.host: BitbucketEmulator = host

    # ------------------------------------------------------------------ HTTP
    def route(self, method: str, repo: ForgeRepo, rest: str, body: dict[str, Any], query: dict[str, str]) -> Response:
        if rest == "":
            return self._list(repo, query) if method == "GET" else self._create(repo, body)
        match = re.fullmatch(r"/(\d+)(/merge|/decline|/activities|/comments)?(?:/(\d+))?", rest)
        pull = self.find(repo, int(match[1])) if match else None
        if match is None or pull is None:
            return _error(404, "Pull request does not exist.",
                          "com.atlassian.bitbucket.pull.NoSuchPullRequestException")
        part = match[2] or ""
        if part == "" and method == "GET":
            return JSONResponse(self.to_json(repo, pull))
        if part == "/merge" and method == "GET":
            clean = pull.merge_sha is not None
            return JSONResponse({"canMerge": clean, "conflicted": not clean,
                                 "outcome": "CLEAN" if clean else "CONFLICTED", "vetoes": []})
        if part == "/decline" and method == "POST":
            return self._decline(repo, pull, query)
        if part == "/activities" and method == "GET":
            return self.host.paged(self._activities(pull), query)
        if part == "/comments":
            return self._comments(method, pull, int(match[3]) if match[3] else None, body, query)
        return _error(405, "Method not allowed")

    def _list(self, repo: ForgeRepo, query: dict[str, str]) -> Response:
        state, at = query.get("state", "OPEN").upper(), query.get("at")
        with self.host.lock:
            found = [self.to_json(repo, p) for p in self.by_repo.get(repo.path.lower(), [])
                     if state == "ALL" or _STATES[p.state] == state]
        if at:
            found = [p for p in found if p["toRef"]["id"] == at]
        if query.get("order", "NEWEST").upper() != "OLDEST":
            found.reverse()  # newest first unless asked otherwise, as Bitbucket lists them
        return self.host.paged(found, query)

    def _create(self, repo: ForgeRepo, body: dict[str, Any]) -> Response:
        source, target = (body.get("fromRef") or {}).get("id"), (body.get("toRef") or {}).get("id")
        if not isinstance(source, str) or not isinstance(target, str):
            return _error(400, "fromRef.id and toRef.id are required")
        try:
            pull = self.open(repo.path, source.removeprefix("refs/heads/"), target.removeprefix("refs/heads/"),
                             title=str(body.get("title") or "change"))
        except ValueError as exc:
            return _error(409, str(exc), "com.atlassian.bitbucket.pull.DuplicatePullRequestException")
        return JSONResponse(self.to_json(repo, pull), status_code=201)

    def _decline(self, repo: ForgeRepo, pull: Pull, query: dict[str, str]) -> Response:
        if query.get("version") != str(pull.version):
            return _error(409, "The pull request has been updated since you loaded it.",
                          "com.atlassian.bitbucket.pull.PullRequestOutOfDateException")
        self.close(repo.path, pull.number, deliver=False)
        return JSONResponse(self.to_json(repo, pull))

    def _activities(self, pull: Pull) -> list[dict[str, Any]]:
        with self.host.lock:
            comments = [{"id": c.id + 100000, "createdDate": _ms(c.created_at), "action": "COMMENTED",
                         "commentAction": "ADDED", "comment": _comment_json(c), "user": _actor()}
                        for c in pull.comments]
        opened = {"id": pull.id + 200000, "createdDate": _ms(pull.created_at), "action": "OPENED", "user": _actor()}
        return [*reversed(comments), opened]

    def _comments(self, method: str, pull: Pull, comment_id: int | None, body: dict[str, Any],
                  query: dict[str, str]) -> Response:
        if comment_id is None:
            if method != "POST":
                return _error(405, "Method not allowed")
            if not isinstance(body.get("text"), str) or not body["text"]:
                return _error(400, "A comment must have text.")
            comment = Comment(self.host.next_id(), str(body["text"]))
            with self.host.lock:
                pull.comments.append(comment)
            return JSONResponse(_comment_json(comment), status_code=201)
        with self.host.lock:
            comment = next((c for c in pull.comments if c.id == comment_id), None)
            if comment is None:
                return _error(404, f"Comment {comment_id} does not exist.",
                              "com.atlassian.bitbucket.comment.NoSuchCommentException")
            if method == "GET":
                return JSONResponse(_comment_json(comment))
            version = body.get("version") if method == "PUT" else query.get("version")
            if version is None:
                return _error(400, "version is required")
            if str(version) != str(comment.version):
                return _error(409, "You are attempting to modify a comment based on out-of-date information.",
                              "com.atlassian.bitbucket.comment.CommentOutOfDateException")
            if method == "DELETE":
                pull.comments.remove(comment)
                return Response(status_code=204)
            if method != "PUT" or not isinstance(body.get("text"), str) or not body["text"]:
                return _error(400, "A comment must have text.")
            comment.body, comment.version, comment.updated_at = str(body["text"]), comment.version + 1, time.time()
            return JSONResponse(_comment_json(comment))

    # ------------------------------------------------------------------ shapes
    def to_json(self, repo: ForgeRepo, pull: Pull) -> dict[str, Any]:
        key, _, slug = repo.path.partition("/")
        repository = {"slug": slug, "id": repo.id, "name": slug, "scmId": "git", "state": "AVAILABLE",
                      "forkable": True, "public": False, "project": {"key": key, "id": 1, "name": key}}

        def ref(branch: str, sha: str) -> dict[str, Any]:
            return {"id": f"refs/heads/{branch}", "displayId": branch, "latestCommit": sha, "type": "BRANCH",
                    "repository": repository}

        return {"id": pull.number, "version": pull.version, "title": pull.title, "description": "",
                "state": _STATES[pull.state], "open": pull.state == "open", "closed": pull.state != "open",
                "createdDate": _ms(pull.created_at), "updatedDate": _ms(pull.updated_at),
                "fromRef": ref(pull.source_branch, pull.head_sha), "toRef": ref(pull.target_branch, pull.base_sha),
                "locked": False, "author": {"user": _actor(), "role": "AUTHOR", "approved": False},
                "links": {"self": [{"href": f"{self.host.base_url}/projects/{key}/repos/{slug}/pull-requests/"
                                            f"{pull.number}"}]}}

    # ------------------------------------------------------------------ test side
    def refs(self, pull: Pull) -> tuple[str, str | None]:
        return f"refs/pull-requests/{pull.number}/from", f"refs/pull-requests/{pull.number}/merge"

    def open(self, path: str, source: str, target: str, *, title: str = "change", deliver: bool = True,
             tamper: Tamper = None) -> Pull:
        """Open a pull request of branch `source` into `target` (refs written, `pr:opened` delivered)."""
        pull = self.add(path, source, target, title)
        if deliver:
            self.deliver(path, pull.number, "pr:opened", tamper=tamper)
        return pull

    def close(self, path: str, number: int, *, event: str = "pr:declined", deliver: bool = True) -> list[Sent]:
        """Decline (or, with `pr:merged`, merge; `pr:deleted`, delete) the pull request."""
        repo = self.linked(path)
        pull = self.find(repo, number)
        if pull is None:
            raise KeyError(f"no pull request #{number} in {path}")
        with self.host.lock:
            pull.state = "merged" if event == "pr:merged" else "closed"
            pull.version, pull.updated_at = pull.version + 1, time.time()
        return self.deliver(path, number, event) if deliver else []

    def source_pushed(self, path: str, branch: str, tamper: Tamper) -> list[Sent]:
        """A push to a pull request's source branch updates it, as Bitbucket does: new `latestCommit`, refs
        rewritten, a new `version`, a `pr:from_ref_updated` delivery with `previousFromHash`."""
        sent: list[Sent] = []
        for pull, previous in self.moved(path, branch):
            with self.host.lock:
                pull.version += 1
            sent += self.deliver(path, pull.number, "pr:from_ref_updated", tamper=tamper,
                                 extra={"previousFromHash": previous})
        return sent

    def deliver(self, path: str, number: int, event: str, *, tamper: Tamper = None,
                extra: dict[str, Any] | None = None) -> list[Sent]:
        """A `pr:*` delivery to every active hook subscribed to `event` (tests: a spoilt signature, a
        payload with other fields through `extra`)."""
        repo = self.linked(path)
        pull = self.find(repo, number)
        if pull is None:
            raise KeyError(f"no pull request #{number} in {path}")
        with self.host.lock:
            hooks = [json.loads(json.dumps(h)) for h in repo.hooks if h["active"] and event in h["events"]]
            payload = {"eventKey": event, "date": time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime()),
                       "actor": _actor(), "pullRequest": self.to_json(repo, pull), **(extra or {})}
        body = json.dumps(payload).encode()
        return [self.host.deliver_signed(hook, event, body, tamper) for hook in hooks]


def _actor() -> dict[str, Any]:
    return {"name": "admin", "emailAddress": "admin@example.com", "id": 1, "displayName": "Administrator",
            "active": True, "slug": "admin", "type": "NORMAL"}


def _comment_json(comment: Comment) -> dict[str, Any]:
    return {"id": comment.id, "version": comment.version, "text": comment.body, "author": _actor(),
            "createdDate": _ms(comment.created_at), "updatedDate": _ms(comment.updated_at), "comments": [],
            "tasks": [], "severity": "NORMAL", "state": "OPEN"}
