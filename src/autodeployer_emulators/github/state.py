"""The emulated GitHub's state and rules: repositories, hooks, statuses, rate budget, faults.

No HTTP here: :class:`GitHubState` holds everything behind one lock; the routes, the deliveries
and a test (in-process, through the public methods) read and change it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

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
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
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
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    #: Pull requests by number (model in ``pulls.py``; ``Any`` keeps this module free of it).
    pulls: dict[int, Any] = field(default_factory=dict)
    #: Issue comments by id (``pulls.IssueComment``), on the pull requests' issues.
    comments: dict[int, Any] = field(default_factory=dict)
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


class GitHubState:
    """In-memory GitHub: repositories, hooks, statuses and the test-side controls (no HTTP)."""

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
        self._next_comment_id = 1

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

    def fail_comments(self, owner: str, repo: str, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` issue-comment calls of a repository with ``status``
        (403 forbidden, 422 validation failed, 500 server error)."""
        self.fail_next(status, times, path_prefix=f"/repos/{owner}/{repo}/issues")

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

    # ---------------------------------------------------------------- addresses

    @property
    def api_url(self) -> str:
        return self.base_url + self.api_prefix

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

