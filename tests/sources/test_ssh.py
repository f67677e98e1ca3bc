"""DEPLOY_TOKEN as an SSH deploy key, against a real sshd on loopback with host keys checked."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autodeployer.config.loader import load_config
from autodeployer.errors import SourceError
from autodeployer.sources.git import GitSource
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import SESAM_JWT, base_env
from ..sshserver import SshServer

BASE = {"JWT": SESAM_JWT, "SESAM_API_URL": "http://127.0.0.1:9/api"}


def key_body(server: SshServer) -> str:
    """A line of the private key's body: what a leak would show (the armour lines are not secret)."""
    return server.deploy_key.splitlines()[1]


def source_for(env: dict[str, str], state: Path) -> GitSource:
    return GitSource(load_config({**BASE, **env}).apps[0].source, state)


def test_fetch_over_ssh_with_the_deploy_key_text(tmp_path: Path, sshd: SshServer, config_repo: WorkRepo):
    env = {"GIT_REPO": sshd.url_for(config_repo.bare_path), "DEPLOY_TOKEN": sshd.deploy_key,
           "GIT_KNOWN_HOSTS": sshd.known_hosts}
    state = tmp_path / "state"

    async def scenario() -> None:
        src = source_for(env, state)
        head = await src.head()
        assert head == config_repo.head
        assert await src.fetch(head) == head
        assert "pipes/orders.conf.json" in (await src.read(head)).files
        config_repo.write({"pipes/new.conf.json": '{"_id": "new", "type": "pipe"}\n'})
        config_repo.commit("a new pipe")
        config_repo.push()
        newer = await src.head()
        assert newer == config_repo.head != head and await src.fetch(newer) == newer

    asyncio.run(scenario())
    [key_file] = list(state.glob("secrets/*/id_deploy"))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # owner-only, and only under STATE_DIR
    assert "Accepted publickey" in sshd.log()  # the deploy key itself was used, not some agent's key


def test_a_wrong_or_missing_host_key_is_refused_clearly(tmp_path: Path, sshd: SshServer, config_repo: WorkRepo):
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    algorithm, blob = (other.with_suffix(".pub")).read_text().split()[:2]
    url = sshd.url_for(config_repo.bare_path)
    for name, known in [("wrong", f"[127.0.0.1]:{sshd.port} {algorithm} {blob}"), ("missing", None)]:
        env = {"GIT_REPO": url, "DEPLOY_TOKEN": sshd.deploy_key, **({"GIT_KNOWN_HOSTS": known} if known else {})}
        with pytest.raises(SourceError) as info:
            asyncio.run(source_for(env, tmp_path / name).head())
        message = str(info.value)
        assert "SSH host key verification failed" in message and "GIT_KNOWN_HOSTS" in message, message
        assert key_body(sshd) not in message and "PRIVATE KEY" not in message
    assert "Accepted publickey" not in sshd.log()  # refused before authenticating: nothing was sent


def test_an_unknown_deploy_key_is_named(tmp_path: Path, sshd: SshServer, config_repo: WorkRepo):
    other = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    env = {"GIT_REPO": sshd.url_for(config_repo.bare_path), "DEPLOY_TOKEN": other.read_text(),
           "GIT_KNOWN_HOSTS": sshd.known_hosts}
    with pytest.raises(SourceError, match=r"SSH authentication failed .*DEPLOY_TOKEN") as info:
        asyncio.run(source_for(env, tmp_path / "s").head())
    assert other.read_text().splitlines()[1] not in str(info.value)


def test_the_key_never_shows_in_ps_logs_or_history(tmp_path: Path, sshd: SshServer, config_repo: WorkRepo,
                                                     sesam: SesamEmulator):
    """The CLI as a real process syncs over ssh; `ps` is sampled all along."""
    state = tmp_path / "state"
    env = base_env(GIT_REPO=sshd.url_for(config_repo.bare_path), DEPLOY_TOKEN=sshd.deploy_key,
                   GIT_KNOWN_HOSTS=sshd.known_hosts, JWT=SESAM_JWT, SESAM_API_URL=sesam.api_url,  # type: ignore[attr-defined]
                   STATE_DIR=str(state), APP_NAME="node", LOG_LEVEL="DEBUG")
    proc = subprocess.Popen([sys.executable, "-m", "autodeployer", "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples: list[str] = []
    while proc.poll() is None:
        samples.append(subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert {e["_id"] for e in sesam.entities()} >= {"orders", "customers", "crm", "erp"}  # deployed over ssh
    assert any("sync" in s and "autodeployer" in s for s in samples)  # the sampling saw the process
    secret = key_body(sshd)
    for where, text in [("ps", "\n".join(samples)), ("stdout", out), ("stderr", err)]:
        assert secret not in text and "PRIVATE KEY" not in text, f"the deploy key leaked into {where}"
    for path in state.rglob("*"):
        if path.is_file() and path.name != "id_deploy":
            assert secret.encode() not in path.read_bytes(), f"the deploy key leaked into {path}"
