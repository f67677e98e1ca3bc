"""A faithful emulator of the part of HashiCorp Vault a deployer reading secrets uses.

No Vault server can be installed here, so tests and the demo talk to this emulator instead. It follows
``/work/shared/reference/vault-api.md``: ``X-Vault-Token`` on every request, ``lookup-self``, the
GitHub login, KV version 2 reads (with versions and metadata), and errors shaped as Vault gives them
(``{"errors": [...]}``: 403 ``permission denied``, 404 ``[]``, 400 on a bad login, 503 when sealed).

State lives on a :class:`VaultEmulator` instance behind one lock, because the server runs in another
thread while the test steers it in-process (``put()``, ``add_token()``, ``fail_next()``,
``set_delay()``, ``hang()``, ``sealed``).

Run by hand::

    VAULT_EMULATOR_TOKEN=root python -m autodeployer_emulators.vault --host 127.0.0.1 --port 8200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import secrets
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autodeployer_emulators._server import LoopbackServer

__all__ = ["RequestRecord", "VaultEmulator", "main"]

DEFAULT_MOUNT = "secret"
#: What a policy of ``*`` grants: every path of every mount.
ALL_PATHS = "*"
LOGIN_LEASE_SECONDS = 3600


def errors(status: int, *messages: str) -> JSONResponse:
    """Vault's error shape: ``{"errors": [...]}`` (an empty list for a plain 404)."""
    return JSONResponse({"errors": list(messages)}, status_code=status)


