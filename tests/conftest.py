"""Shared fixtures: real Git servers and emulators on loopback, and a running service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import GitDaemon, GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, SESAM_JWT, base_env, base_files, free_port, wait_for
from .scale.pgserver import PgServer
from .signing import GpgSigner, SshSigner
from .sshserver import SSHD, SshServer, ssh_server


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    server = GitHttpServer(tmp_path / "git", token=GIT_TOKEN)
    with server.serve():
        yield server


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    (tmp_path / "git").mkdir(exist_ok=True)
    with GitDaemon(tmp_path / "git") as daemon:
        yield daemon


@pytest.fixture
def config_repo(tmp_path: Path) -> WorkRepo:
    """acme/config.git with a small Sesam configuration on master."""
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "config.git", tmp_path / "work", branch="master")
    repo.write(base_files())
    repo.commit("initial configuration")
    repo.push()
    return repo


@pytest.fixture
def sesam() -> Iterator[SesamEmulator]:
    node = SesamEmulator(jwt=SESAM_JWT)
    with node.serve() as server:
        node.api_url = server.url + "/api"  # type: ignore[attr-defined]
        yield node


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubEmulator]:
    """GitHub's API for acme/config; the same token serves Git and the API, as GITHUB_TOKEN does.

    The repository's commits are those of the `config_repo` Git repository (when a test has one),
    so commit statuses on SHAs it lacks are refused with 422 as GitHub does.
    """
    gh = GitHubEmulator(token=GIT_TOKEN)
    gh.add_repo("acme", "config", repo_id=4242, default_branch="master",
                git_dir=tmp_path / "git" / "acme" / "config.git")
    gh.delivery_timeout = 5
    with gh.serve() as server:
        gh.url = server.url  # type: ignore[attr-defined]
        yield gh


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 (see sshserver.py): `url_for(bare)`, `deploy_key` (for DEPLOY_TOKEN),
    `known_hosts` (for GIT_KNOWN_HOSTS). Without sshd its tests are skipped on a developer machine and
    fail in CI (`CI` set), where `./dev setup` installs openssh-server."""
    if not os.path.exists(SSHD):
        if os.environ.get("CI"):
            pytest.fail("sshd (Debian's openssh-server) is required in CI")
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    with ssh_server(tmp_path / "sshd") as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (initdb + pg_ctl in a temporary directory, see
    scale/pgserver.py). Without ``initdb`` its tests are skipped on a developer machine and fail in CI
    (``CI`` set), where ``.ci/run`` installs Debian's ``postgresql`` package."""
    try:
        server = PgServer()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(str(exc))
    try:
        server.init().start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the shared server; the URL carries no password."""
    return pg_server.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def app_env(git_server: GitHttpServer, config_repo: WorkRepo, sesam: SesamEmulator, state_dir: Path) -> dict[str, str]:
    """The environment form of one app: the seed's variables plus GIT_URL."""
    return base_env(
        GIT_URL=git_server.url_for("acme/config.git"),
        GITHUB_TOKEN=GIT_TOKEN,
        JWT=SESAM_JWT,
        SESAM_API_URL=sesam.api_url,  # type: ignore[attr-defined]
        STATE_DIR=str(state_dir),
        APP_NAME="node",
    )


@dataclass
class Service:
    """`autodeployer run` as a real process; its log is collected in a file."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class ServiceFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Service] = []

    def __call__(self, env: dict[str, str], *args: str, wait_ready: bool = True) -> Service:
        import httpx

        port = int(env.get("PORT") or free_port())
        env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
        log_path = self.tmp_path / f"service-{len(self.started)}.log"
        with open(log_path, "wb") as handle:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "autodeployer", *args, "run"],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(proc, port, log_path, env)
        self.started.append(service)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"service exited early ({proc.returncode}):\n{service.log()}")
            try:
                return httpx.get(service.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if wait_ready:
            wait_for(healthy, timeout=30, what="service health")
        return service

    def close(self) -> None:
        for service in self.started:
            service.stop()
            if service.proc.poll() is None:
                os.killpg(service.proc.pid, signal.SIGKILL)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


# --------------------------------------------------------------------------- commit signers (tests/signing.py)
@pytest.fixture(scope="module")
def alice() -> Iterator[GpgSigner]:
    """A trusted GPG signer (a real ed25519 key in its own GNUPGHOME)."""
    signer = GpgSigner("Alice", "alice@example.org")
    yield signer
    signer.close()


@pytest.fixture(scope="module")
def mallory() -> Iterator[GpgSigner]:
    """A GPG signer nobody trusts."""
    signer = GpgSigner("Mallory", "mallory@example.org")
    yield signer
    signer.close()


@pytest.fixture(scope="module")
def bob(tmp_path_factory: pytest.TempPathFactory) -> SshSigner:
    """A trusted SSH signer."""
    return SshSigner(tmp_path_factory.mktemp("ssh"), "bob", "bob@example.org")
