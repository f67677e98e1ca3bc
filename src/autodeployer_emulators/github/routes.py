"""GitHub's REST surface: the request pipeline (auth, scopes, rate limit, faults) and handlers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from autodeployer_emulators.github.pulls import GitHubPulls, IssueComment, PullRequest
from autodeployer_emulators.github.state import (
    _REPO,
    _SHA_RE,
    GHES_VERSION,
    HOOK_ADMIN_SCOPES,
    HOOK_READ_SCOPES,
    HOOK_WRITE_SCOPES,
    MASKED_SECRET,
    MAX_STATUSES_PER_CONTEXT,
    SHA_MEDIA_TYPES,
    STATUS_SCOPES,
    STATUS_STATES,
    CommitInfo,
    DeliveryRecord,
    Hook,
    Person,
    RepoState,
    RequestRecord,
    _error,
    _etag_matches,
    _events_overlap,
    _Fault,
    _HttpError,
    _int_param,
    _invalid,
    _iso,
    _redacted,
    _Reply,
    _subscribed,
    _synthetic_commit,
)


@dataclass(frozen=True)
class _Call:
    """The parts of an HTTP request the handlers need, read once in the event loop."""

    method: str
    raw_path: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    root: str
    url: str


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., _Reply]
    scopes: frozenset[str] | None = None
    permission: str | None = None


def _json_object(call: _Call) -> dict[str, Any]:
    if not call.body.strip():
        return {}
    try:
        body = json.loads(call.body)
    except ValueError:
        raise _HttpError(_error(400, "Problems parsing JSON")) from None
    if not isinstance(body, dict):
        raise _HttpError(_error(400, "Body should be a JSON object"))
    return body


def _parse_config(raw: Any, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Validate a hook config, applying GitHub's defaults; ``base`` merges (used by ``/config``)."""
    if not isinstance(raw, dict):
        raise _invalid("Hook", "config must be an object", "config")
    merged: dict[str, Any] = {**(base or {}), **raw}
    url = merged.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("Hook", "url is missing or not an http(s) URL", "config.url")
    content_type = merged.get("content_type", "form")
    if content_type not in ("json", "form"):
        raise _invalid("Hook", "content_type must be json or form", "config.content_type")
    insecure = merged.get("insecure_ssl", "0")
    if insecure in (True, 1, "1"):
        insecure = "1"
    elif insecure in (False, 0, "0"):
        insecure = "0"
    else:
        raise _invalid("Hook", "insecure_ssl must be 0 or 1", "config.insecure_ssl")
    config = {"url": url, "content_type": content_type, "insecure_ssl": insecure}
    secret = merged.get("secret")
    if base is not None and secret == MASKED_SECRET:
        secret = base.get("secret")  # echoing the mask back keeps the stored secret
    if secret is not None and not isinstance(secret, str):
        raise _invalid("Hook", "secret must be a string", "config.secret")
    if secret:
        config["secret"] = secret
    return config


def _parse_events(raw: Any, field_name: str = "events") -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(e, str) and e for e in raw):
        raise _invalid("Hook", f"{field_name} must be a list of event names", field_name)
    return list(dict.fromkeys(raw))


def _parse_bool(raw: Any, field_name: str) -> bool:
    if not isinstance(raw, bool):
        raise _invalid("Hook", f"{field_name} must be a boolean", field_name)
    return raw


