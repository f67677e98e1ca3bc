"""Processes and data the scenarios share: server processes, the service, generated Sesam configs.

Everything started here has a ``stop()`` that is safe to call twice and is used in ``finally``
blocks (or as a context manager), so an interrupted run still leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autodeployer_emulators.github import GitHubEmulator, encode_body, sign_sha1, sign_sha256
from autodeployer_emulators.gitserver import WorkRepo

from . import ROOT
from .core import proc_cpu_seconds, wait_until

#: Steady-state scenarios watch each app's first deploy this long (not the default 120 s), and measure after it:
#: the health watch is a deploy's cost, not a poll's.
HEALTH_WINDOW = 15.0
GIT_TOKEN = "bench-git-token-0001"
SESAM_JWT = "bench-sesam-jwt-0001"
WEBHOOK_SECRET = "bench-webhook-secret-0001"


# --------------------------------------------------------------------------- Sesam configurations
def entity(i: int, rev: int = 0) -> dict[str, Any]:
    """Entity number ``i``: every tenth a system, the rest pipes; ``rev`` marks a changed pipe."""
    if i % 10 == 9:
        return {"_id": f"s{i:05d}", "type": "system:url", "url_pattern": f"http://svc{i}.example.org/api/%s",
                "verify_ssl": True}
    pipe: dict[str, Any] = {
        "_id": f"p{i:05d}",
        "type": "pipe",
        "source": {"type": "dataset", "dataset": f"raw-{i % 97}"},
        "transform": {"type": "dtl", "rules": {"default": [["copy", "*"], ["add", "rdf:type", f"~:type{i % 13}"]]}},
        "sink": {"type": "dataset", "dataset": f"out-{i}"},
    }
    if rev:
        pipe["description"] = f"revision {rev}"
    return pipe


def entity_path(e: dict[str, Any]) -> str:
    folder = "pipes" if e["type"] == "pipe" else "systems"
    return f"{folder}/{e['_id']}.conf.json"


def entity_file(e: dict[str, Any]) -> bytes:
    return (json.dumps(e, indent=2) + "\n").encode()


def config_file(i: int) -> tuple[str, bytes]:
    """File factory for WorkRepo.generate: one entity per file, as Sesam repositories hold them."""
    e = entity(i)
    return entity_path(e), entity_file(e)


def entities(n: int) -> list[dict[str, Any]]:
    return [entity(i) for i in range(n)]


def pipe_number(n: int, k: int) -> int:
    """The entity number of the k-th pipe (never a system) among entities 0..n-1, wrapping around."""
    pipes = [i for i in range(n) if i % 10 != 9]
    return pipes[k % len(pipes)]


def managed(live: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pipes and systems by _id (node metadata left out: the benchmark configs do not manage it)."""
    return {e["_id"]: e for e in live if e.get("type") != "metadata"}