def vault_time(moment: datetime) -> str:
    """RFC 3339 with nanosecond-style precision, as Vault writes ``created_time``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


@dataclass
class Version:
    """One KV v2 version of a secret."""

    data: dict[str, Any]
    created_time: str
    deletion_time: str = ""
    destroyed: bool = False

    def metadata(self, number: int) -> dict[str, Any]:
        return {
            "version": number,
            "created_time": self.created_time,
            "deletion_time": self.deletion_time,
            "destroyed": self.destroyed,
            "custom_metadata": None,
        }


@dataclass
class Token:
    """A client token and the path prefixes (``mount/path``) its policies may read."""

    allowed: tuple[str, ...]
    policies: list[str] = field(default_factory=lambda: ["default"])

    def may_read(self, mount: str, path: str) -> bool:
        full = f"{mount}/{path}"
        return any(rule == ALL_PATHS or full.startswith(rule) for rule in self.allowed)


@dataclass
class RequestRecord:
    """One request as the emulator saw it; the token is recorded only as present or not."""

    method: str
    path: str
    had_token: bool
    status: int = 0


@dataclass
class _Failure:
    status: int
    times: int
    path_prefix: str | None


class VaultEmulator:
    """In-memory Vault with token auth, GitHub login and KV v2 mounts.

    ``token`` is a root token allowed everywhere (``None``: no root token). GitHub personal access
    tokens accepted by the login are added with :meth:`add_github_token`.
    """

    def __init__(self, token: str | None = None, *, mounts: Iterable[str] = (DEFAULT_MOUNT,)):
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._github: dict[str, Token] = {}
        self._kv: dict[str, dict[str, list[Version]]] = {mount: {} for mount in mounts}
        self._requests: list[RequestRecord] = []
        self._failures: list[_Failure] = []
        self._delay = 0.0
        self._hang = threading.Event()
        #: Answer every request with 503 ``Vault is sealed``.
        self.sealed = False
        if token is not None:
            self._tokens[token] = Token(allowed=(ALL_PATHS,), policies=["root"])
        self.app: Starlette = self._build_app()

    # ---- public inspection and controls (thread-safe) ----------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> LoopbackServer:
        """Start serving on loopback; usable directly or as a context manager."""
        return LoopbackServer(self.app, host=host, port=port).start()

    def add_token(self, token: str, allowed: Sequence[str] = (ALL_PATHS,)) -> None:
        """Accept ``token``, allowed to read paths starting with one of ``allowed`` (``mount/...``)."""
        with self._lock:
            self._tokens[token] = Token(allowed=tuple(allowed))

    def revoke_token(self, token: str) -> None:
        """From now on ``token`` is refused with 403, as an expired or revoked token is."""
        with self._lock:
            self._tokens.pop(token, None)

    def add_github_token(self, github_token: str, allowed: Sequence[str] = (ALL_PATHS,)) -> None:
        """Let ``POST /v1/auth/github/login`` accept ``github_token`` and hand out a client token."""
        with self._lock:
            self._github[github_token] = Token(allowed=tuple(allowed), policies=["default", "read"])

    def put(self, path: str, data: Mapping[str, Any], mount: str = DEFAULT_MOUNT) -> int:
        """Write a new version of a secret (any JSON values, so tests can seed non-strings)."""
        with self._lock:
            return self._write(mount, path, dict(data))

    def delete_latest(self, path: str, mount: str = DEFAULT_MOUNT) -> None:
        """Soft-delete the latest version, as ``vault kv delete`` does."""
        with self._lock:
            versions = self._kv[mount][path]
            versions[-1].deletion_time = vault_time(datetime.now(UTC))

    def fail_next(self, status: int = 500, times: int = 1, path_prefix: str | None = None) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with ``status``."""
        with self._lock:
            self._failures.append(_Failure(status, times, path_prefix))

    def set_delay(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 removes the delay)."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def hang(self, on: bool = True) -> None:
        """Accept requests but never answer them until ``hang(False)`` (a stuck Vault)."""
        if on:
            self._hang.set()
        else:
            self._hang.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    # ---- internals --------------------------------------------------------------------------

    def _write(self, mount: str, path: str, data: dict[str, Any]) -> int:
        versions = self._kv.setdefault(mount, {}).setdefault(path, [])
        versions.append(Version(copy.deepcopy(data), vault_time(datetime.now(UTC))))
        return len(versions)

    def _token(self, request: Request) -> Token | None:
        presented = request.headers.get("x-vault-token", "")
        with self._lock:
            return self._tokens.get(presented) if presented else None

    def _begin(self, request: Request) -> tuple[RequestRecord, float, int | None]:
        """Record the request and pick any injected delay or failure for it."""
        record = RequestRecord(request.method, request.url.path, "x-vault-token" in request.headers)
        with self._lock:
            self._requests.append(record)
            injected: int | None = None
            for failure in self._failures:
                prefix = failure.path_prefix
                if failure.times > 0 and (prefix is None or record.path.startswith(prefix)):
                    failure.times -= 1
                    injected = failure.status
                    break
            self._failures = [f for f in self._failures if f.times > 0]
            return record, self._delay, injected

    async def _guard(self, request: Request) -> tuple[RequestRecord, Response | None]:
        """Apply the switches (delay, hang, injected failure, sealed) before a handler runs."""
        record, delay, injected = self._begin(request)
        if delay:
            await asyncio.sleep(delay)
        while self._hang.is_set():
            await asyncio.sleep(0.02)
        if injected is not None:
            return record, errors(injected, "internal error" if injected == 500 else "injected")
        if self.sealed and record.path != "/v1/sys/health":
            return record, errors(503, "Vault is sealed")
        return record, None

    def _build_app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            record, early = await self._guard(request)
            response = early or await self._dispatch(request)
            record.status = response.status_code
            return response

        routes = [
            Route("/v1/{rest:path}", handle, methods=["GET", "POST", "PUT", "LIST", "DELETE"]),
        ]
        return Starlette(routes=routes)

    async def _dispatch(self, request: Request) -> Response:
        rest: str = request.path_params["rest"]
        if rest == "sys/health" and request.method == "GET":
            return self._health()
        if rest == "auth/github/login" and request.method in ("POST", "PUT"):
            return await self._github_login(request)
        token = self._token(request)
        if token is None:
            return errors(403, "permission denied")
        if rest == "auth/token/lookup-self" and request.method == "GET":
            return self._lookup_self(request, token)
        mount, _, sub = rest.partition("/")
        kind, _, path = sub.partition("/")
        with self._lock:
            known_mount = mount in self._kv
        if not known_mount or kind not in ("data", "metadata"):
            return errors(404, f'no handler for route "{rest}". route entry not found.')
        if not token.may_read(mount, path):
            return errors(403, "permission denied")
        if kind == "data" and request.method == "GET":
            return self._read(mount, path, request.query_params.get("version"))
        if kind == "data" and request.method in ("POST", "PUT"):
            return await self._write_request(request, mount, path)
        if kind == "metadata" and (request.method == "LIST" or request.query_params.get("list")):
            return self._list(mount, path)
        if kind == "metadata" and request.method == "GET":
            return self._metadata(mount, path)
        return errors(405, "unsupported operation")

    async def _github_login(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return errors(400, "failed to parse JSON input")
        github_token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(github_token, str) or not github_token:
            return errors(400, "missing token")
        with self._lock:
            grant = self._github.get(github_token)
            if grant is None:
                return errors(400, "GET https://api.github.com/user: 401 Bad credentials []")
            client_token = "hvs." + secrets.token_urlsafe(18)
            self._tokens[client_token] = Token(allowed=grant.allowed, policies=grant.policies)
        auth = {
            "client_token": client_token,
            "accessor": secrets.token_urlsafe(12),
            "policies": grant.policies,
            "token_policies": grant.policies,
            "metadata": {"org": "emulated", "username": "emulated-user"},
            "lease_duration": LOGIN_LEASE_SECONDS,
            "renewable": True,
        }
        return JSONResponse(_envelope(auth=auth))

    def _health(self) -> Response:
        """Unauthenticated, as in Vault: 200 when unsealed, 503 with ``sealed: true`` otherwise."""
        body = {"initialized": True, "sealed": self.sealed, "standby": False,
                "version": "1.15.0+emulated"}
        return JSONResponse(body, status_code=503 if self.sealed else 200)

    def _lookup_self(self, request: Request, token: Token) -> Response:
        data = {
            "id": request.headers.get("x-vault-token", ""),
            "policies": token.policies,
            "ttl": LOGIN_LEASE_SECONDS,
            "renewable": True,
            "display_name": "token",
        }
        return JSONResponse(_envelope(data=data))

    def _read(self, mount: str, path: str, version_param: str | None) -> Response:
        with self._lock:
            versions = self._kv[mount].get(path)
            if not versions:
                return errors(404)
            number = len(versions)
            if version_param not in (None, "", "0"):
                try:
                    number = int(version_param)
                except ValueError:
                    return errors(400, f"invalid version {version_param!r}")
                if not 1 <= number <= len(versions):
                    return errors(404)
            version = versions[number - 1]
            # A deleted or destroyed version is a 404 that still carries the metadata, as in Vault.
            if version.deletion_time or version.destroyed:
                body = _envelope(data={"data": None, "metadata": version.metadata(number)})
                return JSONResponse(body, status_code=404)
            data = {"data": copy.deepcopy(version.data), "metadata": version.metadata(number)}
        return JSONResponse(_envelope(data=data))

    async def _write_request(self, request: Request, mount: str, path: str) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return errors(400, "failed to parse JSON input")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return errors(400, "no data provided")
        with self._lock:
            number = self._write(mount, path, data)
            meta = self._kv[mount][path][-1].metadata(number)
        return JSONResponse(_envelope(data=meta))

    def _list(self, mount: str, path: str) -> Response:
        prefix = path.rstrip("/") + "/" if path.strip("/") else ""
        keys: set[str] = set()
        with self._lock:
            for stored in self._kv[mount]:
                if stored.startswith(prefix):
                    head, slash, _ = stored[len(prefix):].partition("/")
                    keys.add(head + slash)
        if not keys:
            return errors(404)
        return JSONResponse(_envelope(data={"keys": sorted(keys)}))

    def _metadata(self, mount: str, path: str) -> Response:
        with self._lock:
            versions = self._kv[mount].get(path)
            if not versions:
                return errors(404)
            listed = {str(n): v.metadata(n) for n, v in enumerate(versions, start=1)}
            data = {
                "current_version": len(versions),
                "oldest_version": 1,
                "created_time": versions[0].created_time,
                "updated_time": versions[-1].created_time,
                "max_versions": 0,
                "cas_required": False,
                "delete_version_after": "0s",
                "custom_metadata": None,
                "versions": listed,
            }
        return JSONResponse(_envelope(data=data))


def _envelope(*, data: Any = None, auth: Any = None) -> dict[str, Any]:
    """The common Vault response wrapper around ``data`` or ``auth``."""
    return {
        "request_id": secrets.token_hex(8),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": auth,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C; tokens come from the environment only, never from argv."""
    parser = argparse.ArgumentParser(
        prog="python -m autodeployer_emulators.vault",
        description=(
            "HashiCorp Vault emulator (KV v2, token and GitHub login). The root token comes from "
            "VAULT_EMULATOR_TOKEN; a GitHub token accepted by the login from "
            "VAULT_EMULATOR_GITHUB_TOKEN."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--mount", default=DEFAULT_MOUNT, help="KV v2 mount (default: secret)")
    parser.add_argument(
        "--seed", type=Path, help="JSON file {path: {key: value}} written to the mount at start"
    )
    args = parser.parse_args(argv)
    token = os.environ.get("VAULT_EMULATOR_TOKEN") or None
    emulator = VaultEmulator(token=token, mounts=[args.mount])
    github_token = os.environ.get("VAULT_EMULATOR_GITHUB_TOKEN")
    if github_token:
        emulator.add_github_token(github_token)
    if args.seed is not None:
        try:
            seed = json.loads(args.seed.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            parser.error(f"--seed {args.seed}: {exc}")
        if not isinstance(seed, dict) or not all(isinstance(v, dict) for v in seed.values()):
            parser.error(f"--seed {args.seed}: must be a JSON object {{path: {{key: value}}}}")
        for path, data in seed.items():
            emulator.put(path, data, mount=args.mount)
    auth = "root token set" if token else "no root token (VAULT_EMULATOR_TOKEN not set)"
    print(f"Vault emulator on http://{args.host}:{args.port} ({auth})", file=sys.stderr)
    import uvicorn

    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(emulator.app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
