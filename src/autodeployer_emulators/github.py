"""Emulator of the GitHub REST subset and webhook delivery that autodeployer talks to.

GitHub cannot be reached from tests, so this serves the hooks API, commit statuses and the cheap
branch-head read over real HTTP, and sends webhook deliveries the way GitHub does (headers, JSON or
form bodies, HMAC over the exact bytes sent, no automatic retries). Behaviour follows
``/work/shared/reference/github-api.md``; where GitHub is not pinned down the choice is documented
where it is made. A repository can be backed by a real Git directory (``add_repo(git_dir=...)``):
its branches and commits are then what the branch, ref and commit endpoints serve and what
statuses may name (a SHA it lacks is a 422, as on GitHub). PyGithub drives it in the tests;
``docs/emulators.md`` lists what is not served.

Typical use::

    gh = GitHubEmulator(token="ghp_secret")
    gh.add_repo("acme", "config", repo_id=1234, default_branch="master")
    gh.set_head("acme", "config", "master", sha)
    with gh.serve() as server:
        ...  # point the code under test at server.url + gh.api_prefix
        gh.push("acme", "config", "refs/heads/master", before, after)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autodeployer_emulators._server import (
    LoopbackServer,
    serve_forever,
    standalone_parser,
    token_from_env,
)

ZERO_SHA = "0" * 40
MASKED_SECRET = "********"
GHES_VERSION = "3.13.0"
DOCS_URL = "https://docs.github.com/rest"
DEFAULT_SCOPES = frozenset({"repo", "admin:repo_hook"})
HOOK_READ_SCOPES = frozenset({"repo", "admin:repo_hook", "write:repo_hook", "read:repo_hook"})
HOOK_WRITE_SCOPES = frozenset({"repo", "admin:repo_hook", "write:repo_hook"})
HOOK_ADMIN_SCOPES = frozenset({"repo", "admin:repo_hook"})
STATUS_SCOPES = frozenset({"repo", "repo:status"})
STATUS_STATES = ("pending", "success", "error", "failure")
MAX_STATUSES_PER_CONTEXT = 1000
MAX_PAYLOAD_BYTES = 25 * 1024 * 1024
SHA_MEDIA_TYPES = ("application/vnd.github.sha", "application/vnd.github.v3.sha")
ALL_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
ZENS = (
    "Keep it logically awesome.",
    "Design for failure.",
    "Responsive is better than fast.",
    "Non-blocking is better than blocking.",
    "Practicality beats purity.",
    "Speak like a human.",
    "Favor focus over features.",
)
_SHA_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_REPO = r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"


# --------------------------------------------------------------------------------------------
# Pure helpers


def sign_sha256(secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` value: ``sha256=`` + hex HMAC-SHA256 of the raw body (UTF-8 key)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def sign_sha1(secret: str, body: bytes) -> str:
    """Legacy ``X-Hub-Signature`` value; GitHub still sends it alongside the SHA-256 one."""
    return "sha1=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()


def encode_body(payload: Mapping[str, Any], content_type: str) -> tuple[bytes, str]:
    """Serialise a payload as GitHub does for ``json`` or ``form`` hooks; returns (bytes, MIME)."""
    text = json.dumps(payload, separators=(",", ":"))
    if content_type == "form":
        return urlencode({"payload": text}).encode("ascii"), "application/x-www-form-urlencoded"
    return text.encode("utf-8"), "application/json"


def decode_body(body: bytes, content_type: str) -> Any:
    """Inverse of :func:`encode_body`, for inspecting recorded deliveries."""
    if "x-www-form-urlencoded" in content_type:
        return json.loads(parse_qs(body.decode("ascii"))["payload"][0])
    return json.loads(body)


def _iso(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _events_overlap(a: Iterable[str], b: Iterable[str]) -> bool:
    """GitHub's duplicate rule: the same config is fine only when the event sets are disjoint."""
    sa, sb = set(a), set(b)
    return bool(sa & sb) or ("*" in sa and bool(sb)) or ("*" in sb and bool(sa))


def _subscribed(events: Iterable[str], event: str) -> bool:
    return event in events or "*" in events


def _etag_matches(if_none_match: str | None, sha: str) -> bool:
    """Weak ``If-None-Match`` comparison with the head; a bare SHA matches too (section 8)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/").strip('"').lower()
        if tag in (sha, f"{sha}-json"):
            return True
    return False


def _int_param(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers for the request log, the credential masked: a failing test's assertion
    message prints the log, and a token must not land in CI output."""
    out = dict(headers)
    if "authorization" in out:
        scheme, _, _ = out["authorization"].partition(" ")
        out["authorization"] = f"{scheme} ********"
    return out


