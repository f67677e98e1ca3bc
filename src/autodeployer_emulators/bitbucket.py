"""A Bitbucket Server / Data Center emulator (webhooks, build statuses, push deliveries), plus the
delivery Bitbucket Cloud sends.

Facts it follows (Bitbucket Data Center REST and "Event payload" / "Manage webhooks" pages):

* REST under `/rest/api/1.0`; an HTTP access token as `Authorization: Bearer <t>`; else 401
  `{"errors": [{"message": "Authentication failed. Please check your credentials and try again."}]}`.
  JSON answers are typed `application/json;charset=UTF-8` (exactly so: clients compare the value).
* Webhooks: `GET/POST /rest/api/1.0/projects/{key}/repos/{slug}/webhooks`,
  `GET/PUT/DELETE .../webhooks/{id}`; body `{"name", "url", "events": ["repo:refs_changed"], "active",
  "configuration": {"secret"}}` (name, url and events required, else 400); the secret is not shown;
  a PUT without `configuration` keeps it. Paged lists: `start`, `limit` in the query;
  `{"size", "limit", "start", "isLastPage", "values", "nextPageStart"}`.
* Build statuses: `POST /rest/build-status/1.0/commits/{sha}` with `state` in INPROGRESS, SUCCESSFUL,
  FAILED (also CANCELLED, UNKNOWN), `key` and `url` required (else 400); 204 No Content. The same
  `key` replaces the earlier status. `GET` of the same path lists them, paged.
* Server deliveries: POST `application/json; charset=utf-8` with `X-Event-Key: repo:refs_changed`,
  `X-Request-Id` (a UUID per request), and, when the hook has a secret,
  `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>`. Payload: `eventKey`, `date`, `actor`,
  `repository` (`slug`, `id`, `name`, `project.key`), `changes[]` (`ref.id` `refs/heads/main`,
  `ref.displayId`, `ref.type` BRANCH/TAG, `refId`, `fromHash`, `toHash`, `type` ADD/UPDATE/DELETE).
  "Test connection" sends `X-Event-Key: diagnostics:ping`.
* Cloud deliveries (`cloud_push`): `X-Event-Key: repo:push`, `X-Request-UUID`, `X-Hook-UUID`,
  `User-Agent: Bitbucket-Webhooks/2.0`, no signature; payload `push.changes[]` with `new`
  (`type` branch/tag, `name`, `target.hash`) and `old`, and `repository.full_name`.

Server pull requests (`refs/pull-requests/<id>/from` and `/merge`, comments, activities, `pr:*`
deliveries; a push to a pull request's source branch updates it and sends `pr:from_ref_updated`):
`bitbucket_pulls.py`.

`python -m autodeployer_emulators.bitbucket` serves it stand-alone (token from BITBUCKET_EMULATOR_TOKEN).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

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
from autodeployer_emulators.bitbucket_pulls import PULLS, BitbucketPulls

JSON_TYPE = b"application/json;charset=UTF-8"
STATES = ("INPROGRESS", "SUCCESSFUL", "FAILED", "CANCELLED", "UNKNOWN")
HOOKS = re.compile(r"^/rest/api/1\.0/projects/(?P<key>[^/]+)/repos/(?P<slug>[^/]+)/webhooks(?:/(?P<id>\d+))?$")
STATUS = re.compile(r"^/rest/build-status/1\.0/commits/(?P<sha>[0-9a-f]{40})$")
AUTH_FAILED = {"errors": [{"context": None, "message": "Authentication failed. Please check your credentials "
                           "and try again.",
                           "exceptionName": "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"}]}


class BitbucketEmulator(ForgeEmulator):
    host_name = "Bitbucket"

    def __init__(self, token: str | None = None) -> None:
        super().__init__(token)
        self.pulls = BitbucketPulls(self)  # Server pull requests, comments and pr:* deliveries

    @property
    def api_url(self) -> str:
        """BITBUCKET_API_URL: the server's base (its REST API is under /rest)."""
        return self.base_url

    def hooks(self, path: str) -> list[dict[str, Any]]:
        repo = self.repo(path)
        with self.lock:
            return [json.loads(json.dumps(h)) for h in (repo.hooks if repo else [])]

    def build_statuses(self, sha: str) -> list[dict[str, Any]]:
        """Build statuses are per commit on Bitbucket (not per repository)."""
        with self.lock:
            return [dict(s) for repo in self.repos.values() for s in repo.statuses.get(sha, [])]

    # ------------------------------------------------------------------ HTTP
    def app(self) -> Any:
        inner = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST", "PUT", "DELETE"])])
        return server_content_type(inner)

    async def _endpoint(self, request: Request) -> Response:
        if not self.authorised(self.bearer(request)):
            return json_error(401, AUTH_FAILED)
        body: dict[str, Any] = {}
        if request.method in ("POST", "PUT"):
            try:
                loaded = json.loads(await request.body() or b"{}")
            except ValueError:
                return json_error(400, {"errors": [{"message": "The request body is not valid JSON."}]})
            body = loaded if isinstance(loaded, dict) else {}
        query = {k: v[0] for k, v in parse_qs(request.url.query).items()}
        status = STATUS.match(request.url.path)
        if status:
            return self._status(request.method, status["sha"], body, query)
        pulls = PULLS.match(request.url.path)
        pulls_repo = self.repo(f"{pulls['key']}/{pulls['slug']}") if pulls else None
        if pulls is not None and pulls_repo is not None:
            return self.pulls.route(request.method, pulls_repo, pulls["rest"] or "", body, query)
        hooks = HOOKS.match(request.url.path)
        repo = self.repo(f"{hooks['key']}/{hooks['slug']}") if hooks else None
        if hooks is None or repo is None:
            return json_error(404, {"errors": [{"message": "Repository does not exist."}]})
        if hooks["id"] is None:
            return self._list_hooks(repo, query) if request.method == "GET" else self._create_hook(repo, body)
        return self._hook(request.method, repo, int(hooks["id"]), body)

    @staticmethod
    def _shown(hook: dict[str, Any]) -> dict[str, Any]:
        shown = dict(hook)
        shown["configuration"] = {k: v for k, v in hook["configuration"].items() if k != "secret"}
        return shown

    def paged(self, items: list[Any], query: dict[str, str]) -> Response:
        start, limit = int(query.get("start", "0") or 0), int(query.get("limit", "25") or 25)
        size = max(1, min(limit, self.max_page_size))
        values = items[start:start + size]
        last = start + size >= len(items)
        page: dict[str, Any] = {"size": len(values), "limit": size, "start": start, "isLastPage": last,
                                "values": values}
        if not last:
            page["nextPageStart"] = start + size
        return JSONResponse(page)

    def _list_hooks(self, repo: ForgeRepo, query: dict[str, str]) -> Response:
        with self.lock:
            items = [self._shown(h) for h in repo.hooks]
        return self.paged(items, query)

    def _create_hook(self, repo: ForgeRepo, body: dict[str, Any]) -> Response:
        missing = [k for k in ("name", "url", "events") if not body.get(k)]
        if missing:
            return json_error(400, {"errors": [{"message": f"{missing[0]} is required"}]})
        now = int(datetime.now(UTC).timestamp() * 1000)
        given = body.get("configuration")
        configuration: dict[str, Any] = given if isinstance(given, dict) else {}
        hook = {"id": self.next_id(), "name": str(body["name"]), "createdDate": now, "updatedDate": now,
                "events": list(body["events"]), "configuration": {k: str(v) for k, v in configuration.items()},
                "url": str(body["url"]), "active": bool(body.get("active", True)), "scopeType": "repository",
                "sslVerificationRequired": True}
        with self.lock:
            repo.hooks.append(hook)
        return JSONResponse(self._shown(hook), status_code=201)

    def _hook(self, method: str, repo: ForgeRepo, hook_id: int, body: dict[str, Any]) -> Response:
        with self.lock:
            hook = next((h for h in repo.hooks if h["id"] == hook_id), None)
            if hook is None:
                return json_error(404, {"errors": [{"message": f"Webhook {hook_id} does not exist."}]})
            if method == "GET":
                return JSONResponse(self._shown(hook))
            if method == "DELETE":
                repo.hooks.remove(hook)
                return Response(status_code=204)
            for key in ("name", "url", "events", "active"):
                if key in body:
                    hook[key] = body[key]
            if isinstance(body.get("configuration"), dict):
                hook["configuration"] = {k: str(v) for k, v in body["configuration"].items()}
            hook["updatedDate"] = int(datetime.now(UTC).timestamp() * 1000)
            return JSONResponse(self._shown(hook))

    def _status(self, method: str, sha: str, body: dict[str, Any], query: dict[str, str]) -> Response:
        if method == "GET":
            return self.paged(self.build_statuses(sha), query)
        if method != "POST":
            return json_error(405, {"errors": [{"message": "Method not allowed"}]})
        if body.get("state") not in STATES:
            return json_error(400, {"errors": [{"message": f"state must be one of {', '.join(STATES)}"}]})
        missing = [k for k in ("key", "url") if not body.get(k)]
        if missing:
            return json_error(400, {"errors": [{"message": f"{missing[0]} is required"}]})
        with self.lock:
            owner = next((r for r in self.repos.values() if r.has_commit(sha)), None)
            if owner is None:
                return json_error(404, {"errors": [{"message": f"Commit {sha} does not exist."}]})
            statuses = owner.statuses.setdefault(sha, [])
            statuses[:] = [s for s in statuses if s["key"] != body["key"]]
            statuses.append({"state": body["state"], "key": body["key"], "name": body.get("name") or body["key"],
                             "url": body["url"], "description": body.get("description") or "",
                             "dateAdded": int(datetime.now(UTC).timestamp() * 1000)})
        return Response(status_code=204)

    # ------------------------------------------------------------------ deliveries
    def push(self, path: str, ref: str, before: str, after: str, *, tamper: Tamper = None,
             repository_path: str | None = None) -> list[Sent]:
        """Deliver `repo:refs_changed` to every active hook subscribed to it (Server)."""
        repo = self.repo(path)
        if repo is None:
            raise KeyError(f"no repository {path}")
        with self.lock:
            hooks = [json.loads(json.dumps(h)) for h in repo.hooks
                     if h["active"] and "repo:refs_changed" in h["events"]]
        body = json.dumps(self._server_payload(repo, ref, before, after, repository_path or repo.path)).encode()
        sent = [self.deliver_signed(hook, "repo:refs_changed", body, tamper) for hook in hooks]
        if ref.startswith("refs/heads/") and after != ZERO_SHA and repo.git_dir is not None:
            sent += self.pulls.source_pushed(path, ref.removeprefix("refs/heads/"), tamper)
        return sent

    def deliver_signed(self, hook: dict[str, Any], event: str, body: bytes, tamper: Tamper = None) -> Sent:
        """POST one Server delivery to `hook`, signed with its secret (when it has one)."""
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Event-Key": event,
                   "X-Request-Id": new_uuid(), "User-Agent": "Atlassian HttpClient 4.2.0 / Bitbucket-8.19.1"}
        secret = hook["configuration"].get("secret")
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest() if secret else None
        with_header(headers, "X-Hub-Signature", tampered(signature, tamper) if signature else None)
        return self.send(hook["url"], headers, body)

    def _server_payload(self, repo: ForgeRepo, ref: str, before: str, after: str, path: str) -> dict[str, Any]:
        key, _, slug = path.partition("/")
        kind = "TAG" if ref.startswith("refs/tags/") else "BRANCH"
        change = "DELETE" if after == ZERO_SHA else "ADD" if before == ZERO_SHA else "UPDATE"
        return {
            "eventKey": "repo:refs_changed", "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
            "actor": {"name": "admin", "emailAddress": "admin@example.com", "id": 1, "displayName": "Administrator",
                      "active": True, "slug": "admin", "type": "NORMAL"},
            "repository": {"slug": slug, "id": repo.id, "name": slug, "scmId": "git", "state": "AVAILABLE",
                           "forkable": True, "public": False,
                           "project": {"key": key, "id": 1, "name": key, "public": False, "type": "NORMAL"}},
            "changes": [{"ref": {"id": ref, "displayId": ref.split("/", 2)[-1], "type": kind}, "refId": ref,
                         "fromHash": before, "toHash": after, "type": change}],
        }

    def cloud_push(self, url: str, full_name: str, branch: str, after: str) -> Sent:
        """Send the delivery Bitbucket Cloud sends for a push (unsigned) to `url`."""
        web = f"https://bitbucket.org/{full_name}"
        payload = {
            "actor": {"type": "user", "display_name": "Someone", "uuid": "{" + new_uuid() + "}"},
            "repository": {"type": "repository", "full_name": full_name, "name": full_name.split("/")[-1],
                           "uuid": "{" + new_uuid() + "}", "links": {"html": {"href": web}}},
            "push": {"changes": [{"new": {"type": "branch", "name": branch,
                                          "target": {"type": "commit", "hash": after}},
                                  "old": None, "created": True, "forced": False, "closed": False,
                                  "commits": [{"hash": after, "type": "commit"}], "truncated": False}]},
        }
        headers = {"Content-Type": "application/json", "User-Agent": "Bitbucket-Webhooks/2.0",
                   "X-Event-Key": "repo:push", "X-Request-UUID": new_uuid(), "X-Hook-UUID": new_uuid(),
                   "X-Attempt-Number": "1"}
        return self.send(url, headers, json.dumps(payload).encode())


