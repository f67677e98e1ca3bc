"""A Gitea (and Forgejo) emulator: repository hooks, commit statuses and push deliveries.

Facts it follows (Gitea API v1 and webhook documentation):

* API under `/api/v1`; the token in `Authorization: token <t>` (or `Bearer <t>`); else 401
  `{"message": "token is required"}`.
* Hooks: `GET/POST /repos/{owner}/{repo}/hooks`, `GET/PATCH/DELETE /repos/{owner}/{repo}/hooks/{id}`;
  create body `{"type": "gitea", "config": {"url", "content_type": "json"|"form", "secret"},
  "events": ["push"], "active": true}` (type and config.url/content_type required, else 422); the
  secret is never shown; PATCH merges config and keeps the secret unless one is given. Lists are
  paginated with `page`/`limit` (default 30, at most 50), a `Link` header (`rel` next, last, first, prev)
  and `X-Total-Count`.
* Commit statuses: `POST /repos/{owner}/{repo}/statuses/{sha}` with `state` in pending, success,
  error, failure, warning, skipped (else 422), `context`, `target_url`, `description`; 201.
  `GET /repos/{owner}/{repo}/statuses/{sha}` and `.../commits/{sha}/statuses` list them, newest first
  (`sort=oldest` reverses; `state` filters), paged like hooks.
* Deliveries: POST with `X-Gitea-Event: push`, `X-Gitea-Event-Type`, `X-Gitea-Delivery` (UUID),
  `X-Gitea-Signature` = lower-case hex HMAC-SHA256 of the body **without** a prefix, the same again
  as `X-Gogs-*`; Forgejo (`forgejo=True`) adds `X-Forgejo-*`; GitHub-compatible `X-GitHub-Event`,
  `X-GitHub-Delivery`, `X-Hub-Signature-256: sha256=<hex>`, `X-Hub-Signature: sha1=<hex>`. Without a
  secret the signature headers are still sent, empty. A form hook's body is `payload=<JSON>` but it is
  signed over the JSON text. Push payload: `ref`, `before`, `after`, `compare_url`, `commits[]`,
  `repository` (`full_name`, `owner`, `default_branch`, `clone_url`, ...), `pusher`, `sender`.

Pull requests (`pulls`, `refs/pull/<index>/head`, issue comments, `pull_request` deliveries; a push to
a pull request's head branch updates it and sends `synchronized`): `gitea_pulls.py`.

`python -m autodeployer_emulators.gitea` serves it stand-alone (token from GITEA_EMULATOR_TOKEN).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

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
)
from autodeployer_emulators._server import serve_forever, standalone_parser, token_from_env
from autodeployer_emulators.gitea_pulls import GiteaPulls

STATES = ("pending", "success", "error", "failure", "warning", "skipped")
HOOK_TYPES = ("gitea", "forgejo", "gogs", "slack", "discord")
ROUTE = re.compile(r"^/api/v1/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")


class GiteaEmulator(ForgeEmulator):
    host_name = "Gitea"

    def __init__(self, token: str | None = None, *, forgejo: bool = False) -> None:
        super().__init__(token)
        self.forgejo = forgejo
        self.max_page_size = 50  # Gitea's [api] MAX_RESPONSE_ITEMS default
        self.pulls = GiteaPulls(self)  # pull requests, their comments and deliveries (gitea_pulls.py)

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v1"

    def hooks(self, path: str) -> list[dict[str, Any]]:
        repo = self.repo(path)
        with self.lock:
            return [json.loads(json.dumps(h)) for h in (repo.hooks if repo else [])]

    # ------------------------------------------------------------------ HTTP
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._endpoint,
                                       methods=["GET", "POST", "PATCH", "DELETE"])])

    async def _endpoint(self, request: Request) -> Response:
        if not self.authorised(self.bearer(request, "token") or self.bearer(request)):
            return json_error(401, {"message": "token is required", "url": f"{self.api_url}/swagger"})
        match = ROUTE.match(request.url.path)
        repo = self.repo(f"{match['owner']}/{match['name']}") if match else None
        if match is None or repo is None:
            return json_error(404, {"message": "The target couldn't be found.", "errors": []})
        body: dict[str, Any] = {}
        if request.method in ("POST", "PATCH"):
            try:
                loaded = json.loads(await request.body() or b"{}")
            except ValueError:
                return json_error(422, {"message": "invalid JSON body"})
            body = loaded if isinstance(loaded, dict) else {}
        query = {k: v[0] for k, v in parse_qs(request.url.query).items()}
        return self._route(request, match["rest"] or "", repo, body, query)

    def _route(self, request: Request, rest: str, repo: ForgeRepo, body: dict[str, Any],
               query: dict[str, str]) -> Response:
        method = request.method
        if rest == "/hooks" and method == "GET":
            return self._list_hooks(request, repo, query)
        if rest == "/hooks" and method == "POST":
            return self._create_hook(repo, body)
        hook_match = re.fullmatch(r"/hooks/(\d+)", rest)
        if hook_match:
            return self._hook(method, repo, int(hook_match[1]), body)
        status_match = re.fullmatch(r"/statuses/([0-9a-f]{40})", rest)
        if status_match and method == "POST":
            return self._create_status(repo, status_match[1], body)
        list_match = re.fullmatch(r"/(?:commits/([0-9a-f]{40})/statuses|statuses/([0-9a-f]{40}))", rest)
        if list_match and method == "GET":
            return self._list_statuses(request, repo, list_match[1] or list_match[2], query)
        pulls = self.pulls.route(request, rest, repo, body, query)
        if pulls is not None:
            return pulls
        return json_error(404, {"message": "The target couldn't be found.", "errors": []})

    @staticmethod
    def _shown(hook: dict[str, Any]) -> dict[str, Any]:
        shown = dict(hook)
        shown["config"] = {k: v for k, v in hook["config"].items() if k != "secret"}
        return shown

    def _list_hooks(self, request: Request, repo: ForgeRepo, query: dict[str, str]) -> Response:
        with self.lock:
            items = [self._shown(h) for h in repo.hooks]
        return self.paged(request, items, query)

    def paged(self, request: Request, items: list[Any], query: dict[str, str]) -> Response:
        """One page (`page`, `limit`; default 30, capped at the host's maximum) with `X-Total-Count` and a
        `Link` header holding next/prev/first/last as Gitea writes it (clients follow rel="next")."""
        page, limit = max(_int(query.get("page"), 1), 1), _int(query.get("limit"), 30)
        size = max(1, min(limit, self.max_page_size))
        shown, more = self.page(items, page, size)
        pages = max(1, -(-len(items) // size))
        kept = {k: v for k, v in query.items() if k not in ("page", "limit")}
        base = str(request.url).split("?")[0]

        def link(number: int, rel: str) -> str:
            return f'<{base}?{urlencode({**kept, "page": number, "limit": size})}>; rel="{rel}"'

        links = [link(page + 1, "next"), link(pages, "last")] if more else []
        links += [link(1, "first"), link(page - 1, "prev")] if page > 1 else []
        headers = {"X-Total-Count": str(len(items)), "Access-Control-Expose-Headers": "X-Total-Count, Link"}
        if links:
            headers["Link"] = ",".join(links)
        return JSONResponse(shown, headers=headers)

    def _create_hook(self, repo: ForgeRepo, body: dict[str, Any]) -> Response:
        config = body.get("config")
        if body.get("type") not in HOOK_TYPES:
            return json_error(422, {"message": f"Invalid hook type: {body.get('type')!r}"})
        if not isinstance(config, dict) or not config.get("url") or config.get("content_type") not in ("json", "form"):
            return json_error(422, {"message": "Missing config option: url or content_type"})
        hook = {"id": self.next_id(), "type": body["type"], "branch_filter": body.get("branch_filter") or "*",
                "config": {"url": str(config["url"]), "content_type": config["content_type"],
                           "secret": str(config.get("secret") or "")},
                "events": list(body.get("events") or ["push"]), "active": bool(body.get("active", False)),
                "authorization_header": "", "updated_at": _now(), "created_at": _now()}
        with self.lock:
            repo.hooks.append(hook)
        return JSONResponse(self._shown(hook), status_code=201)

    def _hook(self, method: str, repo: ForgeRepo, hook_id: int, body: dict[str, Any]) -> Response:
        with self.lock:
            hook = next((h for h in repo.hooks if h["id"] == hook_id), None)
            if hook is None:
                return json_error(404, {"message": "The target couldn't be found.", "errors": []})
            if method == "GET":
                return JSONResponse(self._shown(hook))
            if method == "DELETE":
                repo.hooks.remove(hook)
                return Response(status_code=204)
            config = body.get("config")
            if isinstance(config, dict):
                hook["config"].update({k: str(v) for k, v in config.items()
                                       if k in ("url", "content_type", "secret")})
            if isinstance(body.get("events"), list):
                hook["events"] = list(body["events"])
            if "active" in body:
                hook["active"] = bool(body["active"])
            hook["updated_at"] = _now()
            return JSONResponse(self._shown(hook))

    def _list_statuses(self, request: Request, repo: ForgeRepo, sha: str, query: dict[str, str]) -> Response:
        """Newest first unless `sort=oldest`, optionally only one `state`, paged like every list."""
        found = self.statuses(repo.path, sha)
        if query.get("sort") != "oldest":
            found.reverse()
        if query.get("state"):
            found = [s for s in found if s["status"] == query["state"]]
        return self.paged(request, found, query)

    def _create_status(self, repo: ForgeRepo, sha: str, body: dict[str, Any]) -> Response:
        state = body.get("state")
        if state not in STATES:
            return json_error(422, {"message": f"invalid state {state!r}"})
        if not repo.has_commit(sha):
            return json_error(404, {"message": "commit does not exist", "errors": []})
        status = {"id": self.next_id(), "status": state, "context": body.get("context") or "default",
                  "target_url": body.get("target_url") or "", "description": body.get("description") or "",
                  "created_at": _now(), "updated_at": _now()}
        with self.lock:
            repo.statuses.setdefault(sha, []).append(status)
        return JSONResponse(status, status_code=201)

    # ------------------------------------------------------------------ deliveries
    def push(self, path: str, ref: str, before: str, after: str, *, tamper: Tamper = None,
             repository_path: str | None = None, native_only: bool = False) -> list[Sent]:
        """Deliver a push to every active hook subscribed to `push`, signed as Gitea signs.
        `tamper` spoils every signature header; `native_only` leaves the GitHub-compatible ones out."""
        repo = self.repo(path)
        if repo is None:
            raise KeyError(f"no repository {path}")
        with self.lock:
            hooks = [json.loads(json.dumps(h)) for h in repo.hooks if h["active"] and "push" in h["events"]]
        payload_text = json.dumps(self._push_payload(repo, ref, before, after, repository_path or repo.path))
        sent = [self.deliver_signed(hook, payload_text, "push", "push", tamper, native_only) for hook in hooks]
        if ref.startswith("refs/heads/") and after != ZERO_SHA and repo.git_dir is not None:
            sent += self.pulls.source_pushed(path, ref.removeprefix("refs/heads/"), tamper)
        return sent

    def deliver_signed(self, hook: dict[str, Any], payload_text: str, event: str, event_type: str,
                       tamper: Tamper = None, native_only: bool = False) -> Sent:
        """POST one delivery to `hook`, signed with its secret as Gitea signs (over the JSON text)."""
        secret = hook["config"]["secret"]
        sha256 = hmac.new(secret.encode(), payload_text.encode(), hashlib.sha256).hexdigest() if secret else ""
        sha1 = hmac.new(secret.encode(), payload_text.encode(), hashlib.sha1).hexdigest() if secret else ""
        form = hook["config"]["content_type"] == "form"
        body = urlencode({"payload": payload_text}).encode() if form else payload_text.encode()
        headers = self._headers(sha256, sha1, tamper, form, native_only, event, event_type)
        return self.send(hook["config"]["url"], headers, body)

    def _headers(self, sha256: str, sha1: str, tamper: Tamper, form: bool, native_only: bool,
                 event: str = "push", event_type: str = "push") -> dict[str, str]:
        delivery = new_uuid()
        signature = tampered(sha256, tamper)
        headers = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
                   "User-Agent": "Go-http-client/1.1"}
        prefixes = ["Gitea", "Gogs", *(["Forgejo"] if self.forgejo else [])]
        for prefix in prefixes:
            headers.update({f"X-{prefix}-Event": event, f"X-{prefix}-Event-Type": event_type,
                            f"X-{prefix}-Delivery": delivery})
            if signature is not None:
                headers[f"X-{prefix}-Signature"] = signature
        if not native_only:
            headers.update({"X-GitHub-Event": event, "X-GitHub-Event-Type": event_type,
                            "X-GitHub-Delivery": delivery})
            if signature is not None:
                headers["X-Hub-Signature-256"] = f"sha256={signature}"
                headers["X-Hub-Signature"] = f"sha1={tampered(sha1, tamper)}"
        return headers

    def _push_payload(self, repo: ForgeRepo, ref: str, before: str, after: str, path: str) -> dict[str, Any]:
        owner, _, name = path.partition("/")
        web = f"{self.base_url}/{path}"
        user = {"id": 1, "login": owner, "username": owner, "full_name": "", "email": f"{owner}@noreply.localhost"}
        commits = [] if after == ZERO_SHA else [{"id": after, "message": "pushed\n", "url": f"{web}/commit/{after}",
                                                  "timestamp": _now(), "added": [], "removed": [], "modified": []}]
        return {"ref": ref, "before": before, "after": after, "compare_url": f"{web}/compare/{before}...{after}",
                "commits": commits, "total_commits": len(commits), "head_commit": commits[0] if commits else None,
                "repository": {"id": repo.id, "owner": user, "name": name, "full_name": path, "private": False,
                               "html_url": web, "clone_url": f"{web}.git", "default_branch": repo.default_branch},
                "pusher": user, "sender": user}


def _int(value: str | None, default: int) -> int:
    """A paging parameter; a missing or unreadable one falls back to the default."""
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``GITEA_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("gitea", 8092, "GITEA_EMULATOR_TOKEN")
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME[=GIT_DIR]",
                        help="repository to create (repeatable), optionally backed by a bare Git repository")
    parser.add_argument("--forgejo", action="store_true", help="also send Forgejo's X-Forgejo-* headers")
    args = parser.parse_args(argv)
    emulator = GiteaEmulator(token=token_from_env("GITEA_EMULATOR_TOKEN"), forgejo=args.forgejo)
    for spec in args.repo:
        path, _, git_dir = spec.partition("=")
        emulator.add_repo(path, git_dir=git_dir or None)
    emulator.base_url = f"http://{args.host}:{args.port}"
    serve_forever(emulator.app(), "Gitea", emulator.api_url, "GITEA_EMULATOR_TOKEN",
                  emulator.token is not None, args.host, args.port)


if __name__ == "__main__":
    main()