def _git(git_dir: Path, *args: str) -> str | None:
    """Output of a read-only git command on a linked repository; ``None`` if it fails."""
    try:
        done = subprocess.run(
            ["git", "--git-dir", str(git_dir), *args],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _git_dir(path: Path) -> Path | None:
    """The Git directory of a bare repository or of a work tree; ``None`` while it is absent."""
    if (path / ".git").exists():
        return path / ".git"
    return path if (path / "HEAD").exists() else None


def _git_heads(path: Path) -> dict[str, str]:
    git_dir = _git_dir(path)
    out = _git(git_dir, "for-each-ref", "--format=%(refname:strip=2) %(objectname)",
               "refs/heads") if git_dir else None
    heads: dict[str, str] = {}
    for line in (out or "").splitlines():
        name, _, sha = line.rpartition(" ")
        heads[name] = sha
    return heads


_NUMSTAT_STATUS = {"A": "added", "D": "removed", "M": "modified", "R": "renamed", "C": "added",
                   "T": "modified"}


def _git_commit(path: Path, sha: str) -> CommitInfo | None:
    """Read one commit, with its changed files, from a linked repository."""
    git_dir = _git_dir(path)
    if git_dir is None:
        return None
    fmt = "%H%x00%T%x00%P%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"
    out = _git(git_dir, "log", "-1", f"--format={fmt}", f"{sha}^{{commit}}", "--")
    if not out:
        return None
    full, tree, parents, an, ae, ad, cn, ce, cd, message = out.split("\0", 9)
    if full.lower() != sha.lower():
        return None  # an abbreviation or a ref name: statuses and commits need the full SHA here
    numstat = _git(git_dir, "diff-tree", "-r", "--root", "--no-commit-id", "--numstat", full) or ""
    names = _git(git_dir, "diff-tree", "-r", "--root", "--no-commit-id", "--name-status", full)
    statuses = {}
    for line in (names or "").splitlines():
        code, _, name = line.partition("\t")
        statuses[name.split("\t")[-1]] = _NUMSTAT_STATUS.get(code[:1], "modified")
    files = []
    for line in numstat.splitlines():
        added, removed, name = line.split("\t", 2)
        files.append(CommitFile(name, statuses.get(name, "modified"),
                                int(added) if added.isdigit() else 0,
                                int(removed) if removed.isdigit() else 0))
    author, committer = Person(an, ae, _utc(ad)), Person(cn, ce, _utc(cd))
    return CommitInfo(full, message.rstrip("\n"), author, committer, tree,
                      tuple(parents.split()), tuple(files))


def _utc(iso: str) -> str:
    """Git's ISO 8601 with offset -> GitHub's UTC ``...Z`` form."""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _synthetic_commit(owner: str, sha: str, message: str = "Update configuration",
                      parents: tuple[str, ...] = (),
                      files: tuple[CommitFile, ...] = ()) -> CommitInfo:
    person = Person(owner, f"{owner}@users.noreply.github.com", _iso())
    tree = hashlib.sha1(f"tree-{sha}".encode()).hexdigest()
    return CommitInfo(sha, message, person, person, tree, parents, files)


# --------------------------------------------------------------------------------------------
# State


@dataclass
class Hook:
    """One repository hook; ``config`` holds the secret in clear (never served over HTTP)."""

    id: int
    events: list[str]
    config: dict[str, str]
    active: bool = True
    name: str = "web"
    created_at: str = field(default_factory=_iso)
    updated_at: str = field(default_factory=_iso)
    last_response: dict[str, Any] = field(
        default_factory=lambda: {"code": None, "status": "unused", "message": None}
    )


@dataclass(frozen=True)
class Person:
    """Author or committer of a commit, as ``commit.author`` shows it."""

    name: str
    email: str
    date: str


@dataclass(frozen=True)
class CommitFile:
    """One changed file of a commit: the ``files[]`` item and its share of ``stats``."""

    filename: str
    status: str  # added, removed, modified, renamed
    additions: int = 0
    deletions: int = 0


@dataclass(frozen=True)
class CommitInfo:
    """A commit the repository has: read from a linked Git directory or declared by a test."""

    sha: str
    message: str
    author: Person
    committer: Person
    tree: str
    parents: tuple[str, ...] = ()
    files: tuple[CommitFile, ...] = ()


@dataclass
class RepoState:
    owner: str
    name: str
    id: int
    default_branch: str
    clone_url: str | None = None
    private: bool = False
    #: A bare (or work) Git repository standing for this repository's content: its branches and
    #: commits are what the branch, ref and commit endpoints serve, and what statuses may name.
    git_dir: Path | None = None
    heads: dict[str, str] = field(default_factory=dict)
    commits: dict[str, CommitInfo] = field(default_factory=dict)
    hooks: dict[int, Hook] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    last_push: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    pushed_at: float = field(default_factory=time.time)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class RequestRecord:
    """One API request as seen by the emulator; ``path`` has the API prefix stripped."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    status: int
    headers: dict[str, str]


@dataclass(frozen=True)
class DeliveryRecord:
    """One webhook delivery attempt, successful or not."""

    id: int
    guid: str
    event: str
    hook_id: int | None
    repository_id: int | None
    url: str
    status_code: int | None
    duration: float
    error: str | None
    request_headers: dict[str, str]
    request_body: bytes
    response_headers: dict[str, str]
    response_body: bytes
    payload: dict[str, Any]
    delivered_at: str
    redelivery: bool = False

    @property
    def ok(self) -> bool:
        """A delivery counts only if a 2xx arrived within the timeout."""
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300

    @property
    def status(self) -> str:
        """The deliveries API ``status`` string (``OK`` or why it failed)."""
        if self.ok:
            return "OK"
        if self.error is not None:
            return self.error
        return f"Invalid HTTP Response: {self.status_code}"


@dataclass
class RateBudget:
    """Primary rate limit window; 304s and ``/rate_limit`` do not consume it."""

    limit: int = 5000
    used: int = 0
    window: float = 3600.0
    reset_at: float = 0.0

    def roll(self, now: float) -> None:
        if now >= self.reset_at:
            self.used = 0
            self.reset_at = now + self.window

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-used": str(self.used),
            "x-ratelimit-reset": str(int(self.reset_at)),
            "x-ratelimit-resource": "core",
        }


@dataclass
class _Fault:
    kind: str  # "rate" or "error"
    status: int
    times: int
    retry_after: int | None = None
    path_prefix: str | None = None


@dataclass(frozen=True)
class _Outgoing:
    """A fully built delivery request: what will go on the wire, byte for byte."""

    url: str
    event: str
    guid: str
    hook_id: int | None
    target_id: int | None
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]
    verify_tls: bool = True


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


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str | None = None


class _HttpError(Exception):
    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., _Reply]
    scopes: frozenset[str] | None = None
    permission: str | None = None


def _error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> _Reply:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    body["documentation_url"] = DOCS_URL
    return _Reply(status, body)


def _invalid(resource: str, message: str, field_name: str | None = None) -> _HttpError:
    error: dict[str, Any] = {"resource": resource, "code": "custom", "message": message}
    if field_name is not None:
        error["field"] = field_name
    return _HttpError(_error(422, "Validation Failed", [error]))


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


# --------------------------------------------------------------------------------------------
# The emulator


class GitHubEmulator:
    """In-process GitHub: REST subset over HTTP plus webhook delivery; all state behind one lock."""

    def __init__(
        self,
        token: str | None = "ghp_emulator",
        api_prefix: str = "",
        *,
        rate_limit: int = 5000,
        delivery_timeout: float | None = None,
    ) -> None:
        self.token = token
        self.api_prefix = api_prefix.rstrip("/")
        self.token_scopes: Iterable[str] = set(DEFAULT_SCOPES)
        #: The login ``GET /user`` answers for the token.
        self.user_login = "autodeployer-bot"
        self.ghes = bool(self.api_prefix)
        # The answer window is 10 s on github.com and 30 s on GHES (section 1).
        self.delivery_timeout = delivery_timeout or (30.0 if self.ghes else 10.0)
        self.base_url = "http://127.0.0.1"  # set by serve(); used for URLs built outside requests
        # html/clone base; None means github.com, or the server itself in GHES mode
        self.web_url: str | None = None
        self.rate_budget = RateBudget(limit=rate_limit)
        self._hookshot = secrets.token_hex(4)[:7]
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._repos: dict[tuple[str, str], RepoState] = {}
        self._hook_repo: dict[int, tuple[str, str]] = {}
        self._requests: list[RequestRecord] = []
        self._deliveries: list[DeliveryRecord] = []
        self._faults: list[_Fault] = []
        self._delays: dict[str | None, float] = {}
        self._threads: list[threading.Thread] = []
        self._next_hook_id = 1
        self._next_status_id = 1
        self._next_delivery_id = 1
        self._next_repo_id = 1
        self._routes = self._build_routes()

    # ---------------------------------------------------------------- test-side setup

    def add_repo(
        self,
        owner: str,
        name: str,
        repo_id: int | None = None,
        default_branch: str = "main",
        *,
        clone_url: str | None = None,
        private: bool = False,
        git_dir: Path | str | None = None,
    ) -> None:
        """Declare a repository; every API call on an unknown one answers 404.

        ``git_dir`` links a real Git repository (it may be created later): its branches and
        commits are then the repository's, so a status on a SHA it lacks is refused as on GitHub.
        Without it, the repository has the commits declared with :meth:`add_commit`,
        :meth:`set_head` and :meth:`push`.
        """
        with self._lock:
            if repo_id is None:
                repo_id = self._next_repo_id
            self._next_repo_id = max(self._next_repo_id, repo_id) + 1
            linked = Path(git_dir) if git_dir is not None else None
            self._repos[(owner.lower(), name.lower())] = RepoState(
                owner, name, repo_id, default_branch, clone_url, private, linked
            )

    def add_commit(
        self,
        owner: str,
        repo: str,
        sha: str,
        *,
        message: str = "Update configuration",
        parents: Iterable[str] = (),
        files: Iterable[CommitFile] = (),
    ) -> None:
        """Declare a commit of a repository without a linked Git directory."""
        if not _SHA_RE.match(sha):
            raise ValueError(f"not a 40-hex SHA: {sha!r}")
        with self._lock:
            state = self._repo(owner, repo)
            state.commits[sha.lower()] = _synthetic_commit(
                state.owner, sha.lower(), message, tuple(parents), tuple(files)
            )

    def set_head(self, owner: str, repo: str, branch: str, sha: str | None) -> None:
        """Set (or with ``None`` delete) what the commits endpoint reports for a branch."""
        branch = branch.removeprefix("refs/heads/")
        with self._lock:
            state = self._repo(owner, repo)
            if sha is None:
                state.heads.pop(branch, None)
                return
            if not _SHA_RE.match(sha):
                raise ValueError(f"not a 40-hex SHA: {sha!r}")
            state.heads[branch] = sha.lower()
            if self._commit(state, sha.lower()) is None:
                state.commits[sha.lower()] = _synthetic_commit(state.owner, sha.lower())

    def set_rate_limit(self, limit: int, remaining: int | None = None) -> None:
        """Resize the primary budget, optionally with some of it already used."""
        with self._lock:
            self.rate_budget.roll(time.time())
            self.rate_budget.limit = limit
            self.rate_budget.used = limit - remaining if remaining is not None else 0

    def rate_limit_next(
        self,
        status: int = 403,
        retry_after: int | None = 60,
        times: int = 1,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next ``times`` API calls with a rate-limit 403/429.

        With ``retry_after`` the answer carries ``retry-after`` (secondary limit); with ``None`` it
        reports ``x-ratelimit-remaining: 0`` instead (primary limit), so both client paths can be
        tested.
        """
        with self._lock:
            self._faults.append(_Fault("rate", status, times, retry_after, path_prefix))

    def fail_next(self, status: int = 500, times: int = 1, path_prefix: str | None = None) -> None:
        """Answer the next ``times`` API calls (optionally under a path) with a server error."""
        with self._lock:
            self._faults.append(_Fault("error", status, times, None, path_prefix))

    def set_delay(self, seconds: float, path_prefix: str | None = None) -> None:
        """Answer API calls (optionally under a path) ``seconds`` late, like a slow or far-away GitHub."""
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def _delay_for(self, path: str) -> float:
        with self._lock:
            return max((s for p, s in self._delays.items() if p is None or path.startswith(p)), default=0.0)

    # ---------------------------------------------------------------- inspection

    def hooks(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """Stored hooks, secret in clear (in-process only)."""
        with self._lock:
            state = self._repo(owner, repo)
            return [
                self._hook_json(self.api_url, state, h, reveal=True)
                for h in sorted(state.hooks.values(), key=lambda h: h.id)
            ]

    def statuses(self, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
        """Commit statuses for a SHA in creation order."""
        with self._lock:
            return [dict(s) for s in self._repo(owner, repo).statuses.get(sha.lower(), [])]

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def deliveries(self) -> list[DeliveryRecord]:
        with self._lock:
            return list(self._deliveries)

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """Requests matching a method (``None`` for any) whose path, with or without the API
        prefix, starts with ``path_prefix``."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (r.path.startswith(path_prefix) or r.raw_path.startswith(path_prefix))
        )

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_delivery(
        self,
        event: str | None = None,
        hook_id: int | None = None,
        timeout: float = 5.0,
        start: int = 0,
    ) -> DeliveryRecord:
        """Block until a matching delivery (at index >= ``start``) is recorded; for async pings."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self._deliveries[start:]:
                    if (event is None or record.event == event) and (
                        hook_id is None or record.hook_id == hook_id
                    ):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {event or 'any'} delivery within {timeout} s")
                self._cond.wait(left)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait for background deliveries (pings, /tests, API redeliveries) to finish."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---------------------------------------------------------------- serving

    @property
    def api_url(self) -> str:
        return self.base_url + self.api_prefix

    def app(self) -> Starlette:
        """The ASGI app; one catch-all route so prefixes and refs with slashes route uniformly."""
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=ALL_METHODS)])

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> LoopbackServer:
        """Start on loopback and return the running server (also usable as a context manager)."""
        server = LoopbackServer(self.app(), host=host, port=port)
        self.base_url = server.url
        return server.start()

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
            return _error(fault.status, "Server Error")
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
        ]
        return [_Route(m, re.compile(p), h, s, perm) for m, p, h, s, perm in table]

    # ---------------------------------------------------------------- lookups and renderings

    def _repo(self, owner: str, name: str) -> RepoState:
        state = self._repos.get((owner.lower(), name.lower()))
        if state is None:
            raise KeyError(f"unknown repository {owner}/{name}; call add_repo first")
        return state

    def _repo_or_404(self, owner: str, name: str) -> RepoState:
        try:
            return self._repo(owner, name)
        except KeyError:
            raise _HttpError(_error(404, "Not Found")) from None

    def _hook_or_404(self, owner: str, name: str, hook_id: str) -> tuple[RepoState, Hook]:
        state = self._repo_or_404(owner, name)
        hook = state.hooks.get(int(hook_id))
        if hook is None:
            raise _HttpError(_error(404, "Not Found"))
        return state, hook

    def _web_url(self, root: str) -> str:
        if self.web_url:
            return self.web_url
        return root if self.ghes else "https://github.com"

    def _hook_json(
        self, api: str, repo: RepoState, hook: Hook, reveal: bool = False
    ) -> dict[str, Any]:
        base = f"{api}/repos/{repo.owner}/{repo.name}/hooks/{hook.id}"
        config = {k: hook.config[k] for k in ("content_type", "insecure_ssl", "url")}
        if "secret" in hook.config:
            config["secret"] = hook.config["secret"] if reveal else MASKED_SECRET
        return {
            "type": "Repository",
            "id": hook.id,
            "name": hook.name,
            "active": hook.active,
            "events": list(hook.events),
            "config": config,
            "updated_at": hook.updated_at,
            "created_at": hook.created_at,
            "url": base,
            "test_url": base + "/test",
            "ping_url": base + "/pings",
            "deliveries_url": base + "/deliveries",
            "last_response": dict(hook.last_response),
        }

    def _user_json(self, api: str, web: str, login: str) -> dict[str, Any]:
        return {
            "login": login,
            "id": 1,
            "node_id": "MDQ6VXNlcjE=",
            "avatar_url": f"{web}/{login}.png",
            "url": f"{api}/users/{login}",
            "html_url": f"{web}/{login}",
            "type": "User",
            "site_admin": False,
        }

    def _repo_json(self, root: str, repo: RepoState, push_style: bool = False) -> dict[str, Any]:
        """Repository object; push payloads use epoch ``created_at``/``pushed_at`` (section 5.2)."""
        api, web = root + self.api_prefix, self._web_url(root)
        html = f"{web}/{repo.owner}/{repo.name}"
        host = urlsplit(web).netloc
        api_repo = f"{api}/repos/{repo.owner}/{repo.name}"
        owner = self._user_json(api, web, repo.owner)
        if push_style:
            owner = {"name": repo.owner, "email": None, **owner}
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": owner,
            "html_url": html,
            "description": None,
            "fork": False,
            "url": html if push_style else api_repo,
            "hooks_url": f"{api_repo}/hooks",
            "statuses_url": f"{api_repo}/statuses/{{sha}}",
            "commits_url": f"{api_repo}/commits{{/sha}}",
            "created_at": int(repo.created_at) if push_style else _iso(repo.created_at),
            "updated_at": _iso(repo.pushed_at),
            "pushed_at": int(repo.pushed_at) if push_style else _iso(repo.pushed_at),
            "git_url": f"git://{host}/{repo.full_name}.git",
            "ssh_url": f"git@{host}:{repo.full_name}.git",
            "clone_url": repo.clone_url or f"{html}.git",
            "default_branch": repo.default_branch,
            "visibility": "private" if repo.private else "public",
            **({"master_branch": repo.default_branch} if push_style else {}),
        }

    def _heads(self, repo: RepoState) -> dict[str, str]:
        """Branch heads: the linked repository's, overridden by :meth:`set_head`."""
        heads = _git_heads(repo.git_dir) if repo.git_dir is not None else {}
        return {**heads, **repo.heads}

    def _commit(self, repo: RepoState, sha: str) -> CommitInfo | None:
        """The commit with this full SHA, if the repository has it."""
        known = repo.commits.get(sha)
        if known is None and repo.git_dir is not None:
            known = _git_commit(repo.git_dir, sha)
        return known

    def _resolve(self, repo: RepoState, ref: str) -> str | None:
        """A branch name (``refs/heads/`` optional) or a full SHA the repository has."""
        branch = ref.removeprefix("refs/").removeprefix("heads/")
        heads = self._heads(repo)
        if branch in heads:
            return heads[branch]
        if _SHA_RE.match(ref) and self._commit(repo, ref.lower()) is not None:
            return ref.lower()
        return None

    def _resolve_or_422(self, repo: RepoState, ref: str) -> str:
        sha = self._resolve(repo, ref)
        if sha is None:
            raise _HttpError(_error(422, f"No commit found for SHA: {ref}"))
        return sha

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

    # ---------------------------------------------------------------- building deliveries

    def _ping_outgoing(self, root: str, repo: RepoState, hook: Hook) -> _Outgoing:
        api, web = root + self.api_prefix, self._web_url(root)
        payload = {
            "zen": secrets.choice(ZENS),
            "hook_id": hook.id,
            "hook": self._hook_json(api, repo, hook),
            "repository": self._repo_json(root, repo),
            "sender": self._user_json(api, web, repo.owner),
        }
        return self._hook_outgoing(repo, hook, "ping", payload, str(uuid.uuid4()))

    def _hook_outgoing(
        self, repo: RepoState, hook: Hook, event: str, payload: dict[str, Any], guid: str
    ) -> _Outgoing:
        return self._outgoing(
            url=hook.config["url"],
            event=event,
            payload=payload,
            secret=hook.config.get("secret"),
            content_type=hook.config["content_type"],
            guid=guid,
            hook_id=hook.id,
            target_id=repo.id,
            verify_tls=hook.config["insecure_ssl"] == "0",
        )

    def _outgoing(
        self,
        *,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: str | None,
        content_type: str,
        guid: str,
        hook_id: int | None,
        target_id: int | None,
        verify_tls: bool = True,
        signature_override: str | None = None,
        omit_signature: bool = False,
    ) -> _Outgoing:
        """Section 4 headers; signatures are computed over the exact body bytes that are sent."""
        body, mime = encode_body(payload, content_type)
        if len(body) > MAX_PAYLOAD_BYTES:
            raise ValueError("webhook payloads are capped at 25 MB")
        headers = {
            "Accept": "*/*",
            "Content-Type": mime,
            "User-Agent": f"GitHub-Hookshot/{self._hookshot}",
            "X-GitHub-Delivery": guid,
            "X-GitHub-Event": event,
        }
        if hook_id is not None:
            headers["X-GitHub-Hook-ID"] = str(hook_id)
            headers["X-GitHub-Hook-Installation-Target-Type"] = "repository"
        if target_id is not None:
            headers["X-GitHub-Hook-Installation-Target-ID"] = str(target_id)
        if not omit_signature:
            if secret:
                headers["X-Hub-Signature"] = sign_sha1(secret, body)
                headers["X-Hub-Signature-256"] = sign_sha256(secret, body)
            if signature_override is not None:
                headers["X-Hub-Signature-256"] = signature_override
        return _Outgoing(url, event, guid, hook_id, target_id, headers, body, payload, verify_tls)

    def _redelivery_outgoing(self, record: DeliveryRecord) -> _Outgoing:
        """Same GUID and payload; re-signed with the hook's current config if the hook still exists,
        otherwise the recorded request is replayed byte for byte."""
        key = self._hook_repo.get(record.hook_id) if record.hook_id is not None else None
        if key is not None:
            repo = self._repos[key]
            hook = repo.hooks[record.hook_id or 0]
            return self._hook_outgoing(repo, hook, record.event, record.payload, record.guid)
        transport = ("host", "content-length", "connection", "accept-encoding")
        headers = {k: v for k, v in record.request_headers.items() if k.lower() not in transport}
        return _Outgoing(
            record.url, record.event, record.guid, record.hook_id, record.repository_id,
            headers, record.request_body, record.payload,
        )

    # ---------------------------------------------------------------- sending

    def _spawn(self, outgoing: _Outgoing, redelivery: bool = False) -> None:
        """Deliver in the background so the triggering HTTP response is not held up."""
        thread = threading.Thread(
            target=self._send, args=(outgoing, redelivery), name="gh-delivery", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _send(self, out: _Outgoing, redelivery: bool = False) -> DeliveryRecord:
        """One POST, never retried; anything but a 2xx within the timeout is a failure."""
        timeout = self.delivery_timeout
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        request_headers = dict(out.headers)
        response_headers: dict[str, str] = {}
        response_body = b""
        try:
            with httpx.Client(timeout=timeout, trust_env=False, verify=out.verify_tls,
                              follow_redirects=False) as client:
                request = client.build_request(
                    "POST", out.url, headers=out.headers, content=out.body
                )
                request_headers = {k.decode(): v.decode() for k, v in request.headers.raw}
                response = client.send(request)
                status_code = response.status_code
                response_headers = dict(response.headers)
                response_body = response.content[:65536]
        except httpx.TimeoutException:
            error = "timed out"
        except httpx.HTTPError as exc:
            error = f"We couldn't deliver this payload: {type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        if error is None and duration > timeout:
            error = "timed out"
        return self._record(out, redelivery, status_code, duration, error,
                            request_headers, response_headers, response_body)

    def _record(
        self,
        out: _Outgoing,
        redelivery: bool,
        status_code: int | None,
        duration: float,
        error: str | None,
        request_headers: dict[str, str],
        response_headers: dict[str, str],
        response_body: bytes,
    ) -> DeliveryRecord:
        with self._cond:
            record = DeliveryRecord(
                id=self._next_delivery_id,
                guid=out.guid,
                event=out.event,
                hook_id=out.hook_id,
                repository_id=out.target_id,
                url=out.url,
                status_code=status_code,
                duration=duration,
                error=error,
                request_headers=request_headers,
                request_body=out.body,
                response_headers=response_headers,
                response_body=response_body,
                payload=out.payload,
                delivered_at=_iso(),
                redelivery=redelivery,
            )
            self._next_delivery_id += 1
            self._deliveries.append(record)
            self._update_last_response(record)
            self._cond.notify_all()
            return record

    def _update_last_response(self, record: DeliveryRecord) -> None:
        key = self._hook_repo.get(record.hook_id) if record.hook_id is not None else None
        hook = self._repos[key].hooks.get(record.hook_id or 0) if key else None
        if hook is None:
            return
        if record.ok:
            hook.last_response = {"code": record.status_code, "status": "active", "message": "OK"}
        else:
            hook.last_response = {
                "code": record.status_code,
                "status": "failed",
                "message": record.status,
            }

    # ---------------------------------------------------------------- test-side deliveries

    def push_payload(
        self,
        owner: str,
        repo: str,
        ref: str,
        before: str,
        after: str,
        commits: list[dict[str, Any]] | None = None,
        deleted: bool = False,
        created: bool = False,
        forced: bool = False,
        pusher: str | None = None,
    ) -> dict[str, Any]:
        """Build a section 5.2 push payload without delivering it (for out-of-order tests).

        ``ref`` may be a bare branch name. ``created``/``deleted`` are also implied by a zero
        ``before``/``after``. Without ``commits`` one synthetic commit for ``after`` is used.
        """
        with self._lock:
            state = self._repo(owner, repo)
            root, login = self.base_url, pusher or state.owner
            api, web = root + self.api_prefix, self._web_url(root)
            html = f"{web}/{state.full_name}"
            ref = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
            deleted = deleted or after == ZERO_SHA
            created = created or before == ZERO_SHA
            if commits is None:
                commits = [] if deleted else [{"id": after}]
            full = [self._commit_json(html, login, c) for c in commits]
            head = full[-1] if full else None
            if head is None and not deleted:
                head = self._commit_json(html, login, {"id": after})
            state.pushed_at = time.time()
            return {
                "ref": ref,
                "before": before,
                "after": after,
                "repository": self._repo_json(root, state, push_style=True),
                "pusher": {"name": login, "email": f"{login}@users.noreply.github.com"},
                "sender": self._user_json(api, web, login),
                "created": created,
                "deleted": deleted,
                "forced": forced,
                "base_ref": None,
                "compare": f"{html}/compare/{before[:12]}...{after[:12]}",
                "commits": full,
                "head_commit": head,
            }

    @staticmethod
    def _commit_json(html: str, login: str, commit: Mapping[str, Any]) -> dict[str, Any]:
        sha = commit["id"]
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        person = {"name": login, "email": f"{login}@users.noreply.github.com", "username": login}
        return {
            "id": sha,
            "tree_id": commit.get("tree_id", hashlib.sha1(f"tree-{sha}".encode()).hexdigest()),
            "distinct": commit.get("distinct", True),
            "message": commit.get("message", "Update configuration"),
            "timestamp": commit.get("timestamp", now),
            "url": f"{html}/commit/{sha}",
            "author": {**person, **commit.get("author", {})},
            "committer": {**person, **commit.get("committer", {})},
            "added": list(commit.get("added", [])),
            "removed": list(commit.get("removed", [])),
            "modified": list(commit.get("modified", [])),
        }

    def push(
        self,
        owner: str,
        repo: str,
        ref: str,
        before: str,
        after: str,
        commits: list[dict[str, Any]] | None = None,
        deleted: bool = False,
        created: bool = False,
        forced: bool = False,
        pusher: str | None = None,
    ) -> list[DeliveryRecord]:
        """Simulate a push: deliver one event (one GUID) synchronously to every active hook
        subscribed to ``push`` or ``*``. Branch heads are not changed; use :meth:`set_head`."""
        payload = self.push_payload(
            owner, repo, ref, before, after, commits, deleted, created, forced, pusher
        )
        guid = str(uuid.uuid4())
        with self._lock:
            state = self._repo(owner, repo)
            state.last_push = payload
            for commit in payload["commits"]:
                sha = str(commit["id"]).lower()
                if _SHA_RE.match(sha) and self._commit(state, sha) is None:
                    state.commits[sha] = _synthetic_commit(state.owner, sha, commit["message"])
            targets = [
                self._hook_outgoing(state, h, "push", payload, guid)
                for h in sorted(state.hooks.values(), key=lambda h: h.id)
                if h.active and _subscribed(h.events, "push")
            ]
        return [self._send(out) for out in targets]

    def ping(self, owner: str, repo: str, hook_id: int) -> DeliveryRecord:
        """Send a ``ping`` to one hook synchronously (``/pings`` over HTTP sends in background)."""
        with self._lock:
            state = self._repo(owner, repo)
            out = self._ping_outgoing(self.base_url, state, state.hooks[hook_id])
        return self._send(out)

    def deliver_raw(
        self,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: str | None,
        content_type: str = "json",
        guid: str | None = None,
        signature_override: str | None = None,
        omit_signature: bool = False,
        *,
        hook_id: int | None = None,
        target_id: int | None = None,
    ) -> DeliveryRecord:
        """Deliver an arbitrary event for fault injection (bad/missing signature, reused GUID, stale
        payloads). ``hook_id`` defaults to a stored hook with this URL, else the payload's
        ``hook_id``; ``target_id`` defaults to ``payload["repository"]["id"]``."""
        with self._lock:
            if hook_id is None:
                hooks = (h for s in self._repos.values() for h in s.hooks.values())
                by_url = (h.id for h in hooks if h.config["url"] == url)
                hook_id = next(by_url, payload.get("hook_id"))
            repository = payload.get("repository")
            if target_id is None and isinstance(repository, dict):
                target_id = repository.get("id")
        out = self._outgoing(
            url=url,
            event=event,
            payload=payload,
            secret=secret,
            content_type=content_type,
            guid=guid or str(uuid.uuid4()),
            hook_id=hook_id,
            target_id=target_id,
            signature_override=signature_override,
            omit_signature=omit_signature,
        )
        return self._send(out)

    def redeliver(self, guid: str, hook_id: int | None = None) -> DeliveryRecord:
        """Re-send the most recent delivery with this GUID (and hook), keeping the GUID."""
        with self._lock:
            record = next(
                (d for d in reversed(self._deliveries)
                 if d.guid == guid and (hook_id is None or d.hook_id == hook_id)),
                None,
            )
            if record is None:
                raise KeyError(f"no delivery with GUID {guid}")
            out = self._redelivery_outgoing(record)
        return self._send(out, redelivery=True)


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``GITHUB_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("github", 8090, "GITHUB_EMULATOR_TOKEN")
    parser.add_argument("--api-prefix", default="", help='"/api/v3" for GHES mode')
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME[:BRANCH]",
                        help="repository to create (repeatable); default branch 'main'")
    parser.add_argument("--git-dir", action="append", default=[], metavar="OWNER/NAME=PATH",
                        help="back a --repo with a Git repository on disk (its branches and "
                             "commits)")
    args = parser.parse_args(argv)
    token = token_from_env("GITHUB_EMULATOR_TOKEN")
    emulator = GitHubEmulator(token=token, api_prefix=args.api_prefix)
    git_dirs = dict(spec.split("=", 1) for spec in args.git_dir if "=" in spec)
    for spec in args.repo:
        full, _, branch = spec.partition(":")
        owner, _, name = full.partition("/")
        emulator.add_repo(owner, name, default_branch=branch or "main", git_dir=git_dirs.get(full))
    emulator.base_url = f"http://{args.host}:{args.port}"
    serve_forever(emulator.app(), "GitHub", emulator.api_url, "GITHUB_EMULATOR_TOKEN",
                  token is not None, args.host, args.port)


if __name__ == "__main__":
    main()