def server_content_type(app: Any) -> Any:
    """Wrap `app` so JSON answers carry `Content-Type: application/json;charset=UTF-8`, as Bitbucket
    Server's REST layer writes it. Clients key on the exact value: atlassian-python-api, for one, reads
    a 401's JSON error only under that type (else it reports a bare "Unauthorized (401)")."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def send_typed(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, JSON_TYPE if k == b"content-type" and v.startswith(b"application/json")
                                       else v) for k, v in message.get("headers", [])]
            await send(message)

        await app(scope, receive, send_typed)

    return wrapped


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``BITBUCKET_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("bitbucket", 8093, "BITBUCKET_EMULATOR_TOKEN")
    parser.add_argument("--repo", action="append", default=[], metavar="PROJECT/SLUG[=GIT_DIR]",
                        help="repository to create (repeatable), optionally backed by a bare Git repository")
    args = parser.parse_args(argv)
    emulator = BitbucketEmulator(token=token_from_env("BITBUCKET_EMULATOR_TOKEN"))
    for spec in args.repo:
        path, _, git_dir = spec.partition("=")
        emulator.add_repo(path, git_dir=git_dir or None)
    emulator.base_url = f"http://{args.host}:{args.port}"
    serve_forever(emulator.app(), "Bitbucket", emulator.api_url, "BITBUCKET_EMULATOR_TOKEN",
                  emulator.token is not None, args.host, args.port)


if __name__ == "__main__":
    main()
