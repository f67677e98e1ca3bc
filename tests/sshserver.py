"""A real `sshd` (Debian's openssh-server) on 127.0.0.1 serving the test's Git repositories
(the `sshd` fixture of tests/conftest.py).

It runs as the current user with its own host key and an AuthorizedKeysFile holding a generated
deploy key's public half; git reaches the bare repository through the user's shell
(git-upload-pack), with no ForceCommand. As root (CI, containers) sshd needs its privilege
separation directory, which is created here.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .helpers import free_port, wait_for

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    user: str
    deploy_key: str  # the private key text, as DEPLOY_TOKEN carries it
    known_hosts: str  # the line GIT_KNOWN_HOSTS needs for this server
    log_path: Path

    def url_for(self, bare: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{bare}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextmanager
def ssh_server(home: Path) -> Iterator[SshServer]:
    """Start sshd with its keys and configuration in `home` (created); stop it on exit."""
    home.mkdir(parents=True)
    _keygen(home / "host_key")
    _keygen(home / "deploy_key")
    shutil.copy(home / "deploy_key.pub", home / "authorized_keys")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port, user = free_port(), getpass.getuser()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        f"AllowUsers {user}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nStrictModes no\nUsePAM no\n"
        "PermitUserEnvironment no\nAllowTcpForwarding no\nX11Forwarding no\nLogLevel VERBOSE\n"
    )
    log_path = home / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or _accepts(port), timeout=15, what="sshd")
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited ({proc.returncode}):\n{log_path.read_text()}")
        host_key = (home / "host_key.pub").read_text().split()
        yield SshServer(port=port, user=user, deploy_key=(home / "deploy_key").read_text(),
                        known_hosts=f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}", log_path=log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # sshd and the session processes it started
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
