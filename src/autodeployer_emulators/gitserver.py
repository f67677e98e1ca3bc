"""Real Git servers on loopback for tests, benchmarks and the demo.

The deployer must be exercised against real Git protocols, not mocks, because what matters
(``git ls-remote`` cost, auth headers passed through git's environment, protocol v2, fetch after
change) lives in git itself. Three pieces:

* :class:`GitHttpServer` - smart HTTP: an ASGI app that runs ``git http-backend`` as a CGI
  subprocess per request, behind a token check, with request accounting and fault injection.
* :class:`GitDaemon` - ``git daemon`` (the ``git://`` protocol) as a managed subprocess.
* :class:`WorkRepo` - author commits in a working clone and push them to a bare repository;
  :meth:`WorkRepo.generate` builds large histories quickly with ``git fast-import``.

Every git subprocess runs with :func:`git_env`: the user's global/system config and any inherited
``GIT_*`` variables are ignored, and the identity is fixed, so results do not depend on the machine.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from autodeployer_emulators._server import LoopbackServer

__all__ = [
    "GitDaemon",
    "GitError",
    "GitHttpServer",
    "RequestRecord",
    "WorkRepo",
    "basic_auth_header",
    "bearer_auth_header",
    "extra_header_env",
    "git_env",
    "run_git",
]

AUTHOR_NAME = "Autodeployer Test"
AUTHOR_EMAIL = "autodeployer-test@example.invalid"
#: Start of the fixed clock used by :meth:`WorkRepo.generate`, so generated SHAs are reproducible.
GENERATE_EPOCH = 1_700_000_000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --------------------------------------------------------------------------------------------
# Controlled git environment
# --------------------------------------------------------------------------------------------


class GitError(RuntimeError):
    """A git command failed; carries its stderr (which never contains our auth headers)."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for git subprocesses that ignores machine config and inherited ``GIT_*`` vars.

    Inherited ``GIT_*`` variables are dropped because a test run from inside a git hook would
    otherwise operate on the wrong repository (``GIT_DIR``) or config.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        LC_ALL="C",
        LANGUAGE="C",
    )
    if extra:
        env.update(extra)
    return env


