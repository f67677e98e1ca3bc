"""A GitLab emulator: project hooks, commit statuses and push deliveries, over real HTTP on loopback.

Facts it follows (GitLab REST v4 and webhook documentation):

* API under `/api/v4`; the token in `PRIVATE-TOKEN: <t>` or `Authorization: Bearer <t>`; else 401
  `{"message": "401 Unauthorized"}`. A project is named by its numeric id or its URL-encoded path
  (`group%2Fsub%2Fproject`), so routing reads the raw, still-encoded path.
* Project hooks: `GET/POST /projects/:id/hooks`, `GET/PUT/DELETE /projects/:id/hooks/:hook_id`;
  fields `url` (required), `token` (write-only, never shown), `push_events` (default true),
  `tag_push_events`, `merge_requests_events`, `push_events_branch_filter`, `enable_ssl_verification`;
  lists paginated with `page`/`per_page` (default 20, max 100) and `X-Next-Page`, `X-Page`,
  `X-Per-Page`, `X-Total`, `X-Total-Pages`, `X-Prev-Page` headers and a `Link` header (rel next, prev,
  first, last; python-gitlab pages by it). Every list (hooks, statuses, merge requests, notes) pages
  so. PUT keeps the token unless one is given.
* Commit statuses: `POST /projects/:id/statuses/:sha` with `state` in pending, running, success,
  failed, canceled (else 400), `name` (default "default"), `target_url`, `description`; 201 with the
  status; a SHA the repository lacks is 404. `GET /projects/:id/repository/commits/:sha/statuses` lists
  them oldest first, only the latest of each name unless `all=true` (`name`, `ref` filter), paged.
* Deliveries: POST JSON with `X-Gitlab-Event: Push Hook` (tags: `Tag Push Hook`), `X-Gitlab-Token`
  (the hook's token as is, no HMAC; absent when the hook has none), `X-Gitlab-Event-UUID`,
  `X-Gitlab-Webhook-UUID`, `X-Gitlab-Instance`, `Idempotency-Key`, `User-Agent: GitLab/<version>`.
  Push payload: `object_kind`/`event_name` "push" (or "tag_push"), `ref`, `before` (40 zeros for a
  new branch), `after`, `checkout_sha`, `user_*`, `project_id`, `project` (`path_with_namespace`,
  `git_http_url`, `git_ssh_url`, `default_branch`, `web_url`), `commits[]`, `total_commits_count`.

Merge requests (their refs, notes and `Merge Request Hook` deliveries): `gitlab_merge_requests.py`,
whose docstring lists the facts followed; a push to a merge request's source branch updates it (refs
rewritten, an `update` delivery with `oldrev`), as GitLab does.

`python -m autodeployer_emulators.gitlab` serves it stand-alone (token from GITLAB_EMULATOR_TOKEN).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autodeployer_emulators._forge import (
    ZERO_SHA,
    ForgeEmulator,
    ForgeRepo,
    Sent,
    Tamper,
    json_error,
    new_uuid,
    tampered,
    with_header,
)
from autodeployer_emulators._server import serve_forever, standalone_parser, token_from_env
from autodeployer_emulators.gitlab_merge_requests import (
    MergeRequest,
    Note,
    branch_tip,
    hook_payload,
    mr_json,
    note_json,
    write_refs,
)

STATES = ("pending", "running", "success", "failed", "canceled")
HOOK_FLAGS = ("push_events", "tag_push_events", "merge_requests_events", "enable_ssl_verification")
VERSION = "17.5.0"
ROUTE = re.compile(r"^/api/v4/projects/(?P<id>[^/]+)(?P<rest>/.*)?$")


class GitLabEmulator(ForgeEmulator):
    host_name = "GitLab"

    def __init__(self, token: str | None = None) -> None:
        super().__init__(token)
        self.merge_requests: dict[str, list[MergeRequest]] = {}  # by project path (lower case)

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v4"

    def hooks(self, path: str) -> list[dict[str, Any]]:
        """The project's hooks as the API shows them (no token), plus `token` for tests' checks."""
        repo = self.repo(path)
        with self.lock:
            return [dict(h) for h in (repo.hooks if repo else [])]

    # ------------------------------------------------------------------ HTTP
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._endpoint,
                                       methods=["GET", "POST", "PUT", "DELETE"])])

    async def _endpoint(self, request: Request) -> Response:
        given = request.headers.get("private-token") or self.bearer(request)
        if not self.authorised(given):
            return json_error(401, {"message": "401 Unauthorized"})
        raw = request.scope.get("raw_path", b"").decode("latin-1").split("?")[0]
        match = ROUTE.match(raw)
        repo = self.repo(unquote(match["id"])) if match else None
        if match is None or repo is None:
            return json_error(404, {"message": "404 Project Not Found"})
        rest = match["rest"] or ""
        body: dict[str, Any] = {}
        if request.method in ("POST", "PUT"):
            try:
                loaded = json.loads(await request.body() or b"{}")
            except ValueError:
                return json_error(400, {"error": "body is not valid JSON"})
            body = loaded if isinstance(loaded, dict) else {}
        query = {k: v[0] for k, v in parse_qs(request.url.query).items()}
        return self._route(request.method, rest, repo, body, query)

    def _route(self, method: str, rest: str, repo: ForgeRepo, body: dict[str, Any],
               query: dict[str, str]) -> Response:
        if rest == "/hooks" and method == "GET":
            return self._list_hooks(repo, query)
        if rest == "/hooks" and method == "POST":
            return self._create_hook(repo, body)
        hook_match = re.fullmatch(r"/hooks/(\d+)", rest)
        if hook_match:
            return self._hook(method, repo, int(hook_match[1]), body)
        status_match = re.fullmatch(r"/statuses/([0-9a-f]{40})", rest)
        if status_match and method == "POST":
            return self._create_status(repo, status_match[1], body)
        list_match = re.fullmatch(r"/repository/commits/([0-9a-f]{40})/statuses", rest)
        if list_match and method == "GET":
            return self.paged(_shown_statuses(self.statuses(repo.path, list_match[1]), query), query,
                              f"/projects/{repo.id}{rest}")
        if rest.startswith("/merge_requests"):
            return self._merge_request_route(method, rest, repo, body, query)
        return json_error(404, {"error": "404 Not Found"})

    # ------------------------------------------------------------------ merge requests (HTTP)
    def _merge_request_route(self, method: str, rest: str, repo: ForgeRepo, body: dict[str, Any],
                             query: dict[str, str]) -> Response:
        if rest == "/merge_requests" and method == "GET":
            return self._list_merge_requests(repo, query)
        if rest == "/merge_requests" and method == "POST":
            return self._create_merge_request(repo, body)
        match = re.fullmatch(r"/merge_requests/(\d+)(/notes)?(?:/(\d+))?", rest)
        if match is None or (match[3] and not match[2]):
            return json_error(404, {"error": "404 Not Found"})
        with self.lock:
            mr = self._mr(repo, int(match[1]))
            if mr is None:
                return json_error(404, {"message": "404 Not found"})
            if match[2] is None:
                return self._merge_request(method, repo, mr, body)
            return self._notes(method, mr, int(match[3]) if match[3] else None, body, query,
                               f"/projects/{repo.id}{rest}")

    def _mr(self, repo: ForgeRepo, iid: int) -> MergeRequest | None:
        return next((m for m in self.merge_requests.get(repo.path.lower(), []) if m.iid == iid), None)

    def _list_merge_requests(self, repo: ForgeRepo, query: dict[str, str]) -> Response:
        state, target = query.get("state", "all"), query.get("target_branch")
        with self.lock:
            found = [mr_json(m, repo.id, self._web(repo)) for m in self.merge_requests.get(repo.path.lower(), [])
                     if state in ("all", m.state) and target in (None, m.target_branch)]
        return self.paged(_sorted(found, query), query, f"/projects/{repo.id}/merge_requests")

    def _create_merge_request(self, repo: ForgeRepo, body: dict[str, Any]) -> Response:
        missing = [k for k in ("source_branch", "target_branch", "title") if not body.get(k)]
        if missing:
            return json_error(400, {"error": f"{', '.join(missing)} is missing"})
        try:
            mr = self.open_merge_request(repo.path, str(body["source_branch"]), str(body["target_branch"]),
                                         title=str(body["title"]), deliver=False)
        except ValueError as exc:
            return json_error(409, {"message": [str(exc)]})
        self._deliver(repo, mr, "open", None)
        return JSONResponse(mr_json(mr, repo.id, self._web(repo)), status_code=201)

    def _merge_request(self, method: str, repo: ForgeRepo, mr: MergeRequest, body: dict[str, Any]) -> Response:
        if method == "GET":
            return JSONResponse(mr_json(mr, repo.id, self._web(repo)))
        if method != "PUT":
            return json_error(405, {"error": "405 Method Not Allowed"})
        event = body.get("state_event")
        if event in ("close", "reopen"):
            mr.state = "closed" if event == "close" else "opened"
            mr.updated_at = time.time()
        if "title" in body:
            mr.title = str(body["title"])
        return JSONResponse(mr_json(mr, repo.id, self._web(repo)))

    def _notes(self, method: str, mr: MergeRequest, note_id: int | None, body: dict[str, Any],
               query: dict[str, str], path: str = "") -> Response:
        if note_id is None and method == "GET":
            return self.paged(_sorted([note_json(n, mr) for n in mr.notes], query), query, path)
        if method in ("POST", "PUT") and not (isinstance(body.get("body"), str) and body["body"]):
            return json_error(400, {"error": "body is missing"})
        if note_id is None and method == "POST":
            note = Note(self.next_id(), mr.iid, str(body["body"]))
            mr.notes.append(note)
            return JSONResponse(note_json(note, mr), status_code=201)
        note = next((n for n in mr.notes if n.id == note_id), None)
        if note is None:
            return json_error(404, {"message": "404 Note Not Found"})
        if method == "GET":
            return JSONResponse(note_json(note, mr))
        if method == "PUT":
            note.body, note.updated_at = str(body["body"]), time.time()
            return JSONResponse(note_json(note, mr))
        if method == "DELETE":
            mr.notes.remove(note)
            return Response(status_code=204)
        return json_error(405, {"error": "405 Method Not Allowed"})

    # ------------------------------------------------------------------ merge requests (test side)
    def open_merge_request(self, path: str, source: str, target: str, *, title: str = "change",
                           deliver: bool = True, tamper: Tamper = None) -> MergeRequest:
        """Open a merge request of branch `source` into `target` (refs written, `open` delivered)."""
        repo = self._linked(path)
        assert repo.git_dir is not None
        head, base = branch_tip(repo.git_dir, source), branch_tip(repo.git_dir, target)
        if head is None or base is None:
            raise ValueError(f"branch {source if head is None else target} does not exist")
        with self.lock:
            known = self.merge_requests.setdefault(repo.path.lower(), [])
            if any(m.state == "opened" and (m.source_branch, m.target_branch) == (source, target) for m in known):
                raise ValueError(f"Another open merge request already exists for this source branch: {source}")
            mr = MergeRequest(self.next_id(), len(known) + 1, title, source, target, repo.id, repo.id, head, base)
            write_refs(repo.git_dir, mr)
            known.append(mr)
        if deliver:
            self._deliver(repo, mr, "open", None, tamper)
        return mr

    def close_merge_request(self, path: str, iid: int) -> list[Sent]:
        repo = self._linked(path)
        with self.lock:
            mr = self._mr(repo, iid)
            if mr is None:
                raise KeyError(f"no merge request !{iid} in {path}")
            mr.state, mr.updated_at = "closed", time.time()
        return self._deliver(repo, mr, "close", None)

    def notes(self, path: str, iid: int) -> list[Note]:
        repo = self._linked(path)
        with self.lock:
            mr = self._mr(repo, iid)
            return [Note(n.id, n.iid, n.body, n.created_at, n.updated_at) for n in (mr.notes if mr else [])]

    def _linked(self, path: str) -> ForgeRepo:
        repo = self.repo(path)
        if repo is None or repo.git_dir is None:
            raise KeyError(f"no project {path} linked to a Git repository")
        return repo

    def _source_pushed(self, repo: ForgeRepo, branch: str, before: str, tamper: Tamper) -> list[Sent]:
        """A push to a merge request's source branch updates it, as GitLab does: new head, refs
        rewritten, an `update` delivery carrying `oldrev`."""
        if repo.git_dir is None:
            return []
        sent: list[Sent] = []
        with self.lock:
            touched = [m for m in self.merge_requests.get(repo.path.lower(), [])
                       if m.state == "opened" and m.source_branch == branch]
        for mr in touched:
            head, base = branch_tip(repo.git_dir, mr.source_branch), branch_tip(repo.git_dir, mr.target_branch)
            if head is None or base is None or head == mr.sha:
                continue
            with self.lock:
                old, mr.sha, mr.base_sha, mr.updated_at = mr.sha, head, base, time.time()
                write_refs(repo.git_dir, mr)
            sent += self._deliver(repo, mr, "update", old or before, tamper)
        return sent

    def _deliver(self, repo: ForgeRepo, mr: MergeRequest, action: str, oldrev: str | None,
                 tamper: Tamper = None, target_branch: str | None = None) -> list[Sent]:
        """A `Merge Request Hook` delivery to every hook with merge request events."""
        with self.lock:
            hooks = [dict(h) for h in repo.hooks if h["merge_requests_events"]]
        payload = hook_payload(mr, action, self._project(repo, repo.path), oldrev)
        if target_branch is not None:
            payload["object_attributes"]["target_branch"] = target_branch
        body = json.dumps(payload).encode()
        sent = []
        for hook in hooks:
            headers = {"Content-Type": "application/json", "User-Agent": f"GitLab/{VERSION}",
                       "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Event-UUID": new_uuid(),
                       "X-Gitlab-Webhook-UUID": new_uuid(), "X-Gitlab-Instance": self.base_url}
            headers["Idempotency-Key"] = headers["X-Gitlab-Event-UUID"]
            token = hook["token"] or None
            with_header(headers, "X-Gitlab-Token", tampered(token, tamper) if token else None)
            sent.append(self.send(hook["url"], headers, body))
        return sent

    def deliver_merge_request(self, path: str, iid: int, action: str, *, oldrev: str | None = None,
                              tamper: Tamper = None, target_branch: str | None = None) -> list[Sent]:
        """Send a `Merge Request Hook` for an existing merge request again (tests: a spoilt token, a
        payload naming another target branch)."""
        repo = self._linked(path)
        with self.lock:
            mr = self._mr(repo, iid)
        if mr is None:
            raise KeyError(f"no merge request !{iid} in {path}")
        return self._deliver(repo, mr, action, oldrev, tamper, target_branch)

    def _web(self, repo: ForgeRepo) -> str:
        return f"{self.base_url}/{repo.path}"

    @staticmethod
    def _shown(hook: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in hook.items() if k != "token"}

    def _list_hooks(self, repo: ForgeRepo, query: dict[str, str]) -> Response:
        with self.lock:
            items = [self._shown(h) for h in repo.hooks]
        return self.paged(items, query, f"/projects/{repo.id}/hooks")

    def paged(self, items: list[Any], query: dict[str, str], path: str) -> Response:
        """One page of a list with the headers GitLab sends (`X-Page`, `X-Per-Page`, `X-Total`,
        `X-Total-Pages`, `X-Next-Page`, `X-Prev-Page` and a `Link` with next/prev/first/last): clients
        such as python-gitlab follow `Link` rel="next", the product follows `X-Next-Page`."""
        page, per_page = _int(query.get("page"), 1), _int(query.get("per_page"), 20)
        size = max(1, min(per_page, self.max_page_size))
        shown, more = self.page(items, page, size)
        pages = max(1, -(-len(items) // size))
        headers = {"X-Page": str(page), "X-Per-Page": str(size), "X-Total": str(len(items)),
                   "X-Total-Pages": str(pages), "X-Next-Page": str(page + 1) if more else "",
                   "X-Prev-Page": str(page - 1) if 1 < page <= pages + 1 else ""}
        kept = {k: v for k, v in query.items() if k not in ("page", "per_page")}

        def link(number: int, rel: str) -> str:
            wanted = urlencode({**kept, "page": number, "per_page": size})
            return f'<{self.api_url}{path}?{wanted}>; rel="{rel}"'

        links = [link(page + 1, "next")] if more else []
        links += [link(page - 1, "prev")] if headers["X-Prev-Page"] else []
        headers["Link"] = ", ".join([*links, link(1, "first"), link(pages, "last")])
        return JSONResponse(shown, headers=headers)

    def _create_hook(self, repo: ForgeRepo, body: dict[str, Any]) -> Response:
        if not isinstance(body.get("url"), str) or not body["url"]:
            return json_error(400, {"error": "url is missing"})
        hook: dict[str, Any] = {
            "id": self.next_id(), "url": body["url"], "project_id": repo.id,
            "push_events": bool(body.get("push_events", True)),
            "tag_push_events": bool(body.get("tag_push_events", False)),
            "merge_requests_events": bool(body.get("merge_requests_events", False)),
            "enable_ssl_verification": bool(body.get("enable_ssl_verification", True)),
            "push_events_branch_filter": body.get("push_events_branch_filter") or "",
            "alert_status": "executable", "created_at": _now(), "token": str(body.get("token") or ""),
        }
        with self.lock:
            repo.hooks.append(hook)
        return JSONResponse(self._shown(hook), status_code=201)

    def _hook(self, method: str, repo: ForgeRepo, hook_id: int, body: dict[str, Any]) -> Response:
        with self.lock:
            hook = next((h for h in repo.hooks if h["id"] == hook_id), None)
            if hook is None:
                return json_error(404, {"message": "404 Not found"})
            if method == "GET":
                return JSONResponse(self._shown(hook))
            if method == "DELETE":
                repo.hooks.remove(hook)
                return Response(status_code=204)
            if method != "PUT":
                return json_error(405, {"error": "405 Method Not Allowed"})
            if not isinstance(body.get("url"), str) or not body["url"]:
                return json_error(400, {"error": "url is missing"})
            hook["url"] = body["url"]
            for flag in HOOK_FLAGS:
                if flag in body:
                    hook[flag] = bool(body[flag])
            if "token" in body:
                hook["token"] = str(body["token"] or "")
            return JSONResponse(self._shown(hook))

    def _create_status(self, repo: ForgeRepo, sha: str, body: dict[str, Any]) -> Response:
        state = body.get("state")
        if state not in STATES:
            return json_error(400, {"message": f"state does not have a valid value ({state!r})"})
        if not repo.has_commit(sha):
            return json_error(404, {"message": "404 References for commit Not Found"})
        status = {"id": self.next_id(), "sha": sha, "ref": repo.default_branch, "status": state,
                  "name": body.get("name") or body.get("context") or "default",
                  "target_url": body.get("target_url"), "description": body.get("description"),
                  "created_at": _now()}
        with self.lock:
            repo.statuses.setdefault(sha, []).append(status)
        return JSONResponse(status, status_code=201)

    # ------------------------------------------------------------------ deliveries
    def push(self, path: str, ref: str, before: str, after: str, *, tamper: Tamper = None,
             repository_path: str | None = None) -> list[Sent]:
        """Deliver a push of `ref` to every hook subscribed to it, as GitLab does after a push.
        `tamper` spoils X-Gitlab-Token; `repository_path` makes the payload name another project."""
        repo = self.repo(path)
        if repo is None:
            raise KeyError(f"no project {path}")
        tag = ref.startswith("refs/tags/")
        with self.lock:
            hooks = [dict(h) for h in repo.hooks if h["tag_push_events" if tag else "push_events"]]
        payload = self._push_payload(repo, ref, before, after, repository_path or repo.path)
        body = json.dumps(payload).encode()
        sent = []
        for hook in hooks:
            headers = {"Content-Type": "application/json", "User-Agent": f"GitLab/{VERSION}",
                       "X-Gitlab-Event": "Tag Push Hook" if tag else "Push Hook",
                       "X-Gitlab-Event-UUID": new_uuid(), "X-Gitlab-Webhook-UUID": new_uuid(),
                       "X-Gitlab-Instance": self.base_url}
            headers["Idempotency-Key"] = headers["X-Gitlab-Event-UUID"]
            token = hook["token"] or None
            with_header(headers, "X-Gitlab-Token", tampered(token, tamper) if token else None)
            sent.append(self.send(hook["url"], headers, body))
        if ref.startswith("refs/heads/") and after != ZERO_SHA:
            sent += self._source_pushed(repo, ref.removeprefix("refs/heads/"), before, tamper)
        return sent

    def _project(self, repo: ForgeRepo, path: str) -> dict[str, Any]:
        web = f"{self.base_url}/{path}"
        return {"id": repo.id, "name": path.rsplit("/", 1)[-1], "path_with_namespace": path,
                "web_url": web, "git_http_url": f"{web}.git",
                "git_ssh_url": f"git@{self.base_url.split('//')[-1].split(':')[0]}:{path}.git",
                "default_branch": repo.default_branch, "namespace": path.rsplit("/", 1)[0],
                "visibility_level": 0}

    def _push_payload(self, repo: ForgeRepo, ref: str, before: str, after: str, path: str) -> dict[str, Any]:
        web = f"{self.base_url}/{path}"
        project = self._project(repo, path)
        commits = [] if after == ZERO_SHA else [{"id": after, "message": "pushed", "timestamp": _now(),
                                                  "url": f"{web}/-/commit/{after}", "added": [], "modified": [],
                                                  "removed": []}]
        kind = "tag_push" if ref.startswith("refs/tags/") else "push"
        return {"object_kind": kind, "event_name": kind, "before": before, "after": after, "ref": ref,
                "ref_protected": True, "checkout_sha": None if after == ZERO_SHA else after,
                "user_id": 1, "user_name": "Administrator", "user_username": "root", "user_email": "",
                "user_avatar": "", "project_id": repo.id, "project": project, "commits": commits,
                "total_commits_count": len(commits), "repository": {"name": project["name"], "homepage": web}}


def _sorted(items: list[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    """Merge requests and notes as GitLab lists them: by `created_at` (or `updated_at` with
    `order_by=updated_at`), newest first unless `sort=asc`; ties by id."""
    key = "updated_at" if query.get("order_by") == "updated_at" else "created_at"
    return sorted(items, key=lambda item: (item[key], item["id"]), reverse=query.get("sort", "desc") != "asc")


def _shown_statuses(statuses: list[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    """The statuses GitLab lists: oldest first, only the latest of each name (and ref) unless `all=true`,
    narrowed by `name` and `ref` when given."""
    found = [s for s in statuses if query.get("name") in (None, s["name"]) and query.get("ref") in (None, s["ref"])]
    if query.get("all", "").lower() in ("true", "1", "yes"):
        return found
    latest = {(s["name"], s["ref"]): s["id"] for s in found}
    return [s for s in found if latest[(s["name"], s["ref"])] == s["id"]]


def _int(value: str | None, default: int) -> int:
    """A paging parameter as GitLab reads it: a missing or unreadable one falls back to the default."""
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``GITLAB_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("gitlab", 8091, "GITLAB_EMULATOR_TOKEN")
    parser.add_argument("--project", action="append", default=[], metavar="GROUP/PROJECT[=GIT_DIR]",
                        help="project to create (repeatable), optionally backed by a bare Git repository")
    args = parser.parse_args(argv)
    emulator = GitLabEmulator(token=token_from_env("GITLAB_EMULATOR_TOKEN"))
    for spec in args.project:
        path, _, git_dir = spec.partition("=")
        emulator.add_repo(path, git_dir=git_dir or None)
    emulator.base_url = f"http://{args.host}:{args.port}"
    serve_forever(emulator.app(), "GitLab", emulator.api_url, "GITLAB_EMULATOR_TOKEN",
                  emulator.token is not None, args.host, args.port)


if __name__ == "__main__":
    main()
