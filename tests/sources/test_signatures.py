"""Signed commits (sources/signatures.py) against real repositories, real GPG and SSH signatures made by
git in the test, and the trusted-keys file checks that make a bad TRUSTED_KEYS_FILE a start-up error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from autodeployer.config.loader import load_config
from autodeployer.errors import ConfigError
from autodeployer.sources.signatures import (
    CommitVerifier,
    Keyrings,
    Signature,
    UnsignedCommit,
    build_keyring,
    read_trusted_keys,
)
from autodeployer_emulators.gitserver import WorkRepo

from ..helpers import SESAM_JWT, base_env, base_files
from ..signing import GpgSigner, SshSigner, amend_unsigned, signed_commit, tampered


@pytest.fixture(scope="module")
def eve(tmp_path_factory: pytest.TempPathFactory) -> SshSigner:
    return SshSigner(tmp_path_factory.mktemp("ssh"), "eve", "eve@example.org")


@pytest.fixture
def repo(tmp_path: Path) -> WorkRepo:
    work = WorkRepo.create(tmp_path / "git" / "cfg.git", tmp_path / "work")
    work.write(base_files())
    work.commit("initial configuration (unsigned)")
    return work


@pytest.fixture
def keys_file(tmp_path: Path, alice: GpgSigner, bob: SshSigner) -> Path:
    """Alice's GPG key and Bob's SSH key, in one file (told apart by content)."""
    path = tmp_path / "trusted-keys"
    path.write_text(f"# who may deploy\n{alice.armor}\n{bob.allowed}\n")
    return path


def verifier(keys_file: Path, state_dir: Path, mode: str = "head") -> CommitVerifier:
    found = Keyrings(state_dir).verifier(mode, str(keys_file))
    assert found is not None
    return found


def check(v: CommitVerifier, repo: WorkRepo, sha: str, live: str | None = None) -> Signature:
    return asyncio.run(v.check(repo.work_dir / ".git", sha, live))


def refusal(v: CommitVerifier, repo: WorkRepo, sha: str, live: str | None = None) -> str:
    with pytest.raises(UnsignedCommit) as caught:
        check(v, repo, sha, live)
    return str(caught.value)


# --------------------------------------------------------------------------- head
def test_good_gpg_signature_by_a_trusted_key_passes_and_names_the_signer(
        repo: WorkRepo, alice: GpgSigner, keys_file: Path, tmp_path: Path):
    sha = signed_commit(repo, alice, "signed by alice", {"pipes/a.conf.json": "{}"})
    signature = check(verifier(keys_file, tmp_path / "state"), repo, sha)
    assert signature.good
    assert signature.to_dict() == {"signer": "Alice <alice@example.org>", "key": alice.key_id, "kind": "gpg",
                                  "trusted": True}


def test_good_ssh_signature_by_an_allowed_signer_passes(repo: WorkRepo, bob: SshSigner, keys_file: Path,
                                                        tmp_path: Path):
    sha = signed_commit(repo, bob, "signed by bob over ssh")
    signature = check(verifier(keys_file, tmp_path / "state"), repo, sha)
    assert signature.to_dict() == {"signer": "bob@example.org", "key": bob.fingerprint, "kind": "ssh", "trusted": True}


def test_unsigned_commit_is_refused_naming_it(repo: WorkRepo, keys_file: Path, tmp_path: Path):
    sha = signed_commit(repo, None, "nobody signed this")
    message = refusal(verifier(keys_file, tmp_path / "state"), repo, sha)
    assert f"commit {sha[:12]}: no signature" in message
    assert "VERIFY_COMMITS=head" in message


def test_gpg_signature_by_an_untrusted_key_is_refused_naming_the_key(
        repo: WorkRepo, mallory: GpgSigner, keys_file: Path, tmp_path: Path):
    sha = signed_commit(repo, mallory, "mallory's change")
    message = refusal(verifier(keys_file, tmp_path / "state"), repo, sha)
    assert sha[:12] in message and mallory.key_id in message and "not trusted" in message


def test_ssh_signature_by_a_key_not_in_allowed_signers_is_refused(
        repo: WorkRepo, eve: SshSigner, keys_file: Path, tmp_path: Path):
    sha = signed_commit(repo, eve, "eve's change")
    message = refusal(verifier(keys_file, tmp_path / "state"), repo, sha)
    assert sha[:12] in message and eve.fingerprint in message and "ssh key" in message


def test_signed_then_amended_without_signing_again_is_refused(
        repo: WorkRepo, alice: GpgSigner, keys_file: Path, tmp_path: Path):
    signed = signed_commit(repo, alice, "signed")
    amended = amend_unsigned(repo, "signed, then amended")
    v = verifier(keys_file, tmp_path / "state")
    assert check(v, repo, signed).good
    assert f"commit {amended[:12]}: no signature" in refusal(v, repo, amended)


def test_signed_commit_changed_after_signing_has_a_bad_signature(
        repo: WorkRepo, alice: GpgSigner, keys_file: Path, tmp_path: Path):
    signed = signed_commit(repo, alice, "signed")
    forged = tampered(repo, signed, "a different message under the same signature")
    message = refusal(verifier(keys_file, tmp_path / "state"), repo, forged)
    assert f"commit {forged[:12]}: bad signature" in message and alice.key_id in message


def test_the_users_own_keyring_is_never_used(repo: WorkRepo, mallory: GpgSigner, keys_file: Path,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Mallory's GNUPGHOME trusts Mallory ultimately: as the process's GNUPGHOME it changes nothing."""
    monkeypatch.setenv("GNUPGHOME", str(mallory.home))
    sha = signed_commit(repo, mallory, "mallory's change")
    assert mallory.key_id in refusal(verifier(keys_file, tmp_path / "state"), repo, sha)