def run_git(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git args...`` under :func:`git_env` (plus ``env``); :class:`GitError` on failure."""
    argv = [str(a) for a in args]
    proc = subprocess.run(
        ["git", *argv],
        cwd=cwd,
        env=git_env(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,  # the caller's ``check`` raises GitError, with git's stderr, below
    )
    if check and proc.returncode != 0:
        raise GitError(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def basic_auth_header(token: str, user: str = "autodeployer") -> str:
    """``Authorization: Basic ...`` header line carrying ``token`` as the password."""
    cred = base64.b64encode(f"{user}:{token}".encode()).decode("ascii")
    return f"Authorization: Basic {cred}"


def bearer_auth_header(token: str) -> str:
    """``Authorization: Bearer ...`` header line."""
    return f"Authorization: Bearer {token}"


def extra_header_env(header: str) -> dict[str, str]:
    """Git environment that sends ``header`` with every HTTP request (``http.extraHeader``).

    This keeps the secret out of the URL, argv and ``.git/config``.
    """
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": header,
    }


# --------------------------------------------------------------------------------------------
# Smart HTTP server
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as seen by :class:`GitHttpServer` (never includes credentials)."""

    method: str
    path: str
    query: str
    status: int
    request_bytes: int
    response_bytes: int
    duration: float
    git_protocol: str = ""
    content_encoding: str = ""
    authenticated: bool = False
    user: str = ""  # the Basic user name that came with a valid token (never the token)


@dataclass
class _Faults:
    """Fault-injection settings, read by the server thread under the owner's lock."""

    fail_status: int = 500
    fail_times: int = 0
    delay: float = 0.0
    down: bool = False


@dataclass(frozen=True)
class _Decision:
    """Per-request outcome of fault injection: delay, then fail with ``status`` unless None."""

    delay: float
    status: int | None = None
    down: bool = False


@dataclass
class _Stats:
    requests: list[RequestRecord] = field(default_factory=list)
    bytes_sent: int = 0


class GitHttpServer:
    """Smart-HTTP Git server over a directory of bare repositories.

    ``token``: when set, each request needs ``Authorization: Basic base64(<any user>:<token>)`` or
    ``Authorization: Bearer <token>``, otherwise 401 with ``WWW-Authenticate: Basic realm="git"``.
    ``allow_push``: forces ``http.receivepack`` on (or off) for every repository.

    Fault injection (thread-safe, applied in this order to each request):
    :meth:`down` answers 503 + ``Connection: close``; :meth:`fail_next` answers the given status;
    then the token is checked. :meth:`set_delay` sleeps before every response.
    """

    def __init__(self, root: Path, token: str | None = "tok", *, allow_push: bool = True) -> None:
        self.root = Path(root)
        self.token = token
        self.allow_push = allow_push
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._stats = _Stats()
        self._server: LoopbackServer | None = None
        self.app = _GitHttpApp(self)

    # -- serving -----------------------------------------------------------------------------

    def serve(self, port: int = 0) -> LoopbackServer:
        """A (not yet started) loopback server for the app; use it as a context manager.

        Pass ``port=srv.port`` to restart on the same port after stopping.
        """
        self._server = LoopbackServer(self.app, port=port)
        return self._server

    @property
    def port(self) -> int:
        return self._require_server().port

    @property
    def url(self) -> str:
        return self._require_server().url

    def url_for(self, repo: str) -> str:
        """URL of ``repo`` (relative to ``root``); it never contains the token."""
        return f"{self.url}/{repo.lstrip('/')}"

    def _require_server(self) -> LoopbackServer:
        if self._server is None:
            raise RuntimeError("call serve() first")
        return self._server

    # -- auth helpers for clients ------------------------------------------------------------

    def auth_header(self, scheme: str = "basic") -> str:
        """A valid ``Authorization`` header line for this server (``basic`` or ``bearer``)."""
        if self.token is None:
            raise RuntimeError("server has no token")
        if scheme == "bearer":
            return bearer_auth_header(self.token)
        return basic_auth_header(self.token)

    def auth_env(self, scheme: str = "basic") -> dict[str, str]:
        """Git environment sending a valid token via ``http.extraHeader``."""
        return extra_header_env(self.auth_header(scheme))

    # -- measurement -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._stats.requests)

    @property
    def bytes_sent(self) -> int:
        """Total response body bytes sent since the last :meth:`reset_stats`."""
        with self._lock:
            return self._stats.bytes_sent

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = _Stats()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._stats.requests.append(record)
            self._stats.bytes_sent += record.response_bytes

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` (replaces any pending failures)."""
        with self._lock:
            self._faults.fail_status = status
            self._faults.fail_times = times

    def set_delay(self, seconds: float) -> None:
        """Sleep ``seconds`` (asyncio) before every response; 0 disables."""
        with self._lock:
            self._faults.delay = seconds

    def down(self) -> None:
        """Answer every request with 503 (``Retry-After: 1``, ``Connection: close``)."""
        with self._lock:
            self._faults.down = True

    def up(self) -> None:
        with self._lock:
            self._faults.down = False

    def _take_fault(self) -> _Decision:
        """What to do with the next request, consuming one pending :meth:`fail_next` failure."""
        with self._lock:
            f = self._faults
            if f.down:
                return _Decision(f.delay, 503, down=True)
            if f.fail_times > 0:
                f.fail_times -= 1
                return _Decision(f.delay, f.fail_status)
            return _Decision(f.delay)

    # -- auth --------------------------------------------------------------------------------

    def _remote_user(self, authorization: str | None) -> str | None:
        """REMOTE_USER for a request, or None when it is not authorised."""
        if self.token is None:
            return "anonymous"
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return "bearer" if _same(value, self.token) else None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, sep, password = decoded.partition(":")
            return (user or "basic") if sep and _same(password, self.token) else None
        return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class _Exchange:
    """One request in flight: wraps ASGI ``send`` to meter the response and record it.

    The record is published just *before* the final body chunk is sent, so a client that has
    seen the end of a response always finds it in :attr:`GitHttpServer.requests`.
    """

    owner: GitHttpServer
    send: Send
    scope: Scope
    headers: dict[str, str]
    request_bytes: int
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    body_bytes: int = 0
    authenticated: bool = False
    user: str = ""
    recorded: bool = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.body_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.record()
        await self.send(message)

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        self.owner._record(
            RequestRecord(
                method=self.scope["method"],
                path=self.scope["path"],
                query=self.scope.get("query_string", b"").decode("latin-1"),
                status=self.status,
                request_bytes=self.request_bytes,
                response_bytes=self.body_bytes,
                duration=time.perf_counter() - self.started,
                git_protocol=self.headers.get("git-protocol", ""),
                content_encoding=self.headers.get("content-encoding", ""),
                authenticated=self.authenticated,
                user=self.user,
            )
        )


class _GitHttpApp:
    """Plain ASGI app: token check, fault injection, then ``git http-backend`` as CGI."""

    def __init__(self, owner: GitHttpServer) -> None:
        self._owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        headers = _header_map(scope)
        body = await _read_body(receive)
        exchange = _Exchange(self._owner, send, scope, headers, len(body), started)
        try:
            await self._respond(scope, headers, body, exchange)
        finally:
            exchange.record()  # no-op unless the response never completed

    async def _respond(
        self, scope: Scope, headers: dict[str, str], body: bytes, exchange: _Exchange
    ) -> None:
        """Fault injection, then auth, then the CGI response."""
        decision = self._owner._take_fault()
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.down:
            down_headers = [(b"retry-after", b"1"), (b"connection", b"close")]
            await _plain(exchange, 503, "server down\n", down_headers)
            return
        if decision.status is not None:
            await _plain(exchange, decision.status, f"injected failure {decision.status}\n")
            return
        user = self._owner._remote_user(headers.get("authorization"))
        if user is None:
            challenge = [(b"www-authenticate", b'Basic realm="git"')]
            await _plain(exchange, 401, "authentication required\n", challenge)
            return
        exchange.authenticated = self._owner.token is not None
        exchange.user = user if exchange.authenticated else ""
        env = self._cgi_env(scope, headers, body, user)
        await _run_cgi(env, body, exchange)

    def _cgi_env(
        self, scope: Scope, headers: dict[str, str], body: bytes, user: str
    ) -> dict[str, str]:
        push = "true" if self._owner.allow_push else "false"
        env = git_env(
            {
                "GIT_PROJECT_ROOT": str(self._owner.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.receivepack",
                "GIT_CONFIG_VALUE_0": push,
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
                "REQUEST_METHOD": scope["method"],
                "PATH_INFO": scope["path"],
                "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
                "CONTENT_TYPE": headers.get("content-type", ""),
                "REMOTE_USER": user,
                "REMOTE_ADDR": (scope.get("client") or ("127.0.0.1", 0))[0],
            }
        )
        if scope["method"] in ("POST", "PUT"):
            env["CONTENT_LENGTH"] = str(len(body))
        if "content-encoding" in headers:
            env["HTTP_CONTENT_ENCODING"] = headers["content-encoding"]
        if "git-protocol" in headers:
            env["GIT_PROTOCOL"] = headers["git-protocol"]
            env["HTTP_GIT_PROTOCOL"] = headers["git-protocol"]
        return env


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header_map(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive) -> bytes:
    """The whole request body; buffering keeps CONTENT_LENGTH exact even for chunked uploads."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _plain(
    send: Send, status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_CGI_HEAD_LIMIT = 64 * 1024


async def _run_cgi(env: dict[str, str], body: bytes, send: Send) -> None:
    """Run ``git http-backend`` and stream its CGI response; never leaves the process behind."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        "http-backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert proc.stdin and proc.stderr
    feeder = asyncio.create_task(_feed(proc.stdin, body))
    stderr_task = asyncio.create_task(proc.stderr.read())
    try:
        await _relay_cgi(proc, stderr_task, send)
        await proc.wait()
    finally:
        if proc.returncode is None:  # client went away or we failed mid-stream
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        feeder.cancel()
        stderr_task.cancel()
        await asyncio.gather(feeder, stderr_task, return_exceptions=True)


async def _relay_cgi(
    proc: asyncio.subprocess.Process, stderr_task: asyncio.Task[bytes], send: Send
) -> None:
    assert proc.stdout
    head, rest = await _read_cgi_head(proc.stdout)
    if head is None:
        await proc.wait()
        err = (await stderr_task).decode(errors="replace")
        await _plain(send, 502, f"git http-backend produced no response: {err}\n")
        return
    status, headers = _parse_cgi_head(head)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if rest:
        await send({"type": "http.response.body", "body": rest, "more_body": True})
    while chunk := await proc.stdout.read(65536):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _feed(stdin: asyncio.StreamWriter, body: bytes) -> None:
    """Write the request body concurrently with reading stdout, so large bodies can't deadlock."""
    try:
        if body:
            stdin.write(body)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()


async def _read_cgi_head(stdout: asyncio.StreamReader) -> tuple[bytes | None, bytes]:
    """Split CGI output into (header block, start of body); header block None on early EOF."""
    buf = b""
    while True:
        for sep in (b"\r\n\r\n", b"\n\n"):
            idx = buf.find(sep)
            if idx >= 0:
                return buf[:idx], buf[idx + len(sep) :]
        if len(buf) > _CGI_HEAD_LIMIT:
            raise RuntimeError("CGI header block too large")
        chunk = await stdout.read(65536)
        if not chunk:
            return None, b""
        buf += chunk


def _parse_cgi_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    status = 200
    headers: list[tuple[bytes, bytes]] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == b"status":
            status = int(value.split()[0])
        else:
            headers.append((name, value))
    return status, headers


# --------------------------------------------------------------------------------------------
# git daemon
# --------------------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _terminate_group(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM the process group (git daemon forks per connection), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (per-connection children)
    if proc.poll() is None:
        proc.wait()


class GitDaemon:
    """``git daemon`` serving every repository under ``root`` on loopback, push enabled.

    :meth:`start` waits until the port accepts connections; :meth:`stop` (also run on garbage
    collection and at interpreter exit) terminates the whole process group.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.host = host
        self._requested_port = port
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], GitDaemon] | None = None
        # Outlives start/stop so log_text() works after a failed start; closed on GC.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    def argv(self, port: int) -> list[str]:
        return [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={self.root}",
            "--export-all",
            "--informative-errors",
            f"--listen={self.host}",
            f"--port={port}",
            "--enable=receive-pack",
            str(self.root),
        ]

    def start(self, timeout: float = 10) -> Self:
        if self._proc is not None:
            raise RuntimeError("already started")
        attempts = 1 if self._requested_port else 5  # a free port can be taken before we bind it
        for _ in range(attempts):
            port = self._requested_port or _free_port(self.host)
            proc = subprocess.Popen(
                self.argv(port),
                env=git_env(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
            )
            self._finalizer = weakref.finalize(self, _terminate_group, proc)
            if self._wait_listening(proc, port, timeout):
                self._proc, self.port = proc, port
                return self
            self._finalizer()
        raise RuntimeError(f"git daemon failed to start: {self.log_text()}")

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if _port_open(self.host, port):
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        """What the daemon wrote to stderr (for diagnosing failed starts)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    @property
    def url(self) -> str:
        return f"git://{self.host}:{self.port}"

    def url_for(self, repo: str) -> str:
        return f"{self.url}/{repo.lstrip('/')}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Authoring repositories
# --------------------------------------------------------------------------------------------

FileFactory = Callable[[int], tuple[str, bytes]]


def _default_file(i: int) -> tuple[str, bytes]:
    return f"files/{i // 100:03d}/f{i:05d}.json", b'{"_id": "f%d", "n": %d}\n' % (i, i)


def init_bare(bare_path: Path, branch: str = "master") -> Path:
    """Create a bare repository (if missing) that accepts pushes over smart HTTP."""
    bare_path = Path(bare_path)
    if not (bare_path / "HEAD").exists():
        bare_path.mkdir(parents=True, exist_ok=True)
        run_git("init", "--bare", "-q", "-b", branch, bare_path)
        run_git("config", "http.receivepack", "true", cwd=bare_path)
    return bare_path


def _ref_sha(git_dir: Path, ref: str) -> str | None:
    proc = run_git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", cwd=git_dir, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _fi_data(payload: bytes) -> bytes:
    return b"data %d\n%s\n" % (len(payload), payload)


def _fi_path(path: str) -> bytes:
    """C-style quoted path for fast-import (handles spaces, quotes, newlines)."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return b'"' + escaped.encode() + b'"'


def _fast_import_stream(
    branch: str,
    commits: int,
    files: int,
    file_factory: FileFactory,
    parent: str | None,
    epoch: int,
) -> bytes:
    """Stream for ``git fast-import``: ``files`` files spread evenly over ``commits`` commits."""
    ident = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>".encode()
    out = bytearray()
    next_file = 0
    for c in range(commits):
        ts = b"%d +0000" % (epoch + c)
        out += b"commit refs/heads/%s\n" % branch.encode()
        out += b"author %s %s\ncommitter %s %s\n" % (ident, ts, ident, ts)
        out += _fi_data(b"generated commit %d/%d" % (c + 1, commits))
        if c == 0 and parent:
            out += b"from %s\n" % parent.encode()
        upto = (c + 1) * files // commits  # evenly spread; commits beyond `files` are empty
        for i in range(next_file, upto):
            path, content = file_factory(i)
            out += b"M 100644 inline %s\n" % _fi_path(path)
            out += _fi_data(content)
        next_file = upto
    out += b"done\n"
    return bytes(out)


class WorkRepo:
    """A working clone used to author commits, pushing to a bare repository by filesystem path."""

    def __init__(self, bare_path: Path, work_dir: Path, branch: str = "master") -> None:
        self._bare_path = Path(bare_path)
        self.work_dir = Path(work_dir)
        self.branch = branch

    @classmethod
    def create(cls, bare_path: Path, work_dir: Path, branch: str = "master") -> WorkRepo:
        """Create the bare repo (if missing) and a working clone checked out at ``branch``."""
        init_bare(bare_path, branch)
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        run_git("init", "-q", "-b", branch, work_dir)
        run_git("remote", "add", "origin", Path(bare_path).resolve(), cwd=work_dir)
        repo = cls(bare_path, work_dir, branch)
        if _ref_sha(Path(bare_path), f"refs/heads/{branch}"):
            repo.git("fetch", "-q", "origin")
            repo.git("reset", "-q", "--hard", f"origin/{branch}")
        return repo

    # -- accessors ---------------------------------------------------------------------------

    @property
    def bare_path(self) -> Path:
        return self._bare_path

    @property
    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def git(self, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> str:
        """Run git in the working clone; stdout stripped."""
        return run_git(*args, cwd=self.work_dir, env=env).stdout.decode().strip()

    # -- editing -----------------------------------------------------------------------------

    def _path(self, rel: str) -> Path:
        target = self.work_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or Path(rel).parts[:1] == (".git",):
            raise ValueError(f"path escapes the working tree: {rel!r}")
        return target

    def write(self, files: Mapping[str, str | bytes | None]) -> None:
        """Write files (str as UTF-8, or bytes); ``None`` deletes the file."""
        for rel, content in files.items():
            target = self._path(rel)
            if content is None:
                if target.is_symlink() or target.is_file():
                    target.unlink()
                elif target.is_dir():
                    shutil.rmtree(target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()
            data = content.encode() if isinstance(content, str) else content
            target.write_bytes(data)

    def symlink(self, path: str, target: str) -> None:
        """Create (or replace) symlink ``path`` -> ``target``; ``target`` is stored verbatim."""
        link = self._path(path)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)

    def commit(self, message: str = "update", allow_empty: bool = True) -> str:
        """Commit every change in the tree (``git add -A``); return the new HEAD sha."""
        self.git("add", "-A")
        args = ["commit", "-q", "--no-verify", "-m", message]
        if allow_empty:
            args.append("--allow-empty")
        self.git(*args)
        return self.head

    def push(self, branch: str | None = None, force: bool = False) -> str:
        """Push HEAD to ``refs/heads/<branch>`` of the bare repo; return the pushed sha."""
        ref = f"HEAD:refs/heads/{branch or self.branch}"
        self.git("push", "-q", *(["--force"] if force else []), "origin", ref)
        return self.head

    def commit_and_push(
        self, files: Mapping[str, str | bytes | None], message: str = "update"
    ) -> str:
        self.write(files)
        sha = self.commit(message)
        self.push()
        return sha

    # -- bulk generation ---------------------------------------------------------------------

    @staticmethod
    def generate(
        bare_path: Path,
        commits: int,
        files: int,
        file_factory: FileFactory = _default_file,
        branch: str = "master",
        epoch: int = GENERATE_EPOCH,
    ) -> str:
        """Append ``commits`` commits adding ``files`` files to ``branch`` via ``git fast-import``.

        Files ``file_factory(0..files-1)`` are spread evenly over the commits (if there are more
        commits than files, the extra commits are empty). Timestamps start at ``epoch`` so the
        resulting SHAs are reproducible. Builds on the branch tip if it exists. Returns the tip.
        """
        if commits < 1:
            raise ValueError("commits must be >= 1")
        bare = init_bare(bare_path, branch)
        parent = _ref_sha(bare, f"refs/heads/{branch}")
        stream = _fast_import_stream(branch, commits, files, file_factory, parent, epoch)
        run_git("fast-import", "--quiet", "--done", cwd=bare, input=stream, timeout=600)
        sha = _ref_sha(bare, f"refs/heads/{branch}")
        assert sha is not None
        return sha

    bulk = generate