# --------------------------------------------------------------------------- child processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """A clean environment for child processes: the developer's settings never leak in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# --------------------------------------------------------------------------- server processes
@dataclass
class ServerProcess:
    """``python -m benchmarks.serve ...`` as a child process, stopped by :meth:`stop`."""

    proc: subprocess.Popen[str]
    port: int
    stats_client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30, trust_env=False))

    @classmethod
    def start(cls, *args: str, timeout: float = 30) -> ServerProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", *args],
            cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            stop_process(proc)
            raise RuntimeError(f"benchmarks.serve {args[0]} did not start within {timeout:g} s")
        return cls(proc, int(json.loads(line)["port"]))

    @classmethod
    def git(cls, root: Path, token: str = GIT_TOKEN) -> ServerProcess:
        return cls.start("git", str(root), token)

    @classmethod
    def sesam(cls, jwt: str = SESAM_JWT) -> ServerProcess:
        return cls.start("sesam", jwt)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, repo: str) -> str:
        return f"{self.url}/{repo}"

    def stats(self, since: int = 0) -> dict[str, Any]:
        return self.stats_client.get(f"{self.url}/_bench/stats", params={"since": since}).json()

    def bytes_sent(self) -> int:
        return int(self.stats(since=1 << 62)["bytes_sent"])

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.stats_client.close()
        stop_process(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> int | None:
    """SIGTERM, wait, then SIGKILL the process group it leads (only processes we started)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()
    return proc.returncode


# --------------------------------------------------------------------------- the service
@dataclass
class Service:
    """``autodeployer run`` as a real process with its log in a file, as the tests start it."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, *args: str, timeout: float = 60) -> Service:
        port = int(env.get("PORT") or free_port())
        env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "autodeployer", *args, "run"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        service = cls(proc, port, log_path)
        try:
            wait_until(service.healthy, timeout, interval=0.05, what="service health")
        except BaseException:
            service.stop()
            raise
        return service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        self._check_alive()
        return self._status("/healthz") == 200

    def ready(self) -> bool:
        """Every app has attempted its first sync (raises if the process has died meanwhile)."""
        self._check_alive()
        return self._status("/readyz") == 200

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"service exited early ({self.proc.returncode}):\n{self.log()[-3000:]}")

    def _status(self, path: str) -> int:
        try:
            return httpx.get(self.url + path, timeout=2, trust_env=False).status_code
        except httpx.HTTPError:
            return 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        return stop_process(self.proc)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_env(git_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment form of one app (the seed's variables plus GIT_URL); the target's are extra."""
    return child_env(GIT_URL=git_url, GITHUB_TOKEN=GIT_TOKEN, STATE_DIR=str(state_dir), APP_NAME="node",
                     LOG_LEVEL="warning", **extra)


def sesam_vars(sesam_api: str) -> dict[str, str]:
    return {"SESAM_API_URL": sesam_api, "JWT": SESAM_JWT}


# --------------------------------------------------------------------------- authoring and delivering
@dataclass
class Change:
    before: str
    after: str
    entity: dict[str, Any]


class ConfigRepo:
    """acme/config.git holding ``size`` entities, plus a working clone to author one-pipe commits."""

    def __init__(self, git_root: Path, work_dir: Path, size: int) -> None:
        self.bare = git_root / "acme" / "config.git"
        WorkRepo.generate(self.bare, 1, size, config_file)
        self.work = WorkRepo.create(self.bare, work_dir)
        self.size = size
        self.expected = {e["_id"]: e for e in entities(size)}
        self._rev = 0

    def commit_change(self, k: int) -> Change:
        """Commit (not push) a new revision of the k-th pipe; the expected state follows."""
        self._rev += 1
        before = self.work.head
        changed = entity(pipe_number(self.size, k), rev=self._rev)
        self.work.write({entity_path(changed): entity_file(changed)})
        after = self.work.commit(f"change {changed['_id']} (revision {self._rev})")
        self.expected[changed["_id"]] = changed
        return Change(before, after, changed)

    def push_change(self, k: int) -> Change:
        change = self.commit_change(k)
        self.work.push()
        return change


@contextlib.contextmanager
def webhook_service(git_url: str, target_env: dict[str, str], work: Path, name: str, git_dir: Path
                    ) -> Iterator[tuple[Hookshot, GitHubEmulator]]:
    """``autodeployer run`` with its hook registered on a GitHub emulator (PUBLIC_URL); polling off.

    ``target_env`` holds the target's variables. Yields the :class:`Hookshot` that delivers to the
    registered hook (once the start-up sync is done) and the emulator, which also receives the
    service's commit statuses. ``git_dir`` is the bare repository behind ``git_url``: the
    emulator's repository has its commits, so the statuses the service posts name real ones.
    """
    github = GitHubEmulator(token=GIT_TOKEN)
    github.add_repo("acme", "config", repo_id=4242, default_branch="master", git_dir=git_dir)
    port = free_port()
    with github.serve() as gh_server:
        env = app_env(git_url, work / f"state-{name}", SYNC_INTERVAL="3600", GITHUB_API_URL=gh_server.url,
                      WEBHOOK_SECRET=WEBHOOK_SECRET, HEAD_CHECK="git", PUBLIC_URL=f"http://127.0.0.1:{port}",
                      PORT=str(port), **target_env)
        with Service.start(env, work / f"service-{name}.log") as service:
            wait_until(service.ready, 120, what="start-up sync")
            hook_url = service.url + "/webhook"
            hook = wait_until(lambda: next((h for h in github.hooks("acme", "config")
                                            if h["config"]["url"] == hook_url), None), 30, what="hook registration")
            hookshot = Hookshot(github, "acme", "config", hook)
            try:
                yield hookshot, github
            finally:
                hookshot.close()


class Hookshot:
    """Delivers signed push events the way GitHub's hookshot does, from one warm connection.

    The payload comes from the GitHub emulator and the URL and secret from the hook the service
    registered there; only the HTTP client is ours, so that client start-up (which the emulator pays
    on every delivery) is not counted as the service's latency.
    """

    def __init__(self, github: GitHubEmulator, owner: str, repo: str, hook: dict[str, Any]) -> None:
        self.github, self.owner, self.repo = github, owner, repo
        self.url = hook["config"]["url"]
        self.secret = hook["config"]["secret"]
        self.hook_id = hook["id"]
        self.client = httpx.Client(timeout=10, trust_env=False)

    def payload(self, before: str, after: str) -> bytes:
        body = self.github.push_payload(self.owner, self.repo, "refs/heads/master", before, after)
        return encode_body(body, "json")[0]

    def deliver(self, body: bytes) -> int:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/bench",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-GitHub-Event": "push",
            "X-GitHub-Hook-ID": str(self.hook_id),
            "X-Hub-Signature": sign_sha1(self.secret, body),
            "X-Hub-Signature-256": sign_sha256(self.secret, body),
        }
        return self.client.post(self.url, content=body, headers=headers).status_code

    def close(self) -> None:
        self.client.close()