def _paginate(call: _Call, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """Section 3: ``per_page`` 30 by default, at most 100; ``Link`` only with several pages."""
    per_page = min(100, max(1, _int_param(call.query.get("per_page"), 30)))
    page = max(1, _int_param(call.query.get("page"), 1))
    last = max(1, math.ceil(len(items) / per_page))
    chunk = items[(page - 1) * per_page : page * per_page]
    if last <= 1:
        return chunk, {}

    def link(number: int, rel: str) -> str:
        query = {**call.query, "page": str(number)}
        return f'<{call.url}?{urlencode(query)}>; rel="{rel}"'

    links = []
    if page > 1:
        links.append(link(min(page - 1, last), "prev"))
    if page < last:
        links += [link(page + 1, "next"), link(last, "last")]
    if page > 1:
        links.append(link(1, "first"))
    return chunk, {"Link": ", ".join(links)}


def _to_response(reply: _Reply) -> Response:
    if reply.status in (204, 304) or reply.body is None:
        return Response(b"", status_code=reply.status, headers=reply.headers)
    if isinstance(reply.body, (bytes, str)):
        return Response(reply.body, reply.status, reply.headers, reply.media_type or "text/plain")
    content = json.dumps(reply.body).encode("utf-8")
    return Response(content, reply.status, reply.headers, "application/json; charset=utf-8")

PULL_SCOPES = frozenset({"repo", "public_repo"})
#: What GitHub says with the statuses a test's fault asks for.
_FAULT_MESSAGES = {403: "Resource not accessible by integration", 404: "Not Found",
                   422: "Validation Failed"}


class GitHubRoutes(GitHubPulls):
    """The REST request pipeline and handlers on top of :class:`GitHubPulls`."""

    @cached_property
    def _routes(self) -> list[_Route]:
        """The routing table, built once on first use (its handlers are bound to this emulator)."""
        return self._build_routes()

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        raw_path = request.url.path
        prefix = self.api_prefix
        path = raw_path[len(prefix) :] if prefix and raw_path.startswith(prefix + "/") else raw_path
        call = _Call(
            method=request.method,
            raw_path=raw_path,
            path=path if (not prefix or path != raw_path) else "",
            query=dict(request.query_params),
            headers=request.headers,
            body=body,
            root=f"{request.url.scheme}://{request.url.netloc}",
            url=str(request.url.replace(query="")),
        )
        reply = self._handle(call)
        delay = self._delay_for(call.path)
        if delay:
            await asyncio.sleep(delay)  # the call took effect at once; only its answer is slow
        return _to_response(reply)

    # ---------------------------------------------------------------- request pipeline

    def _handle(self, call: _Call) -> _Reply:
        with self._lock:
            try:
                reply = self._process(call)
            except _HttpError as exc:
                reply = exc.reply
            reply.headers.setdefault("X-GitHub-Request-Id", secrets.token_hex(8).upper())
            reply.headers.setdefault("X-GitHub-Media-Type", "github.v3; format=json")
            if self.ghes:
                reply.headers["X-GitHub-Enterprise-Version"] = GHES_VERSION
            self._requests.append(
                RequestRecord(
                    call.method,
                    call.path or call.raw_path,
                    call.raw_path,
                    dict(call.query),
                    reply.status,
                    _redacted(call.headers),
                )
            )
            return reply

    def _process(self, call: _Call) -> _Reply:
        if not call.path:
            return _error(404, "Not Found")
        anonymous = not self._authenticate(call)
        if call.path == "/rate_limit" and call.method == "GET":
            return self._rate_limit_reply()
        fault = self._take_fault(call.path)
        if fault is not None:
            return fault
        route, params = self._match(call)
        budget = self.rate_budget
        budget.roll(time.time())
        exhausted = budget.remaining <= 0
        if exhausted and call.method != "GET":
            return self._primary_limit_reply()
        try:
            if route is None:
                raise _HttpError(_error(404, "Not Found"))
            if anonymous:
                self._check_anonymous(call, route, params)
            else:
                self._authorize(route)
            reply = route.handler(call, **params)
        except _HttpError as exc:
            reply = exc.reply
        if reply.status != 304:  # conditional hits are free, even on an empty budget
            if exhausted:
                return self._primary_limit_reply()
            budget.used += 1
        reply.headers.update(budget.headers())
        return reply

    def _authenticate(self, call: _Call) -> bool:
        """True for a valid token (or auth disabled), False for no token; 401 for a bad one."""
        if self.token is None:
            return True
        header = call.headers.get("authorization", "")
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        valid = scheme.lower() in ("bearer", "token") and hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        )
        if not valid:
            raise _HttpError(_error(401, "Bad credentials"))
        return True

    def _check_anonymous(self, call: _Call, route: _Route, params: Mapping[str, str]) -> None:
        """GitHub serves reads of public repositories without a token; nothing else.

        A private repository is a 404 (GitHub does not confirm it exists); writes, hooks (admin
        only) and ``/user`` ask for authentication with 401.
        """
        needs_token = route.scopes == HOOK_READ_SCOPES or route.pattern.pattern == r"^/user$"
        if call.method not in ("GET", "HEAD") or needs_token:
            raise _HttpError(_error(401, "Requires authentication"))
        if "owner" in params and self._repo_or_404(params["owner"], params["repo"]).private:
            raise _HttpError(_error(404, "Not Found"))

    def _authorize(self, route: _Route) -> None:
        if route.scopes is None or self.token is None:
            return
        held = set(self.token_scopes)
        if held & route.scopes:
            return
        reply = _error(403, "Resource not accessible by personal access token")
        reply.headers["X-OAuth-Scopes"] = ", ".join(sorted(held))
        reply.headers["X-Accepted-OAuth-Scopes"] = ", ".join(sorted(route.scopes))
        if route.permission:
            reply.headers["X-Accepted-GitHub-Permissions"] = route.permission
        raise _HttpError(reply)

    def _take_fault(self, path: str) -> _Reply | None:
        for fault in self._faults:
            if fault.path_prefix is None or path.startswith(fault.path_prefix):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return self._fault_reply(fault)
        return None

    def _fault_reply(self, fault: _Fault) -> _Reply:
        budget = self.rate_budget
        budget.roll(time.time())
        if fault.kind == "error":
            return _error(fault.status, _FAULT_MESSAGES.get(fault.status, "Server Error"))
        headers = budget.headers()
        if fault.retry_after is not None:
            reply = _error(
                fault.status,
                "You have exceeded a secondary rate limit. "
                "Please wait a few minutes before you try again.",
            )
            headers["retry-after"] = str(fault.retry_after)
        else:
            reply = _error(fault.status, "API rate limit exceeded for user ID 1.")
            headers["x-ratelimit-remaining"] = "0"
        reply.headers.update(headers)
        return reply

    def _primary_limit_reply(self) -> _Reply:
        reply = _error(403, "API rate limit exceeded for user ID 1.")
        reply.headers.update(self.rate_budget.headers())
        return reply

    def _rate_limit_reply(self) -> _Reply:
        budget = self.rate_budget
        budget.roll(time.time())
        core = {
            "limit": budget.limit,
            "remaining": budget.remaining,
            "reset": int(budget.reset_at),
            "used": budget.used,
            "resource": "core",
        }
        return _Reply(200, {"resources": {"core": core}, "rate": core}, budget.headers())

    def _match(self, call: _Call) -> tuple[_Route | None, dict[str, str]]:
        for route in self._routes:
            method = "GET" if call.method == "HEAD" else call.method
            if route.method != method:
                continue
            found = route.pattern.match(call.path)
            if found:
                return route, found.groupdict()
        return None, {}

    def _build_routes(self) -> list[_Route]:
        hook = _REPO + r"/hooks/(?P<hook_id>\d+)"
        delivery = hook + r"/deliveries/(?P<delivery_id>\d+)"
        pull = _REPO + r"/pulls/(?P<number>\d+)"
        issue = _REPO + r"/issues/(?P<number>\d+)"
        comment = _REPO + r"/issues/comments/(?P<comment_id>\d+)"
        read, write, admin = HOOK_READ_SCOPES, HOOK_WRITE_SCOPES, HOOK_ADMIN_SCOPES
        hooks_r, hooks_w = "repository_hooks=read", "repository_hooks=write"
        table: list[tuple[str, str, Callable[..., _Reply], frozenset[str] | None, str | None]] = [
            ("GET", r"^/meta$", self._get_meta, None, None),
            ("GET", _REPO + r"$", self._get_repo, None, "metadata=read"),
            ("GET", _REPO + r"/hooks$", self._list_hooks, read, hooks_r),
            ("POST", _REPO + r"/hooks$", self._create_hook, write, hooks_w),
            ("GET", hook + r"$", self._get_hook, read, hooks_r),
            ("PATCH", hook + r"$", self._patch_hook, write, hooks_w),
            ("DELETE", hook + r"$", self._delete_hook, admin, hooks_w),
            ("POST", hook + r"/pings$", self._ping_hook, write, hooks_w),
            ("POST", hook + r"/tests?$", self._test_hook, write, hooks_w),
            ("GET", hook + r"/config$", self._get_hook_config, read, hooks_r),
            ("PATCH", hook + r"/config$", self._patch_hook_config, write, hooks_w),
            ("GET", hook + r"/deliveries$", self._list_deliveries, read, hooks_r),
            ("GET", delivery + r"$", self._get_delivery, read, hooks_r),
            ("POST", delivery + r"/attempts$", self._redeliver_api, write, hooks_w),
            ("POST", _REPO + r"/statuses/(?P<sha>[^/]+)$", self._create_status, STATUS_SCOPES,
             "statuses=write"),
            ("GET", _REPO + r"/statuses/(?P<ref>.+)$", self._list_statuses, STATUS_SCOPES,
             "statuses=read"),
            ("GET", _REPO + r"/commits/(?P<ref>.+)/statuses$", self._list_statuses, STATUS_SCOPES,
             "statuses=read"),
            ("GET", _REPO + r"/commits/(?P<ref>.+)/status$", self._combined_status, STATUS_SCOPES,
             "statuses=read"),
            ("GET", _REPO + r"/commits/(?P<ref>.+)$", self._get_commit, None, "contents=read"),
            ("GET", _REPO + r"/branches$", self._list_branches, None, "contents=read"),
            ("GET", _REPO + r"/branches/(?P<branch>.+)$", self._get_branch, None, "contents=read"),
            ("GET", _REPO + r"/git/refs?/heads/(?P<branch>.+)$", self._get_ref, None,
             "contents=read"),
            ("GET", r"^/user$", self._get_user, None, None),
            ("GET", _REPO + r"/pulls$", self._list_pulls, None, "pull_requests=read"),
            ("POST", _REPO + r"/pulls$", self._create_pull, PULL_SCOPES, "pull_requests=write"),
            ("GET", pull + r"$", self._get_pull, None, "pull_requests=read"),
            ("PATCH", pull + r"$", self._patch_pull, PULL_SCOPES, "pull_requests=write"),
            ("PUT", pull + r"/merge$", self._merge_pull, PULL_SCOPES, "contents=write"),
            ("GET", pull + r"/merge$", self._is_merged, None, "pull_requests=read"),
            ("GET", issue + r"/comments$", self._list_comments, None, "issues=read"),
            ("POST", issue + r"/comments$", self._create_comment, PULL_SCOPES, "issues=write"),
            ("PATCH", comment + r"$", self._edit_comment, PULL_SCOPES, "issues=write"),
            ("DELETE", comment + r"$", self._delete_comment, PULL_SCOPES, "issues=write"),
            ("GET", comment + r"$", self._get_comment, None, "issues=read"),
        ]
        return [_Route(m, re.compile(p), h, s, perm) for m, p, h, s, perm in table]

    # ---------------------------------------------------------------- misc endpoints

    def _get_meta(self, call: _Call) -> _Reply:
        body: dict[str, Any] = {
            "verifiable_password_authentication": False,
            "hooks": ["127.0.0.1/32"],
        }
        if self.ghes:
            body["installed_version"] = GHES_VERSION
        return _Reply(200, body)

    def _get_repo(self, call: _Call, owner: str, repo: str) -> _Reply:
        return _Reply(200, self._repo_json(call.root, self._repo_or_404(owner, repo)))

    # ---------------------------------------------------------------- hooks endpoints

    def _check_duplicate(self, repo: RepoState, config: Mapping[str, str], events: list[str],
                         skip: int = 0) -> None:
        """GitHub's rule: "each webhook should have a unique config; multiple webhooks can share
        the same config as long as those webhooks do not have any events that overlap". The
        config is the whole object (URL, content type, TLS check, secret), not the URL alone."""
        for other in repo.hooks.values():
            same_config = other.id != skip and other.config == dict(config)
            if same_config and _events_overlap(other.events, events):
                raise _invalid("Hook", "Hook already exists on this repository")

    def _create_hook(self, call: _Call, owner: str, repo: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        body = _json_object(call)
        if body.get("name", "web") != "web":
            raise _invalid("Hook", "name must be 'web'", "name")
        if "config" not in body:
            raise _invalid("Hook", "config is missing", "config")
        config = _parse_config(body["config"])
        events = _parse_events(body.get("events", ["push"]))
        active = _parse_bool(body.get("active", True), "active")
        self._check_duplicate(state, config, events)
        hook = Hook(id=self._next_hook_id, events=events, config=config, active=active)
        self._next_hook_id += 1
        state.hooks[hook.id] = hook
        self._hook_repo[hook.id] = (owner.lower(), repo.lower())
        if active:
            self._spawn(self._ping_outgoing(call.root, state, hook))
        rendered = self._hook_json(call.root + self.api_prefix, state, hook)
        return _Reply(201, rendered, {"Location": rendered["url"]})

    def _list_hooks(self, call: _Call, owner: str, repo: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        api = call.root + self.api_prefix
        ordered = sorted(state.hooks.values(), key=lambda h: h.id)
        hooks = [self._hook_json(api, state, h) for h in ordered]
        page, headers = _paginate(call, hooks)
        return _Reply(200, page, headers)

    def _get_hook(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        state, hook = self._hook_or_404(owner, repo, hook_id)
        return _Reply(200, self._hook_json(call.root + self.api_prefix, state, hook))

    def _patch_hook(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        """``config`` replaces the whole config; ``events`` replaces, ``add/remove_events`` edit."""
        state, hook = self._hook_or_404(owner, repo, hook_id)
        body = _json_object(call)
        config = _parse_config(body["config"]) if "config" in body else hook.config
        events = _parse_events(body["events"]) if "events" in body else list(hook.events)
        if "add_events" in body:
            added = _parse_events(body["add_events"], "add_events")
            events += [e for e in added if e not in events]
        if "remove_events" in body:
            removed = set(_parse_events(body["remove_events"], "remove_events"))
            events = [e for e in events if e not in removed]
        active = _parse_bool(body["active"], "active") if "active" in body else hook.active
        self._check_duplicate(state, config, events, skip=hook.id)
        hook.config, hook.events, hook.active, hook.updated_at = config, events, active, _iso()
        return _Reply(200, self._hook_json(call.root + self.api_prefix, state, hook))

    def _delete_hook(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        state, hook = self._hook_or_404(owner, repo, hook_id)
        del state.hooks[hook.id]
        self._hook_repo.pop(hook.id, None)
        return _Reply(204)

    def _ping_hook(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        state, hook = self._hook_or_404(owner, repo, hook_id)
        self._spawn(self._ping_outgoing(call.root, state, hook))
        return _Reply(204)

    def _test_hook(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        """Re-send the latest push to this hook only, if it subscribes to push (fresh GUID)."""
        state, hook = self._hook_or_404(owner, repo, hook_id)
        if state.last_push is not None and _subscribed(hook.events, "push"):
            guid = str(uuid.uuid4())
            self._spawn(self._hook_outgoing(state, hook, "push", state.last_push, guid))
        return _Reply(204)

    def _get_hook_config(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        state, hook = self._hook_or_404(owner, repo, hook_id)
        return _Reply(200, self._hook_json(call.root, state, hook)["config"])

    def _patch_hook_config(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        """Unlike ``PATCH …/hooks/{id}``, this endpoint takes config fields one by one (merge)."""
        state, hook = self._hook_or_404(owner, repo, hook_id)
        config = _parse_config(_json_object(call), base=hook.config)
        self._check_duplicate(state, config, hook.events, skip=hook.id)
        hook.config, hook.updated_at = config, _iso()
        return _Reply(200, self._hook_json(call.root, state, hook)["config"])

    def _delivery_summary(self, record: DeliveryRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "guid": record.guid,
            "delivered_at": record.delivered_at,
            "redelivery": record.redelivery,
            "duration": round(record.duration, 3),
            "status": record.status,
            "status_code": record.status_code or 0,
            "event": record.event,
            "action": record.payload.get("action"),
            "installation_id": None,
            "repository_id": record.repository_id,
            "throttled_at": None,
        }

    def _hook_deliveries(self, hook: Hook) -> list[DeliveryRecord]:
        return [d for d in reversed(self._deliveries) if d.hook_id == hook.id]

    def _list_deliveries(self, call: _Call, owner: str, repo: str, hook_id: str) -> _Reply:
        _, hook = self._hook_or_404(owner, repo, hook_id)
        summaries = [self._delivery_summary(d) for d in self._hook_deliveries(hook)]
        page, headers = _paginate(call, summaries)
        return _Reply(200, page, headers)

    def _delivery_or_404(
        self, owner: str, repo: str, hook_id: str, delivery_id: str
    ) -> DeliveryRecord:
        _, hook = self._hook_or_404(owner, repo, hook_id)
        for record in self._hook_deliveries(hook):
            if record.id == int(delivery_id):
                return record
        raise _HttpError(_error(404, "Not Found"))

    def _get_delivery(
        self, call: _Call, owner: str, repo: str, hook_id: str, delivery_id: str
    ) -> _Reply:
        record = self._delivery_or_404(owner, repo, hook_id, delivery_id)
        detail = self._delivery_summary(record)
        detail["url"] = record.url
        detail["request"] = {"headers": record.request_headers, "payload": record.payload}
        detail["response"] = {
            "headers": record.response_headers,
            "payload": record.response_body.decode("utf-8", "replace") or None,
        }
        return _Reply(200, detail)

    def _redeliver_api(
        self, call: _Call, owner: str, repo: str, hook_id: str, delivery_id: str
    ) -> _Reply:
        record = self._delivery_or_404(owner, repo, hook_id, delivery_id)
        self._spawn(self._redelivery_outgoing(record), redelivery=True)
        return _Reply(202, {})

    # ---------------------------------------------------------------- statuses and commits

    def _create_status(self, call: _Call, owner: str, repo: str, sha: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        if not _SHA_RE.match(sha) or self._commit(state, sha.lower()) is None:
            raise _HttpError(_error(422, f"No commit found for SHA: {sha}"))
        sha = sha.lower()
        body = _json_object(call)
        if body.get("state") not in STATUS_STATES:
            raise _invalid("Status", "state is not included in the list", "state")
        context = body.get("context") or "default"
        description, target_url = body.get("description"), body.get("target_url")
        fields = {"context": context, "description": description, "target_url": target_url}
        for name, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise _invalid("Status", f"{name} must be a string", name)
        if description is not None and len(description) > 140:
            too_long = "description is too long (maximum is 140 characters)"
            raise _invalid("Status", too_long, "description")
        existing = state.statuses.setdefault(sha, [])
        if sum(1 for s in existing if s["context"] == context) >= MAX_STATUSES_PER_CONTEXT:
            full = "This SHA and context has reached the maximum number of statuses."
            raise _invalid("Status", full)
        api = call.root + self.api_prefix
        now = _iso()
        status = {
            "url": f"{api}/repos/{state.owner}/{state.name}/statuses/{sha}",
            "avatar_url": f"{self._web_url(call.root)}/{state.owner}.png",
            "id": self._next_status_id,
            "node_id": f"SC_{self._next_status_id}",
            "state": body["state"],
            "description": description,
            "target_url": target_url,
            "context": context,
            "created_at": now,
            "updated_at": now,
            "creator": self._user_json(api, self._web_url(call.root), state.owner),
        }
        self._next_status_id += 1
        existing.append(status)
        return _Reply(201, status, {"Location": status["url"]})

    def _list_statuses(self, call: _Call, owner: str, repo: str, ref: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        sha = self._resolve_or_422(state, ref)
        newest_first = list(reversed(state.statuses.get(sha, [])))
        page, headers = _paginate(call, newest_first)
        return _Reply(200, page, headers)

    def _combined_status(self, call: _Call, owner: str, repo: str, ref: str) -> _Reply:
        """Latest status per context; failure beats pending beats success (section 6)."""
        state = self._repo_or_404(owner, repo)
        sha = self._resolve_or_422(state, ref)
        latest: dict[str, dict[str, Any]] = {}
        for status in state.statuses.get(sha, []):
            latest[status["context"]] = status
        current = sorted(latest.values(), key=lambda s: s["id"], reverse=True)
        states = {s["state"] for s in current}
        if states & {"error", "failure"}:
            combined = "failure"
        elif not states or "pending" in states:
            combined = "pending"
        else:
            combined = "success"
        brief = [{k: v for k, v in s.items() if k != "creator"} for s in current]
        page, headers = _paginate(call, brief)
        api_repo = f"{call.root}{self.api_prefix}/repos/{state.owner}/{state.name}"
        body = {
            "state": combined,
            "statuses": page,
            "sha": sha,
            "total_count": len(current),
            "repository": self._repo_json(call.root, state),
            "commit_url": f"{api_repo}/commits/{sha}",
            "url": f"{api_repo}/commits/{sha}/status",
        }
        return _Reply(200, body, headers)

    def _get_commit(self, call: _Call, owner: str, repo: str, ref: str) -> _Reply:
        """Branch head read: the SHA media type answers the SHA as text; If-None-Match → 304."""
        state = self._repo_or_404(owner, repo)
        sha = self._resolve_or_422(state, ref)
        as_sha = any(t in call.headers.get("accept", "") for t in SHA_MEDIA_TYPES)
        etag = f'"{sha}"' if as_sha else f'W/"{sha}-json"'
        headers = {
            "ETag": etag,
            "Cache-Control": "private, max-age=60, s-maxage=60",
            "Vary": "Accept",
        }
        if _etag_matches(call.headers.get("if-none-match"), sha):
            return _Reply(304, None, headers)
        if as_sha:
            return _Reply(200, sha, headers, "text/plain; charset=utf-8")
        commit = self._commit(state, sha) or _synthetic_commit(state.owner, sha)
        return _Reply(200, self._commit_object(call.root, state, commit), headers)

    def _commit_object(self, root: str, repo: RepoState, commit: CommitInfo) -> dict[str, Any]:
        """The full commit object of ``GET /repos/{o}/{r}/commits/{ref}``."""
        api, web = root + self.api_prefix, self._web_url(root)
        api_repo = f"{api}/repos/{repo.owner}/{repo.name}"
        html = f"{web}/{repo.full_name}"
        sha = commit.sha

        def person(p: Person) -> dict[str, str]:
            return {"name": p.name, "email": p.email, "date": p.date}

        files = [{
            "sha": hashlib.sha1(f"{sha}:{f.filename}".encode()).hexdigest(),
            "filename": f.filename,
            "status": f.status,
            "additions": f.additions,
            "deletions": f.deletions,
            "changes": f.additions + f.deletions,
            "blob_url": f"{html}/blob/{sha}/{f.filename}",
            "raw_url": f"{html}/raw/{sha}/{f.filename}",
            "contents_url": f"{api_repo}/contents/{f.filename}?ref={sha}",
        } for f in commit.files]
        additions = sum(f.additions for f in commit.files)
        deletions = sum(f.deletions for f in commit.files)
        user = self._user_json(api, web, repo.owner)
        return {
            "sha": sha,
            "node_id": f"C_{sha[:12]}",
            "commit": {
                "author": person(commit.author),
                "committer": person(commit.committer),
                "message": commit.message,
                "tree": {"sha": commit.tree, "url": f"{api_repo}/git/trees/{commit.tree}"},
                "url": f"{api_repo}/git/commits/{sha}",
                "comment_count": 0,
                "verification": {"verified": False, "reason": "unsigned", "signature": None,
                                 "payload": None, "verified_at": None},
            },
            "url": f"{api_repo}/commits/{sha}",
            "html_url": f"{html}/commit/{sha}",
            "comments_url": f"{api_repo}/commits/{sha}/comments",
            "author": user,
            "committer": user,
            "parents": [{"sha": p, "url": f"{api_repo}/commits/{p}",
                         "html_url": f"{html}/commit/{p}"} for p in commit.parents],
            "stats": {"total": additions + deletions, "additions": additions,
                      "deletions": deletions},
            "files": files,
        }

    # ---------------------------------------------------------------- branches, refs, user

    def _branch_head(self, state: RepoState, branch: str) -> str:
        sha = self._heads(state).get(branch)
        if sha is None:
            raise _HttpError(_error(404, "Branch not found"))
        return sha

    def _list_branches(self, call: _Call, owner: str, repo: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        api_repo = f"{call.root}{self.api_prefix}/repos/{state.owner}/{state.name}"
        branches = [{"name": name, "commit": {"sha": sha, "url": f"{api_repo}/commits/{sha}"},
                     "protected": False}
                    for name, sha in sorted(self._heads(state).items())]
        page, headers = _paginate(call, branches)
        return _Reply(200, page, headers)

    def _get_branch(self, call: _Call, owner: str, repo: str, branch: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        sha = self._branch_head(state, branch)
        commit = self._commit(state, sha) or _synthetic_commit(state.owner, sha)
        api_repo = f"{call.root}{self.api_prefix}/repos/{state.owner}/{state.name}"
        api_branch = f"{api_repo}/branches/{branch}"
        return _Reply(200, {
            "name": branch,
            "commit": self._commit_object(call.root, state, commit),
            "_links": {"self": api_branch,
                       "html": f"{self._web_url(call.root)}/{state.full_name}/tree/{branch}"},
            "protected": False,
            "protection": {"enabled": False, "required_status_checks": {
                "enforcement_level": "off", "contexts": [], "checks": []}},
            "protection_url": f"{api_branch}/protection",
        })

    def _get_ref(self, call: _Call, owner: str, repo: str, branch: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        sha = self._heads(state).get(branch)
        if sha is None:
            raise _HttpError(_error(404, "Not Found"))
        api_repo = f"{call.root}{self.api_prefix}/repos/{state.owner}/{state.name}"
        return _Reply(200, {
            "ref": f"refs/heads/{branch}",
            "node_id": f"REF_{state.id}_{branch}",
            "url": f"{api_repo}/git/refs/heads/{branch}",
            "object": {"sha": sha, "type": "commit", "url": f"{api_repo}/git/commits/{sha}"},
        })

    def _get_user(self, call: _Call) -> _Reply:
        """The token's owner (``user_login``), with the token's scopes in ``X-OAuth-Scopes``."""
        api = call.root + self.api_prefix
        body = {**self._user_json(api, self._web_url(call.root), self.user_login),
                "name": self.user_login, "email": None}
        return _Reply(200, body, {"X-OAuth-Scopes": ", ".join(sorted(self.token_scopes))})


    # ---------------------------------------------------------------- pull requests

    def _pull_or_404(self, owner: str, repo: str, number: str) -> tuple[RepoState, PullRequest]:
        state = self._repo_or_404(owner, repo)
        pr = state.pulls.get(int(number))
        if pr is None:
            raise _HttpError(_error(404, "Not Found"))
        self._refresh(state, pr)
        return state, pr

    def _list_pulls(self, call: _Call, owner: str, repo: str) -> _Reply:
        """State filter (open by default); ``sort`` created (the default) or updated (popularity and
        long-running are taken as created here), ``direction`` desc by default for created, asc otherwise;
        paginated; an ETag over the page's bytes so a poller's ``If-None-Match`` gets a free 304 while
        nothing changed."""
        state = self._repo_or_404(owner, repo)
        wanted = call.query.get("state", "open")
        if wanted not in ("open", "closed", "all"):
            raise _invalid("PullRequest", "state must be open, closed or all", "state")
        order = call.query.get("sort", "created")
        if order not in ("created", "updated", "popularity", "long-running"):
            raise _invalid("PullRequest", "sort must be created, updated, popularity or long-running", "sort")
        direction = call.query.get("direction", "desc" if order == "created" else "asc")
        if direction not in ("asc", "desc"):
            raise _invalid("PullRequest", "direction must be asc or desc", "direction")
        for pr in state.pulls.values():
            self._refresh(state, pr)  # first: a pushed head is an update the order must see
        by_update = order == "updated"
        pulls = sorted(state.pulls.values(), key=lambda p: (p.updated_at, p.number) if by_update else (p.number,),
                       reverse=direction == "desc")
        if call.query.get("head"):
            pulls = [p for p in pulls
                     if f"{p.head_owner or state.owner}:{p.head_ref}" == call.query["head"]]
        if call.query.get("base"):
            pulls = [p for p in pulls if p.base_ref == call.query["base"]]
        items = [self.pull_json(call.root, state, p) for p in pulls
                 if wanted == "all" or p.state == wanted]
        page, headers = _paginate(call, items)
        etag = 'W/"' + hashlib.sha256(json.dumps(page).encode()).hexdigest() + '"'
        headers["ETag"] = etag
        if _etag_matches(call.headers.get("if-none-match"), etag[3:-1]):
            return _Reply(304, None, headers)
        return _Reply(200, page, headers)

    def _create_pull(self, call: _Call, owner: str, repo: str) -> _Reply:
        state = self._repo_or_404(owner, repo)
        pr = self.create_pull(state, _json_object(call), self.user_login)
        self._announce(state, pr, "opened")
        body = self.pull_json(call.root, state, pr)
        return _Reply(201, body, {"Location": body["url"]})

    def _get_pull(self, call: _Call, owner: str, repo: str, number: str) -> _Reply:
        state, pr = self._pull_or_404(owner, repo, number)
        return _Reply(200, self.pull_json(call.root, state, pr))

    def _patch_pull(self, call: _Call, owner: str, repo: str, number: str) -> _Reply:
        state, pr = self._pull_or_404(owner, repo, number)
        data = _json_object(call)
        was_draft = pr.draft
        action = self.edit_pull(state, pr, data)
        if "draft" in data:
            pr.draft = _parse_bool(data["draft"], "draft")
            if was_draft and not pr.draft:
                action = action or "ready_for_review"
        if action is not None:
            self._announce(state, pr, action)
        return _Reply(200, self.pull_json(call.root, state, pr))

    def _merge_pull(self, call: _Call, owner: str, repo: str, number: str) -> _Reply:
        state, pr = self._pull_or_404(owner, repo, number)
        data = _json_object(call) if call.body else {}
        sha = self.merge_pull(state, pr, data.get("sha"))
        self._announce(state, pr, "closed")
        return _Reply(200, {"sha": sha, "merged": True,
                            "message": "Pull Request successfully merged"})

    def _is_merged(self, call: _Call, owner: str, repo: str, number: str) -> _Reply:
        _, pr = self._pull_or_404(owner, repo, number)
        return _Reply(204) if pr.merged else _error(404, "Not Found")

    # ---------------------------------------------------------------- issue comments

    def _comment_body(self, call: _Call) -> str:
        body = _json_object(call).get("body")
        if not isinstance(body, str) or not body:
            raise _invalid("IssueComment", "body is required", "body")
        return body

    def _comment_or_404(self, owner: str, repo: str, comment_id: str) -> tuple[RepoState,
                                                                               IssueComment]:
        state = self._repo_or_404(owner, repo)
        comment = state.comments.get(int(comment_id))
        if comment is None:
            raise _HttpError(_error(404, "Not Found"))
        return state, comment

    def _list_comments(self, call: _Call, owner: str, repo: str, number: str) -> _Reply:
        state, _ = self._pull_or_404(owner, repo, number)
        items = [self.comment_json(call.root, state, c)
                 for c in sorted(state.comments.values(), key=lambda c: c.id)
                 if c.number == int(number)]
        page, headers = _paginate(call, items)
        return _Reply(200, page, headers)

    def _create_comment(self, call: _Call, owner: str, repo: str, number: str) -> _Reply:
        state, pr = self._pull_or_404(owner, repo, number)
        comment = IssueComment(self._next_comment_id, pr.number, self._comment_body(call),
                               self.user_login)
        self._next_comment_id += 1
        state.comments[comment.id] = comment
        body = self.comment_json(call.root, state, comment)
        return _Reply(201, body, {"Location": body["url"]})

    def _get_comment(self, call: _Call, owner: str, repo: str, comment_id: str) -> _Reply:
        state, comment = self._comment_or_404(owner, repo, comment_id)
        return _Reply(200, self.comment_json(call.root, state, comment))

    def _edit_comment(self, call: _Call, owner: str, repo: str, comment_id: str) -> _Reply:
        state, comment = self._comment_or_404(owner, repo, comment_id)
        comment.body, comment.updated_at = self._comment_body(call), time.time()
        return _Reply(200, self.comment_json(call.root, state, comment))

    def _delete_comment(self, call: _Call, owner: str, repo: str, comment_id: str) -> _Reply:
        state, comment = self._comment_or_404(owner, repo, comment_id)
        del state.comments[comment.id]
        return _Reply(204)
