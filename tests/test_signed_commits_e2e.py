"""Signed commits only (VERIFY_COMMITS) end to end: the real CLI and service as subprocesses, Git over
smart HTTP on loopback, the Sesam emulator, and commits signed in the test with real GPG and SSH keys.

A refused commit leaves the node untouched: no write request reaches the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .conftest import ServiceFactory
from .helpers import entity_json, history_rows, pipe, run_cli, stripped, wait_for
from .signing import GpgSigner, SshSigner, amend_unsigned, signed_commit

WRITES = ("PUT", "POST", "DELETE", "PATCH")





@pytest.fixture
def keys_file(tmp_path: Path, alice: GpgSigner, bob: SshSigner) -> Path:
    path = tmp_path / "trusted-keys"
    path.write_text(f"{alice.armor}\n# ssh signers\n{bob.allowed}\n")
    return path


@pytest.fixture
def signed_env(app_env: dict[str, str], keys_file: Path) -> dict[str, str]:
    return {**app_env, "VERIFY_COMMITS": "head", "TRUSTED_KEYS_FILE": str(keys_file)}


def writes(sesam: SesamEmulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in sesam.requests if r.method in WRITES]


def push(repo: WorkRepo, signer: GpgSigner | SshSigner | None, pipe_id: str) -> str:
    sha = signed_commit(repo, signer, f"add {pipe_id}", {f"pipes/{pipe_id}.conf.json": entity_json(pipe(pipe_id))})
    repo.push()
    return sha


def last_row(state_dir: Path) -> dict[str, object]:
    row = dict(history_rows(state_dir, "node")[-1])
    row["details"] = json.loads(str(row["details"] or "{}"))
    return row


def test_gpg_signed_commit_syncs_and_its_signer_is_shown(signed_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                        alice: GpgSigner, state_dir: Path):
    sha = push(config_repo, alice, "signed-pipe")
    done = run_cli(signed_env, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signed-pipe" in stripped(sesam.entities())
    row = last_row(state_dir)
    assert row["revision"] == sha and row["result"] == "synced"
    assert row["details"]["signature"] == {  # type: ignore[index]
        "signer": "Alice <alice@example.org>", "key": alice.key_id, "kind": "gpg", "trusted": True}
    status = json.loads(run_cli(signed_env, "status", "--json").stdout)
    assert status[0]["live_commit"]["signature"]["signer"] == "Alice <alice@example.org>"
    history = run_cli(signed_env, "history", "--no-diff").stdout
    assert f"signed by Alice <alice@example.org> (gpg key {alice.key_id})" in history


def test_ssh_signed_commit_syncs(signed_env, config_repo: WorkRepo, sesam: SesamEmulator, bob: SshSigner,
                                 state_dir: Path):
    push(config_repo, bob, "ssh-signed-pipe")
    done = run_cli(signed_env, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ssh-signed-pipe" in stripped(sesam.entities())
    assert last_row(state_dir)["details"]["signature"]["signer"] == "bob@example.org"  # type: ignore[index]


@pytest.mark.parametrize("case", ["unsigned", "untrusted", "amended"])
def test_commit_not_signed_by_a_trusted_key_is_refused_and_the_node_untouched(
        case: str, signed_env, config_repo: WorkRepo, sesam: SesamEmulator, alice: GpgSigner, mallory: GpgSigner,
        state_dir: Path):
    if case == "amended":
        push(config_repo, alice, "bad-pipe")
        sha = amend_unsigned(config_repo, "add bad-pipe, amended after signing")
        config_repo.push(force=True)
        expected = f"commit {sha[:12]}: no signature"
    else:
        sha = push(config_repo, mallory if case == "untrusted" else None, "bad-pipe")
        expected = (f"commit {sha[:12]}: signed by a key that is not trusted" if case == "untrusted"
                    else f"commit {sha[:12]}: no signature")
    sesam.reset_log()
    done = run_cli(signed_env, "sync")
    assert done.returncode == 2
    assert expected in done.stdout + done.stderr
    assert writes(sesam) == []
    assert "bad-pipe" not in stripped(sesam.entities())
    row = last_row(state_dir)
    assert (row["revision"], row["result"], row["reason"]) == (sha, "refused", "unsigned")
    assert expected in str(row["error"])


def test_all_mode_refuses_a_push_with_an_unsigned_commit_in_the_middle(
        signed_env, config_repo: WorkRepo, sesam: SesamEmulator, alice: GpgSigner, bob: SshSigner, state_dir: Path):
    env = {**signed_env, "VERIFY_COMMITS": "all"}
    push(config_repo, alice, "first")  # the initial commit below it is unsigned: only the head counts at first
    assert run_cli(env, "sync").returncode == 0
    signed_commit(config_repo, alice, "one", {"pipes/one.conf.json": entity_json(pipe("one"))})
    middle = signed_commit(config_repo, None, "two", {"pipes/two.conf.json": entity_json(pipe("two"))})
    head = signed_commit(config_repo, bob, "three", {"pipes/three.conf.json": entity_json(pipe("three"))})
    config_repo.push()
    sesam.reset_log()
    done = run_cli(env, "sync")
    assert done.returncode == 2
    assert f"commit {middle[:12]}: no signature (2 of the 3 commits since the live revision" in done.stdout
    assert writes(sesam) == []
    row = last_row(state_dir)
    assert (row["revision"], row["reason"]) == (head, "unsigned")
    # the same push under `head`: the deployed commit is signed, so it goes
    assert run_cli(signed_env, "sync").returncode == 0
    assert {"one", "two", "three"} <= set(stripped(sesam.entities()))


def test_off_deploys_unsigned_commits_as_before(app_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                state_dir: Path):
    push(config_repo, None, "unsigned-pipe")
    done = run_cli(app_env, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unsigned-pipe" in stripped(sesam.entities())
    assert "signature" not in last_row(state_dir)["details"]  # type: ignore[operator]


def test_bad_trusted_keys_file_is_a_start_up_error_naming_it(app_env, tmp_path: Path, sesam: SesamEmulator):
    not_keys = tmp_path / "keys.txt"
    not_keys.write_text("these are not keys\n")
    for path, why in ((tmp_path / "missing.asc", "cannot read"), (not_keys, "line 1: neither part of")):
        done = run_cli({**app_env, "VERIFY_COMMITS": "head", "TRUSTED_KEYS_FILE": str(path)}, "sync")
        assert done.returncode == 2
        assert "TRUSTED_KEYS_FILE" in done.stderr and str(path) in done.stderr and why in done.stderr
    assert writes(sesam) == []


def test_service_shows_the_signer_and_refuses_an_unsigned_push(
        signed_env, config_repo: WorkRepo, sesam: SesamEmulator, alice: GpgSigner, service: ServiceFactory):
    signed = push(config_repo, alice, "served")
    svc = service({**signed_env, "SYNC_INTERVAL": "0.2"})

    def app() -> dict[str, object]:
        return dict(httpx.get(f"{svc.url}/api/apps/node", timeout=5).json())

    wait_for(lambda: app()["live_revision"] == signed, timeout=20, what="signed commit deployed")
    assert app()["live_commit"]["signature"]["signer"] == "Alice <alice@example.org>"  # type: ignore[index]
    page = httpx.get(f"{svc.url}/apps/node", timeout=5).text
    assert "Signed by" in page and "Alice &lt;alice@example.org&gt;" in page and alice.key_id in page

    sesam.reset_log()
    unsigned = push(config_repo, None, "sneaky")
    wait_for(lambda: app()["last_revision"] == unsigned, timeout=20, what="unsigned push seen")
    state = app()
    assert (state["status"], state["last_reason"], state["live_revision"]) == ("refused", "unsigned", signed)
    assert f"commit {unsigned[:12]}: no signature" in str(state["last_error"])
    assert writes(sesam) == [] and "sneaky" not in stripped(sesam.entities())
    assert httpx.get(f"{svc.url}/healthz", timeout=5).status_code == 200


def test_plan_and_rollback_are_checked_too(signed_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                           alice: GpgSigner, state_dir: Path):
    unsigned = config_repo.head  # the fixture's initial commit
    signed = push(config_repo, alice, "signed-pipe")
    assert run_cli(signed_env, "sync").returncode == 0
    sesam.reset_log()
    done = run_cli(signed_env, "rollback", "--app", "node", "--to", unsigned)
    assert done.returncode != 0
    assert f"commit {unsigned[:12]}: no signature" in done.stdout + done.stderr
    assert writes(sesam) == [] and "signed-pipe" in stripped(sesam.entities())
    row = last_row(state_dir)
    assert (row["revision"], row["trigger"], row["reason"]) == (unsigned, "rollback", "unsigned")
    planned = run_cli(signed_env, "plan", "--revision", unsigned, "--format", "json")
    assert planned.returncode == 2
    assert f"commit {unsigned[:12]}: no signature" in json.loads(planned.stdout)["apps"][0]["reasons"][0]
    good = run_cli(signed_env, "plan", "--revision", signed, "--format", "json")
    assert json.loads(good.stdout)["apps"][0]["reasons"] == []