# --------------------------------------------------------------------------- all
def test_all_mode_refuses_an_unsigned_commit_in_the_middle_of_a_push(
        repo: WorkRepo, alice: GpgSigner, bob: SshSigner, keys_file: Path, tmp_path: Path):
    live = signed_commit(repo, alice, "live")
    first = signed_commit(repo, alice, "one", {"a": "1"})
    middle = signed_commit(repo, None, "two, unsigned", {"a": "2"})
    head = signed_commit(repo, bob, "three", {"a": "3"})
    message = refusal(verifier(keys_file, tmp_path / "state", "all"), repo, head, live)
    assert f"commit {middle[:12]}: no signature" in message
    assert "(2 of the 3 commits since the live revision" in message
    assert first[:12] not in message and head[:12] not in message
    # head mode looks at the deployed commit only
    assert check(verifier(keys_file, tmp_path / "state", "head"), repo, head, live).good


def test_all_mode_passes_when_every_new_commit_is_signed_and_names_the_first_bad_one(
        repo: WorkRepo, alice: GpgSigner, bob: SshSigner, mallory: GpgSigner, keys_file: Path, tmp_path: Path):
    live = signed_commit(repo, None, "live, deployed before the policy was turned on")
    signed_commit(repo, alice, "one")
    head = signed_commit(repo, bob, "two")
    v = verifier(keys_file, tmp_path / "state", "all")
    assert check(v, repo, head, live).to_dict()["signer"] == "bob@example.org"  # the unsigned live one is not new
    bad1 = signed_commit(repo, mallory, "three")
    signed_commit(repo, None, "four")
    last = signed_commit(repo, alice, "five")
    message = refusal(v, repo, last, live)
    assert f"commit {bad1[:12]}" in message and "1 more not signed by a trusted key" in message


def test_all_mode_without_a_live_revision_checks_the_head_only(
        repo: WorkRepo, alice: GpgSigner, keys_file: Path, tmp_path: Path):
    head = signed_commit(repo, alice, "signed on top of an unsigned history")
    v = verifier(keys_file, tmp_path / "state", "all")
    assert check(v, repo, head).good
    assert check(v, repo, head, "0" * 40).good  # a live revision the mirror does not have: head only


