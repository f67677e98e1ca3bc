"""What the GitLab, Gitea and Bitbucket emulators share: token checks, repositories, hooks, commit
statuses, the outgoing deliveries and serving on loopback.

Each host's module keeps its own routes, wire shapes and delivery headers; this module holds only
the bookkeeping that is the same everywhere. Like every emulator, it never imports `autodeployer`.
The Git side is not emulated: repositories may be linked to a real bare repository (`git_dir`,
typically one served by `gitserver.GitHttpServer`) whose commits decide which SHAs exist.
"""

from __future__ import annotations

import hmac
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from autodeployer_emulators._server import LoopbackServer

ZERO_SHA = "0" * 40
#: How a test spoils a delivery's authentication: a wrong value, an empty one, or none at all.
Tamper = Literal["wrong", "empty", "missing"] | None


@dataclass
class ForgeRepo:
    path: str  # as the host names it: "group/sub/project", "owner/name" or "KEY/slug"
    id: int
    default_branch: str = "main"
    git_dir: Path | None = None
    hooks: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def has_commit(self, sha: str) -> bool:
        """True when the linked Git repository has the commit (always, without a linked one)."""
        if self.git_dir is None:
            return True
        done = subprocess.run(["git", "--git-dir", str(self.git_dir), "cat-file", "-e", f"{sha}^{{commit}}"],
                              capture_output=True, check=False)
        return done.returncode == 0


@dataclass
class Sent:
    """One outgoing delivery, as sent and as answered."""

    url: str
    headers: dict[str, str]
    body: bytes
    status_code: int
    response: str
    seconds: float


class ForgeEmulator:
    """Shared state of a Git host emulator, behind one lock."""

    host_name = "forge"

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.lock = threading.RLock()
        self.repos: dict[str, ForgeRepo] = {}
        self.sent: list[Sent] = []
        self.max_page_size = 100  # tests lower it to exercise pagination
        self.delivery_timeout = 10.0
        self.base_url = ""
        self._next_id = 1

    # ------------------------------------------------------------------ state
    def next_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id - 1

    def add_repo(self, path: str, *, default_branch: str = "main", git_dir: Path | str | None = None) -> ForgeRepo:
        with self.lock:
            repo = ForgeRepo(path, self.next_id(), default_branch, Path(git_dir) if git_dir else None)
            self.repos[path.lower()] = repo
            return repo

    def repo(self, path: str) -> ForgeRepo | None:
        with self.lock:
            return self.repos.get(path.lower()) or next(
                (r for r in self.repos.values() if str(r.id) == path), None)

    def statuses(self, path: str, sha: str) -> list[dict[str, Any]]:
        repo = self.repo(path)
        with self.lock:
            return [dict(s) for s in (repo.statuses.get(sha, []) if repo else [])]

    # ------------------------------------------------------------------ auth
    def authorised(self, given: str | None) -> bool:
        """Constant-time check of the API token (no token configured: authentication is off)."""
        if self.token is None:
            return True
        return bool(given) and hmac.compare_digest((given or "").encode(), self.token.encode())

    @staticmethod
    def bearer(request: Request, scheme: str = "bearer") -> str | None:
        value = request.headers.get("authorization", "")
        kind, _, credential = value.partition(" ")
        return credential.strip() if kind.lower() == scheme else None

    # ------------------------------------------------------------------ paging
    def page(self, items: list[Any], page: int, per_page: int) -> tuple[list[Any], bool]:
        """One page (1-based) and whether more follow; the page size is capped like the hosts cap it."""
        size = max(1, min(per_page, self.max_page_size))
        start = (max(page, 1) - 1) * size
        return items[start:start + size], start + size < len(items)

    # ------------------------------------------------------------------ deliveries
    def send(self, url: str, headers: Mapping[str, str], body: bytes) -> Sent:
        """POST one delivery (no retries, as the hosts' first attempt) and record it."""
        started = time.monotonic()
        try:
            with httpx.Client(timeout=self.delivery_timeout, trust_env=False) as client:
                response = client.post(url, content=body, headers=dict(headers))
            status, text = response.status_code, response.text
        except httpx.HTTPError as exc:
            status, text = 0, f"{type(exc).__name__}: {exc}"
        sent = Sent(url, dict(headers), body, status, text, time.monotonic() - started)
        with self.lock:
            self.sent.append(sent)
        return sent

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> LoopbackServer:
        server = LoopbackServer(self.app(), host=host, port=port)
        self.base_url = server.url
        return server.start()

    def app(self) -> Any:  # pragma: no cover - each host builds its own
        raise NotImplementedError


def json_error(status: int, body: Any) -> Response:
    return JSONResponse(body, status_code=status)


def tampered(value: str, tamper: Tamper) -> str | None:
    """The header value a test asked for: as is, wrong, empty, or None (header left out)."""
    if tamper == "missing":
        return None
    if tamper == "empty":
        return ""
    if tamper == "wrong":
        return value[:-4] + ("0000" if not value.endswith("0000") else "1111") if value else "wrong"
    return value


def with_header(headers: dict[str, str], name: str, value: str | None) -> dict[str, str]:
    if value is not None:
        headers[name] = value
    return headers


def new_uuid() -> str:
    return str(uuid.uuid4())


Handler = Callable[..., Any]
