"""Pull requests of the emulated Gitea / Forgejo: their model, `refs/pull/<index>/head` in the linked
bare repository, issue comments, and `pull_request` deliveries (`gitea.py` routes the HTTP here).

Facts it follows (Gitea API v1 swagger and webhook documentation):

* `GET /repos/{owner}/{repo}/pulls/{index}`: `id`, `number`, `title`, `state` (open, closed), `merged`,
  `mergeable` (whether the head merges cleanly into the base), `merge_commit_sha` (once merged),
  `head`/`base` {`label`, `ref`, `sha`, `repo_id`, `repo`}, `html_url`, `diff_url`, `created_at`,
  `updated_at`. `GET /repos/{owner}/{repo}/pulls?state=open|closed|all&base_branch=B` lists them newest
  first (`sort=oldest` reverses), paged with `page`/`limit` (a `Link` header with `rel="next"`, and
  `X-Total-Count`). `POST /repos/{owner}/{repo}/pulls` with
  `head`, `base`, `title` creates one (201; 409 when one is already open for the same branches);
  `PATCH /repos/{owner}/{repo}/pulls/{index}` with `state` closed/open closes or reopens it (201).
* Refs: `refs/pull/<index>/head` only; Gitea writes no merge ref (it computes mergeability itself).
* Comments are the issue's: `GET /repos/{owner}/{repo}/issues/{index}/comments` (every comment, no
  paging; `since`/`before` filters), `POST` with `body` (201, the comment: `id`, `body`, `user`,
  `html_url`, `pull_request_url`, `issue_url`, `created_at`, `updated_at`), `PATCH
  /repos/{owner}/{repo}/issues/comments/{id}` with `body` (200; 404 when unknown), `DELETE` (204); an
  empty `body` is refused with 422.
* Deliveries: `X-Gitea-Event: pull_request` (also X-Gogs-/X-Forgejo-/X-GitHub-Event) for every action;
  `X-Gitea-Event-Type: pull_request`, or `pull_request_sync` when new commits were pushed (action
  `synchronized`). Body: `action` (opened, reopened, synchronized, closed), `number`, `pull_request` (as
  the API shows it), `repository` (the base), `sender`, `review`, `commit_id`. Signed like pushes. Sent to
  active hooks whose `events` hold `pull_request` (which covers the sync events).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from autodeployer_emulators._forge import ForgeRepo, Sent, Tamper, json_error
from autodeployer_emulators._pulls import Comment, Pull, PullBook
from autodeployer_emulators.gitlab_merge_requests import iso

if TYPE_CHECKING:
    from autodeployer_emulators.gitea import GiteaEmulator

NOT_FOUND = {"message": "The target couldn't be found.", "errors": []}


class GiteaPulls(PullBook):
    """The pull requests of every repository of one `GiteaEmulator`."""

    duplicate = "pull request already exists for these targets: {source} -> {target}"

    def __init__(self, host: GiteaEmulator) -> None:
        super().__init__(host)
        self.host: GiteaEmulator = host

    # ------------------------------------------------------------------ HTTP
    def route(self, request: Request, rest: str, repo: ForgeRepo, body: dict[str, Any],
              query: dict[str, str]) -> Response | None:
        """The answer for a pull or comment path, None for any other path."""
        method = request.method
        if rest == "/pulls":
            return self._list(request, repo, query) if method == "GET" else self._create(repo, body)
        match = re.fullmatch(r"/pulls/(\d+)", rest)
        if match:
            return self._pull(method, repo, int(match[1]), body)
        match = re.fullmatch(r"/issues/(\d+)/comments", rest)
        if match:
            return self._comments(method, repo, int(match[1]), body)
        match = re.fullmatch(r"/issues/comments/(\d+)", rest)
        if match:
            return self._comment(method, repo, int(match[1]), body)
        return None

    def _list(self, request: Request, repo: ForgeRepo, query: dict[str, str]) -> Response:
        state, base = query.get("state", "open"), query.get("base_branch")
        with self.host.lock:
            found = [self.to_json(repo, p) for p in self.by_repo.get(repo.path.lower(), [])
                     if (state == "all" or _state(p) == state) and base in (None, p.target_branch)]
        if query.get("sort") != "oldest":
            found.reverse()  # newest first, as Gitea lists them by default
        return self.host.paged(request, found, query)

    def _create(self, repo: ForgeRepo, body: dict[str, Any]) -> Response:
        if not body.get("head") or not body.get("base"):
            return json_error(422, {"message": "head and base are required"})
        try:
            pull = self.open(repo.path, str(body["head"]), str(body["base"]), title=str(body.get("title") or "change"))
        except ValueError as exc:
            return json_error(409, {"message": str(exc)})
        return JSONResponse(self.to_json(repo, pull), status_code=201)

    def _pull(self, method: str, repo: ForgeRepo, number: int, body: dict[str, Any]) -> Response:
        pull = self.find(repo, number)
        if pull is None:
            return json_error(404, NOT_FOUND)
        if method == "PATCH" and body.get("state") in ("open", "closed"):
            with self.host.lock:
                pull.state, pull.updated_at = str(body["state"]), time.time()
        # Gitea answers an edit with 201 Created (its swagger says so too), a read with 200
        return JSONResponse(self.to_json(repo, pull), status_code=201 if method == "PATCH" else 200)

    def _comments(self, method: str, repo: ForgeRepo, number: int, body: dict[str, Any]) -> Response:
        pull = self.find(repo, number)
        if pull is None:
            return json_error(404, NOT_FOUND)
        if method == "GET":
            with self.host.lock:
                return JSONResponse([self._comment_json(repo, pull, c) for c in pull.comments])
        if not isinstance(body.get("body"), str) or not body["body"]:
            return json_error(422, {"message": "[Body]: Required"})
        comment = Comment(self.host.next_id(), str(body["body"]))
        with self.host.lock:
            pull.comments.append(comment)
        return JSONResponse(self._comment_json(repo, pull, comment), status_code=201)

    def _comment(self, method: str, repo: ForgeRepo, comment_id: int, body: dict[str, Any]) -> Response:
        with self.host.lock:
            found = next(((p, c) for p in self.by_repo.get(repo.path.lower(), []) for c in p.comments
                          if c.id == comment_id), None)
            if found is None:
                return json_error(404, NOT_FOUND)
            pull, comment = found
            if method == "DELETE":
                pull.comments.remove(comment)
                return Response(status_code=204)
            if method == "PATCH":
                if not isinstance(body.get("body"), str) or not body["body"]:
                    return json_error(422, {"message": "[Body]: Required"})
                comment.body, comment.updated_at = str(body["body"]), time.time()
            return JSONResponse(self._comment_json(repo, pull, comment))

    # ------------------------------------------------------------------ shapes
    def to_json(self, repo: ForgeRepo, pull: Pull) -> dict[str, Any]:
        web = f"{self.host.base_url}/{repo.path}"
        repository = _repository(repo, web)
        side = {"repo_id": repo.id, "repo": repository}
        return {
            "id": pull.id, "number": pull.number, "title": pull.title, "body": "", "state": _state(pull),
            "merged": pull.state == "merged", "mergeable": pull.merge_sha is not None,
            "merge_commit_sha": pull.merge_sha if pull.state == "merged" else None,
            "head": {"label": pull.source_branch, "ref": pull.source_branch, "sha": pull.head_sha, **side},
            "base": {"label": pull.target_branch, "ref": pull.target_branch, "sha": pull.base_sha, **side},
            "html_url": f"{web}/pulls/{pull.number}", "diff_url": f"{web}/pulls/{pull.number}.diff",
            "created_at": iso(pull.created_at), "updated_at": iso(pull.updated_at),
            "user": {"id": 1, "login": "gitea_admin"},
        }

    def _comment_json(self, repo: ForgeRepo, pull: Pull, comment: Comment) -> dict[str, Any]:
        web = f"{self.host.base_url}/{repo.path}"
        return {"id": comment.id, "body": comment.body, "user": {"id": 2, "login": "autodeployer"},
                "html_url": f"{web}/pulls/{pull.number}#issuecomment-{comment.id}",
                "pull_request_url": f"{web}/pulls/{pull.number}", "issue_url": "",
                "created_at": iso(comment.created_at), "updated_at": iso(comment.updated_at)}

    # ------------------------------------------------------------------ test side
    def refs(self, pull: Pull) -> tuple[str, str | None]:
        return f"refs/pull/{pull.number}/head", None  # Gitea writes no merge ref

    def open(self, path: str, source: str, target: str, *, title: str = "change", deliver: bool = True,
             tamper: Tamper = None) -> Pull:
        """Open a pull request of branch `source` into `target` (its ref written, `opened` delivered). Gitea
        numbers pull requests and issues together: one counter per repository."""
        pull = self.add(path, source, target, title)
        if deliver:
            self.deliver(path, pull.number, "opened", tamper=tamper)
        return pull

    def close(self, path: str, number: int) -> list[Sent]:
        repo = self.linked(path)
        pull = self.find(repo, number)
        if pull is None:
            raise KeyError(f"no pull request #{number} in {path}")
        with self.host.lock:
            pull.state, pull.updated_at = "closed", time.time()
        return self.deliver(path, number, "closed")

    def source_pushed(self, path: str, branch: str, tamper: Tamper) -> list[Sent]:
        """A push to a pull request's head branch updates it, as Gitea does: new head, ref rewritten, a
        `synchronized` delivery (`X-Gitea-Event-Type: pull_request_sync`)."""
        return [sent for pull, _ in self.moved(path, branch)
                for sent in self.deliver(path, pull.number, "synchronized", tamper=tamper)]

    def deliver(self, path: str, number: int, action: str, *, tamper: Tamper = None,
                base_ref: str | None = None) -> list[Sent]:
        """A `pull_request` delivery to every active hook with `pull_request` (tests: a spoilt signature,
        a payload naming another base branch)."""
        repo = self.linked(path)
        pull = self.find(repo, number)
        if pull is None:
            raise KeyError(f"no pull request #{number} in {path}")
        with self.host.lock:
            hooks = [json.loads(json.dumps(h)) for h in repo.hooks if h["active"] and "pull_request" in h["events"]]
            shown = self.to_json(repo, pull)
        if base_ref is not None:
            shown["base"]["ref"] = shown["base"]["label"] = base_ref
        web = f"{self.host.base_url}/{repo.path}"
        payload = {"action": action, "number": pull.number, "pull_request": shown,
                   "repository": _repository(repo, web), "sender": {"id": 1, "login": "gitea_admin"},
                   "commit_id": "", "review": None}
        kind = "pull_request_sync" if action == "synchronized" else "pull_request"
        return [self.host.deliver_signed(hook, json.dumps(payload), "pull_request", kind, tamper) for hook in hooks]


def _state(pull: Pull) -> str:
    return "open" if pull.state == "open" else "closed"


def _repository(repo: ForgeRepo, web: str) -> dict[str, Any]:
    owner, _, name = repo.path.partition("/")
    return {"id": repo.id, "owner": {"id": 1, "login": owner, "username": owner}, "name": name,
            "full_name": repo.path, "private": False, "fork": False, "html_url": web, "clone_url": f"{web}.git",
            "default_branch": repo.default_branch}
