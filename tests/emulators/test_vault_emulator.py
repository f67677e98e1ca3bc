"""The Vault emulator, driven by ``hvac`` (the official client) over real HTTP on loopback.

Reference: /work/shared/reference/vault-api.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import hvac  # type: ignore[import-untyped]
import hvac.exceptions  # type: ignore[import-untyped]
import pytest
import requests

from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.vault import VaultEmulator
from tests.helpers import free_port, wait_for

ROOT = "root-token"


@pytest.fixture
def vault() -> VaultEmulator:
    return VaultEmulator(token=ROOT)


@pytest.fixture
def server(vault: VaultEmulator) -> Iterator[LoopbackServer]:
    with vault.serve() as running:
        yield running


def client(server: LoopbackServer, token: str | None = ROOT) -> hvac.Client:
    return hvac.Client(url=server.url, token=token, timeout=5)


def test_kv2_read_returns_data_and_metadata(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.put("sesam/prod/db", {"password": "s3cret", "user": "u"})
    answer = client(server).secrets.kv.v2.read_secret_version(
        path="sesam/prod/db", raise_on_deleted_version=True
    )
    assert answer["data"]["data"] == {"password": "s3cret", "user": "u"}
    meta = answer["data"]["metadata"]
    assert meta["version"] == 1 and meta["destroyed"] is False and meta["deletion_time"] == ""
    assert meta["created_time"].endswith("Z")


def test_versions_and_metadata(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.put("x", {"v": "one"})
    vault.put("x", {"v": "two"})
    kv = client(server).secrets.kv.v2
    assert kv.read_secret_version(path="x", raise_on_deleted_version=True)["data"]["data"] == {
        "v": "two"
    }
    old = kv.read_secret_version(path="x", version=1, raise_on_deleted_version=True)
    assert old["data"]["data"] == {"v": "one"} and old["data"]["metadata"]["version"] == 1
    meta = kv.read_secret_metadata(path="x")["data"]
    assert meta["current_version"] == 2 and set(meta["versions"]) == {"1", "2"}
    kv.create_or_update_secret(path="x", secret={"v": "three"})
    assert vault.put("x", {"v": "four"}) == 4


def test_deleted_latest_version_is_404(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.put("gone", {"v": "x"})
    vault.delete_latest("gone")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client(server).secrets.kv.v2.read_secret_version(path="gone", raise_on_deleted_version=True)


def test_list_names(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.put("sesam/a", {"v": "1"})
    vault.put("sesam/b", {"v": "2"})
    vault.put("sesam/sub/c", {"v": "3"})
    keys = client(server).secrets.kv.v2.list_secrets(path="sesam/")["data"]["keys"]
    assert keys == ["a", "b", "sub/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        client(server).secrets.kv.v2.list_secrets(path="nothing/")


def test_token_auth(vault: VaultEmulator, server: LoopbackServer) -> None:
    assert client(server).is_authenticated() is True
    assert client(server, token="wrong").is_authenticated() is False
    vault.revoke_token(ROOT)
    assert client(server).is_authenticated() is False


def test_github_login_gives_a_client_token(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.add_github_token("ghp_valid", allowed=["secret/sesam/"])
    vault.put("sesam/db", {"password": "p"})
    vault.put("other/db", {"password": "q"})
    gh = client(server, token=None)
    answer = gh.auth.github.login(token="ghp_valid")
    token = answer["auth"]["client_token"]
    assert token and answer["auth"]["renewable"] is True and answer["auth"]["lease_duration"] > 0
    assert gh.token == token and gh.is_authenticated()
    assert gh.secrets.kv.v2.read_secret_version(
        path="sesam/db", raise_on_deleted_version=True
    )["data"]["data"] == {"password": "p"}
    with pytest.raises(hvac.exceptions.Forbidden):
        gh.secrets.kv.v2.read_secret_version(path="other/db", raise_on_deleted_version=True)


def test_unknown_github_token_is_400_with_errors(server: LoopbackServer) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client(server, token=None).auth.github.login(token="ghp_unknown")
    assert caught.value.errors and "Bad credentials" in caught.value.errors[0]
    raw = httpx.post(f"{server.url}/v1/auth/github/login", json={"token": "ghp_unknown"})
    assert raw.status_code == 400 and isinstance(raw.json()["errors"], list)


def test_error_shapes_403_404(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.add_token("narrow", allowed=["secret/team-a/"])
    vault.put("team-b/x", {"v": "1"})
    with pytest.raises(hvac.exceptions.Forbidden):
        client(server, "narrow").secrets.kv.v2.read_secret_version(
            path="team-b/x", raise_on_deleted_version=True
        )
    with pytest.raises(hvac.exceptions.InvalidPath):
        client(server).secrets.kv.v2.read_secret_version(
            path="missing", raise_on_deleted_version=True
        )
    url = f"{server.url}/v1/secret/data"
    forbidden = httpx.get(f"{url}/team-b/x", headers={"X-Vault-Token": "narrow"})
    assert (forbidden.status_code, forbidden.json()) == (403, {"errors": ["permission denied"]})
    no_token = httpx.get(f"{url}/team-b/x")
    assert (no_token.status_code, no_token.json()) == (403, {"errors": ["permission denied"]})
    missing = httpx.get(f"{url}/missing", headers={"X-Vault-Token": ROOT})
    assert (missing.status_code, missing.json()) == (404, {"errors": []})
    unmounted = httpx.get(f"{server.url}/v1/nomount/data/x", headers={"X-Vault-Token": ROOT})
    assert unmounted.status_code == 404 and "route entry not found" in unmounted.json()["errors"][0]


def test_injected_500_and_sealed(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.put("x", {"v": "1"})
    vault.fail_next(500, times=1, path_prefix="/v1/secret/")
    kv = client(server).secrets.kv.v2
    with pytest.raises(hvac.exceptions.InternalServerError):
        kv.read_secret_version(path="x", raise_on_deleted_version=True)
    assert kv.read_secret_version(path="x", raise_on_deleted_version=True)["data"]["data"]
    vault.sealed = True
    with pytest.raises(hvac.exceptions.VaultDown) as caught:
        kv.read_secret_version(path="x", raise_on_deleted_version=True)
    assert caught.value.errors == ["Vault is sealed"]
    assert [r.status for r in vault.requests[-3:]] == [500, 200, 503]
    assert client(server).sys.read_health_status(method="GET").status_code == 503
    vault.sealed = False
    assert client(server, token=None).sys.read_health_status(method="GET")["sealed"] is False


def test_non_string_values_are_served_as_stored(
    vault: VaultEmulator, server: LoopbackServer
) -> None:
    vault.put("odd", {"port": 5432, "nested": {"a": [1]}})
    data = client(server).secrets.kv.v2.read_secret_version(
        path="odd", raise_on_deleted_version=True
    )["data"]["data"]
    assert data == {"port": 5432, "nested": {"a": [1]}}


def test_delay_and_hang_hit_the_client_timeout(
    vault: VaultEmulator, server: LoopbackServer
) -> None:
    vault.put("x", {"v": "1"})
    vault.set_delay(0.3)
    started = time.monotonic()
    client(server).secrets.kv.v2.read_secret_version(path="x", raise_on_deleted_version=True)
    assert time.monotonic() - started >= 0.3
    vault.set_delay(0)
    vault.hang()
    try:
        slow = hvac.Client(url=server.url, token=ROOT, timeout=0.5)
        with pytest.raises(requests.exceptions.Timeout):
            slow.secrets.kv.v2.read_secret_version(path="x", raise_on_deleted_version=True)
    finally:
        vault.hang(False)
    assert client(server).secrets.kv.v2.read_secret_version(
        path="x", raise_on_deleted_version=True
    )["data"]["data"] == {"v": "1"}


def test_standalone_entry_point(tmp_path: os.PathLike[str]) -> None:
    port = free_port()
    seed = os.path.join(tmp_path, "seed.json")
    with open(seed, "w", encoding="utf-8") as handle:
        handle.write('{"sesam/db": {"password": "p"}}')
    env = {**os.environ, "VAULT_EMULATOR_TOKEN": "cli-root"}
    process = subprocess.Popen(
        [sys.executable, "-m", "autodeployer_emulators.vault", "--port", str(port), "--seed", seed],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/v1/sys/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=20, what="vault emulator listening")
        reader = hvac.Client(url=url, token="cli-root", timeout=5)
        assert reader.secrets.kv.v2.read_secret_version(
            path="sesam/db", raise_on_deleted_version=True
        )["data"]["data"] == {"password": "p"}
        assert "cli-root" not in " ".join(process.args)  # type: ignore[arg-type]
    finally:
        process.terminate()
        process.wait(timeout=10)