def test_all_mode_rollback_to_an_older_commit_checks_that_commit(
        repo: WorkRepo, alice: GpgSigner, keys_file: Path, tmp_path: Path):
    unsigned = repo.head
    old = signed_commit(repo, alice, "old")
    live = signed_commit(repo, alice, "live")
    v = verifier(keys_file, tmp_path / "state", "all")
    assert check(v, repo, old, live).good
    assert unsigned[:12] in refusal(v, repo, unsigned, live)


# --------------------------------------------------------------------------- the keys file and keyring
def test_keys_file_mixing_gpg_and_ssh_is_split_by_content(keys_file: Path, alice: GpgSigner, bob: SshSigner):
    keys = read_trusted_keys(keys_file)
    assert len(keys.gpg_blocks) == 1 and keys.gpg_blocks[0].strip() == alice.armor.strip()
    assert keys.ssh_signers == (bob.allowed,)


@pytest.mark.parametrize("content, expected", [
    ("", "no keys in it"),
    ("# only a comment\n\n", "no keys in it"),
    ("hello world\n", "line 1: neither part of an ASCII-armoured GPG public key nor an SSH allowed-signers line"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8YOxOCHftxp8AuoLx04E29fWomYseqlW2bZts+D3mN bob\n",
     "line 1: an SSH public key without principals"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n", "contains a PRIVATE key"),
    ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n", "line 1: an incomplete ASCII-armoured GPG block"),
])
def test_a_keys_file_that_is_not_keys_is_an_error_naming_it(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "keys.txt"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        read_trusted_keys(path)
    assert str(caught.value).startswith(f"TRUSTED_KEYS_FILE {path}")
    assert expected in str(caught.value)


def test_armoured_block_gpg_cannot_read_is_an_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "keys.asc"
    path.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all!\n-----END PGP PUBLIC KEY BLOCK-----\n")
    with pytest.raises(ConfigError) as caught:
        build_keyring(read_trusted_keys(path), tmp_path / "state")
    assert str(caught.value).startswith(f"TRUSTED_KEYS_FILE {path}")
    assert not (tmp_path / "state" / "signatures").exists() or not [
        p for p in (tmp_path / "state" / "signatures").iterdir() if not p.name.startswith(".")]


def test_keyring_is_private_reused_for_the_same_keys_and_leaves_no_gpg_process(
        keys_file: Path, tmp_path: Path, alice: GpgSigner):
    state = tmp_path / "state"
    ring = build_keyring(read_trusted_keys(keys_file), state)
    assert ring.home.parent == state / "signatures"
    assert ring.gnupghome.stat().st_mode & 0o777 == 0o700
    assert ring.allowed_signers.read_text().startswith("bob@example.org ssh-ed25519 ")
    before = ring.gnupghome.stat().st_mtime_ns
    assert build_keyring(read_trusted_keys(keys_file), state) == ring  # built once
    assert ring.gnupghome.stat().st_mtime_ns == before
    # a key removed from the file: another keyring, without it
    keys_file.write_text(alice.armor)
    assert build_keyring(read_trusted_keys(keys_file), state).home != ring.home
    agents = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(state) not in agents


def test_keyrings_of_earlier_keys_are_removed_once_no_process_holds_them(
        keys_file: Path, tmp_path: Path, alice: GpgSigner, bob: SshSigner):
    state = tmp_path / "state"
    service = Keyrings(state)  # a long-running process with the first keys
    first = service.verifier("head", str(keys_file))
    assert first is not None
    keys_file.write_text(alice.armor)  # the keys change; a CLI run starts with them
    cli = Keyrings(state)
    second = cli.verifier("head", str(keys_file))
    assert second is not None and second.ring.home != first.ring.home
    assert (first.ring.home / "ready").exists()  # the service still verifies with its own
    leftover = state / "signatures" / ".build-killed"
    leftover.mkdir()
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    service.close()  # the service stops
    keys_file.write_text(bob.allowed + "\n")  # and starts again, with other keys
    restarted = Keyrings(state)
    third = restarted.verifier("head", str(keys_file))
    assert third is not None
    names = sorted(p.name for p in (state / "signatures").iterdir())
    assert names == sorted([second.ring.home.name, third.ring.home.name])  # held by the CLI run: kept
    cli.close()
    restarted.close()
    assert Keyrings(state).verifier("head", str(keys_file)) is not None  # its own is reused, the CLI's removed
    assert [p.name for p in (state / "signatures").iterdir()] == [third.ring.home.name]


# --------------------------------------------------------------------------- configuration
def env_for(repo: WorkRepo, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(GIT_URL=str(repo.bare_path), JWT=SESAM_JWT, SESAM_API_URL="http://127.0.0.1:9/api",
                    STATE_DIR=str(tmp_path / "state"), **extra)


def test_verify_commits_without_keys_is_a_start_up_error(repo: WorkRepo, tmp_path: Path):
    with pytest.raises(ConfigError, match="VERIFY_COMMITS is 'head' but TRUSTED_KEYS_FILE is not set"):
        load_config(env_for(repo, tmp_path, VERIFY_COMMITS="head"))
    with pytest.raises(ConfigError, match="VERIFY_COMMITS: expected off, head or all, got 'sometimes'"):
        load_config(env_for(repo, tmp_path, VERIFY_COMMITS="sometimes"))
    with pytest.raises(ConfigError, match=f"TRUSTED_KEYS_FILE: cannot read {tmp_path}/missing"):
        load_config(env_for(repo, tmp_path, VERIFY_COMMITS="all", TRUSTED_KEYS_FILE=str(tmp_path / "missing")))


def test_settings_from_environment_and_yaml(repo: WorkRepo, tmp_path: Path, keys_file: Path):
    config = load_config(env_for(repo, tmp_path, VERIFY_COMMITS="ALL", TRUSTED_KEYS_FILE=str(keys_file)))
    assert config.apps[0].policy.verify_commits == "all"
    assert config.apps[0].source.trusted_keys_file == str(keys_file)
    assert load_config(env_for(repo, tmp_path)).apps[0].policy.verify_commits == "off"
    yaml_file = tmp_path / "apps.yaml"
    yaml_file.write_text(f"""
apps:
  - name: signed
    source: {{url: {repo.bare_path}, trusted_keys_file: {keys_file}}}
    target: {{kind: sesam, api_url: http://127.0.0.1:9/api, jwt: x}}
    policy: {{verify_commits: head}}
  - name: plain
    source: {{url: {repo.bare_path}}}
    target: {{kind: sesam, api_url: http://127.0.0.1:9/api, jwt: x}}
    policy: {{verify_commits: off}}
""")
    apps = load_config(env_for(repo, tmp_path), yaml_file).apps
    assert [(a.policy.verify_commits, a.source.trusted_keys_file) for a in apps] == [
        ("head", str(keys_file)), ("off", None)]
    yaml_file.write_text(f"""
apps:
  - name: signed
    source: {{url: {repo.bare_path}}}
    target: {{kind: sesam, api_url: http://127.0.0.1:9/api, jwt: x}}
    policy: {{verify_commits: all}}
""")
    with pytest.raises(ConfigError, match=r"apps\[signed\]\.policy\.verify_commits is 'all' but "
                                          r"apps\[signed\]\.source\.trusted_keys_file is not set"):
        load_config(env_for(repo, tmp_path), yaml_file)


def test_verdicts_are_kept_per_commit_and_the_cache_stays_bounded(
        repo: WorkRepo, alice: GpgSigner, keys_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from autodeployer.sources import signatures

    monkeypatch.setattr(signatures, "_MAX_CACHE", 2)
    live = signed_commit(repo, alice, "live")
    shas = [signed_commit(repo, alice, f"c{i}") for i in range(3)]
    v = verifier(keys_file, tmp_path / "state", "all")
    assert check(v, repo, shas[-1], live).good  # more commits than the cache holds: still all checked
    assert check(v, repo, shas[-1], live).good
    assert v.known(shas[-1]) is not None and v.known(live) is None
