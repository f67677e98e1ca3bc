"""Secret sources against real things: the Vault emulator over HTTP, real files, real env dicts."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autodeployer.secret_sources import (
    EnvSecretSource,
    FileSecretSource,
    Fingerprinter,
    SecretSource,
    SecretSourceError,
    VaultSecretSource,
    VaultSettings,
)
from autodeployer.secret_sources.fingerprint import KEY_FILE, FingerprintKeyError
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.vault import VaultEmulator
from tests.helpers import free_port

ROOT = "vault-root-token"
GITHUB = "ghp_github_token_value"
VALUE = "hunter2-very-secret-value"


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def vault() -> VaultEmulator:
    emulator = VaultEmulator(token=ROOT)
    emulator.put("sesam/prod/db-password", {"value": VALUE, "other": "second"})
    return emulator


@pytest.fixture
def server(vault: VaultEmulator) -> Iterator[LoopbackServer]:
    with vault.serve() as running:
        yield running


def source(server: LoopbackServer, **env: str) -> VaultSecretSource:
    environ = {"VAULT_URL": server.url, "VAULT_PATH_PREFIX": "sesam/prod/", **env}
    if "VAULT_GIT_TOKEN" not in env:
        environ.setdefault("VAULT_TOKEN", ROOT)
    settings = VaultSettings.from_variables(environ)
    assert settings is not None
    return VaultSecretSource(settings)


# ---- Vault ---------------------------------------------------------------------------------


def test_vault_token_reads_first_value(server: LoopbackServer) -> None:
    vault_source = source(server)
    assert isinstance(vault_source, SecretSource)
    assert run(vault_source.get("db-password")) == VALUE


def test_vault_github_login(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.add_github_token(GITHUB, allowed=["secret/sesam/"])
    vault_source = source(server, VAULT_GIT_TOKEN=GITHUB)
    assert run(vault_source.get("db-password")) == VALUE
    logins = [r for r in vault.requests if r.path == "/v1/auth/github/login"]
    assert len(logins) == 1
    run(vault_source.get("db-password"))
    assert len([r for r in vault.requests if r.path == "/v1/auth/github/login"]) == 1


def test_vault_github_login_again_when_client_token_expires(
    vault: VaultEmulator, server: LoopbackServer
) -> None:
    vault.add_github_token(GITHUB)
    vault_source = source(server, VAULT_GIT_TOKEN=GITHUB)
    run(vault_source.get("db-password"))
    vault.revoke_token(vault_source._client.token)
    assert run(vault_source.get("db-password")) == VALUE
    assert len([r for r in vault.requests if r.path == "/v1/auth/github/login"]) == 2


def test_vault_bad_github_token(server: LoopbackServer) -> None:
    with pytest.raises(SecretSourceError) as caught:
        run(source(server, VAULT_GIT_TOKEN="ghp_wrong").get("db-password"))
    text = str(caught.value)
    assert "GitHub login (VAULT_GIT_TOKEN)" in text and "HTTP 400" in text
    assert "ghp_wrong" not in text


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("forbidden", "permission denied"),
        ("missing", "not found"),
        ("500", "HTTP 500"),
        ("sealed", "sealed"),
        ("non-string", "value is not a string (it is int)"),
        ("empty", "the secret has no values"),
    ],
)
def test_vault_errors_name_secret_and_source(
    vault: VaultEmulator, server: LoopbackServer, setup: str, expected: str
) -> None:
    name = "db-password"
    token = ROOT
    if setup == "forbidden":
        vault.add_token("narrow", allowed=["secret/elsewhere/"])
        token = "narrow"
    elif setup == "missing":
        name = "absent"
    elif setup == "500":
        vault.fail_next(500, path_prefix="/v1/secret/")
    elif setup == "sealed":
        vault.sealed = True
    elif setup == "non-string":
        vault.put("sesam/prod/db-password", {"port": 5432})
    elif setup == "empty":
        vault.put("sesam/prod/db-password", {})
    with pytest.raises(SecretSourceError) as caught:
        run(source(server, VAULT_TOKEN=token).get(name))
    text = str(caught.value)
    assert expected in text
    assert f"secret {name!r}" in text and f"secret/sesam/prod/{name}" in text
    assert VALUE not in text and token not in text


def test_vault_hang_is_bounded(vault: VaultEmulator, server: LoopbackServer) -> None:
    settings = VaultSettings(url=server.url, token=ROOT, path_prefix="sesam/prod/", timeout=0.5)
    vault.hang()
    try:
        started = time.monotonic()
        with pytest.raises(SecretSourceError) as caught:
            run(VaultSecretSource(settings).get("db-password"))
        assert time.monotonic() - started < 3
    finally:
        vault.hang(False)
    assert "no answer within 0.5 s" in str(caught.value)


def test_vault_unreachable() -> None:
    settings = VaultSettings(url=f"http://127.0.0.1:{free_port()}", token=ROOT, timeout=2)
    with pytest.raises(SecretSourceError, match="cannot connect"):
        run(VaultSecretSource(settings).get("x"))


def test_vault_names(vault: VaultEmulator, server: LoopbackServer) -> None:
    vault.put("sesam/prod/api-key", {"k": "v"})
    vault.put("sesam/prod/nested/x", {"k": "v"})
    assert run(source(server).names()) == ["api-key", "db-password"]
    assert run(source(server, VAULT_PATH_PREFIX="sesam/prod-").names()) is None
    vault.sealed = True
    with pytest.raises(SecretSourceError) as caught:
        run(source(server).names())
    assert str(caught.value).startswith(f"Vault {server.url} path secret/sesam/prod/: Vault is sealed")


def test_vault_settings_from_env_errors() -> None:
    assert VaultSettings.from_variables({}) is None
    with pytest.raises(ValueError, match="VAULT_TOKEN nor VAULT_GIT_TOKEN"):
        VaultSettings.from_variables({"VAULT_URL": "http://127.0.0.1:1"})
    with pytest.raises(ValueError, match="VAULT_URL"):
        VaultSettings.from_variables({"VAULT_URL": "ftp://x", "VAULT_TOKEN": "t"})
    with pytest.raises(ValueError, match="VAULT_URL must not carry credentials"):
        VaultSettings.from_variables({"VAULT_URL": "http://u:p@127.0.0.1:1", "VAULT_TOKEN": "t"})
    settings = VaultSettings.from_variables(
        {"VAULT_URL": "http://127.0.0.1:1/", "VAULT_TOKEN": "t", "VAULT_MOUNTING_POINT": "/kv/"}
    )
    assert settings is not None and settings.mount == "kv" and settings.url == "http://127.0.0.1:1"


def test_vault_custom_mount(server: LoopbackServer) -> None:
    emulator = VaultEmulator(token=ROOT, mounts=["kv"])
    emulator.put("p/x", {"a": "from-kv"}, mount="kv")
    with emulator.serve() as other:
        src = source(other, VAULT_MOUNTING_POINT="kv", VAULT_PATH_PREFIX="p/")
        assert run(src.get("x")) == "from-kv"


# ---- file ----------------------------------------------------------------------------------


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": VALUE, "b": "two"}).encode())
    file_source = FileSecretSource(path)
    assert isinstance(file_source, SecretSource)
    assert run(file_source.get("a")) == VALUE
    assert run(file_source.names()) == ["a", "b"]
    path.write_text(json.dumps({"a": "changed"}))
    assert run(file_source.get("a")) == "changed"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it"),
        (b"{not json " + VALUE.encode(), "not valid JSON"),
        (json.dumps([VALUE]).encode(), "must be a JSON object of name to string, got a list"),
        (json.dumps({"a": 1}).encode(), "value is not a string (it is int)"),
        (json.dumps({"a": None}).encode(), "value is not a string (it is null)"),
        (json.dumps({"a": ""}).encode(), "value is empty"),
        (json.dumps({"b": VALUE}).encode(), "not found"),
        (b"\xff\xfe" + VALUE.encode(), "not UTF-8"),
    ],
)
def test_file_source_errors(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "secrets.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretSourceError) as caught:
        run(FileSecretSource(path).get("a"))
    text = str(caught.value)
    assert expected in text and str(path) in text
    assert VALUE not in text and VALUE not in repr(caught.value)


def test_file_permissions_warning(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("{}")
    path.chmod(0o644)
    assert "readable by group or others" in (FileSecretSource(path).permissions_warning() or "")
    path.chmod(0o600)
    assert FileSecretSource(path).permissions_warning() is None


# ---- environment ---------------------------------------------------------------------------


def test_env_source() -> None:
    environ = {"SECRET_db-password": VALUE, "SECRET_API_KEY": "k", "SECRETS_FILE": "/x", "PATH": "/"}
    env_source = EnvSecretSource(environ)
    assert isinstance(env_source, SecretSource)
    assert run(env_source.get("db-password")) == VALUE
    assert run(env_source.get("api-key")) == "k"  # SECRET_API_KEY, the exportable form
    assert run(env_source.names()) == ["API_KEY", "db-password"]
    environ["SECRET_late"] = "x"
    with pytest.raises(SecretSourceError, match="set SECRET_late or SECRET_LATE"):
        run(env_source.get("late"))


def test_env_source_errors() -> None:
    env_source = EnvSecretSource({"SECRET_empty": "", "SECRET_ok": VALUE})
    with pytest.raises(SecretSourceError, match="value is empty"):
        run(env_source.get("empty"))
    for bad in ("a b", "../x", "x)", ""):
        with pytest.raises(SecretSourceError, match="not a valid secret name"):
            run(env_source.get(bad))


# ---- no value anywhere ---------------------------------------------------------------------


def test_no_value_in_any_error_or_repr(
    tmp_path: Path, vault: VaultEmulator, server: LoopbackServer
) -> None:
    """Every failure mode of every source, with the value present nearby: never in the text."""
    vault.put("sesam/prod/bad", {"v": [VALUE]})
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"bad": [VALUE], "ok": VALUE}))
    sources: list[SecretSource] = [
        source(server),
        FileSecretSource(path),
        EnvSecretSource({"SECRET_ok": VALUE, "SECRET_bad": ""}),
    ]
    texts: list[str] = []
    for src in sources:
        texts.append(repr(src))
        texts.append(src.describe())
        for name in ("bad", "absent", "a b"):
            try:
                run(src.get(name))
            except SecretSourceError as exc:
                texts += [str(exc), repr(exc), repr(exc.args), str(exc.__cause__)]
            else:
                pytest.fail(f"{src.describe()} gave a value for {name!r}")
    texts.append(repr(VaultSettings(url=server.url, token=ROOT, github_token=GITHUB)))
    joined = "\n".join(texts)
    assert VALUE not in joined and ROOT not in joined and GITHUB not in joined


# ---- fingerprints --------------------------------------------------------------------------


def test_fingerprint_key_created_0600_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Fingerprinter.from_state_dir(state)
    key = state / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    print_a = first.fingerprint("db", VALUE)
    assert print_a.startswith("hmac-sha256:") and VALUE not in print_a
    again = Fingerprinter.from_state_dir(state)
    assert again.fingerprint("db", VALUE) == print_a
    assert again.matches("db", VALUE, print_a)
    assert not again.matches("db", VALUE + "x", print_a)
    assert not again.matches("other", VALUE, print_a)
    assert not again.matches("db", VALUE, None)
    assert "hidden" in repr(again) and key.read_text().strip() not in repr(again)
    assert [p.name for p in state.iterdir()] == [KEY_FILE]


def test_fingerprint_depends_on_the_key(tmp_path: Path) -> None:
    one = Fingerprinter.from_state_dir(tmp_path / "a")
    two = Fingerprinter.from_state_dir(tmp_path / "b")
    assert one.fingerprint("db", VALUE) != two.fingerprint("db", VALUE)


def test_fingerprint_key_loose_mode_is_tightened_and_bad_key_refused(tmp_path: Path) -> None:
    Fingerprinter.from_state_dir(tmp_path)
    key = tmp_path / KEY_FILE
    os.chmod(key, 0o644)
    Fingerprinter.from_state_dir(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.write_text("short\n")
    with pytest.raises(FingerprintKeyError, match=str(key)):
        Fingerprinter.from_state_dir(tmp_path)
