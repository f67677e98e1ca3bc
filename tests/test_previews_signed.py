"""Pull-request previews with VERIFY_COMMITS: the preview plans the host's test merge (which nobody
signed), so the PR's own commits decide. Real GPG and SSH keys, `autodeployer run` as a process, the
GitHub emulator's signed deliveries and refs/pull/N/merge over the loopback Git server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo

from .helpers import entity_json, pipe, wait_for
from .signing import GpgSigner, SshSigner, signed_commit
from .test_previews_e2e import gh_api, plan_status, preview_at, preview_env, start

__all__ = ["preview_env"]  # the fixture, shared with the GitHub preview tests




def signed_env(preview_env: dict[str, str], tmp_path: Path, mode: str,
               *signers: GpgSigner | SshSigner) -> dict[str, str]:
    keys = tmp_path / "trusted-keys"
    keys.write_text("\n".join(s.armor if isinstance(s, GpgSigner) else s.allowed for s in signers) + "\n")
    return {**preview_env, "VERIFY_COMMITS": mode, "TRUSTED_KEYS_FILE": str(keys)}


def pr_branch(repo: WorkRepo, name: str, commits: list[tuple[GpgSigner | SshSigner | None, str]]) -> list[str]:
    """A branch off master with one commit per (signer, pipe id), pushed; the shas, oldest first."""
    repo.git("checkout", "-q", "-B", name, "master")
    shas = [signed_commit(repo, signer, f"add {pid}", {f"pipes/{pid}.conf.json": entity_json(pipe(pid))})
            for signer, pid in commits]
    repo.push(name, force=True)
    repo.git("checkout", "-q", "master")
    return shas


def open_pr(github: GitHubEmulator, head: str) -> None:
    gh_api(github, "POST", "/repos/acme/config/pulls", {"title": head, "head": head, "base": "master"})


def test_head_mode_checks_the_pr_head_not_the_test_merge(service: Any, preview_env: dict[str, str],
                                                          github: GitHubEmulator, config_repo: WorkRepo,
                                                          alice: GpgSigner, bob: SshSigner, tmp_path: Path) -> None:
    signed_commit(config_repo, alice, "signed base")
    config_repo.push()
    svc = start(service, signed_env(preview_env, tmp_path, "head", alice, bob), github)

    [good] = pr_branch(config_repo, "good", [(bob, "fresh")])  # SSH-signed head; the merge is GitHub's, unsigned
    open_pr(github, "good")
    shown = preview_at(svc, 1, good, state="success")
    assert "+ pipe fresh" in shown["plan"] and shown["revision"] != good  # the merge result was planned
    assert wait_for(lambda: plan_status(github, good), what="success status")["state"] == "success"

    [unsigned] = pr_branch(config_repo, "unsigned", [(None, "sneaky")])
    open_pr(github, "unsigned")
    refused = preview_at(svc, 2, unsigned, state="failure")
    assert f"commit {unsigned[:12]}: no signature" in refused["reason"]
    assert "pull request's head" in refused["reason"]
    status = wait_for(lambda: plan_status(github, unsigned), what="failure status")
    assert status["state"] == "failure" and unsigned[:12] in status["description"]


def test_all_mode_checks_every_commit_of_the_pr(service: Any, preview_env: dict[str, str], github: GitHubEmulator,
                                               config_repo: WorkRepo, alice: GpgSigner, tmp_path: Path) -> None:
    signed_commit(config_repo, alice, "signed base")
    config_repo.push()
    svc = start(service, signed_env(preview_env, tmp_path, "all", alice), github)

    signed = pr_branch(config_repo, "signed", [(alice, "one"), (alice, "two")])
    open_pr(github, "signed")
    shown = preview_at(svc, 1, signed[-1], state="success")
    assert "+ pipe one" in shown["plan"] and "+ pipe two" in shown["plan"]

    middle, head = pr_branch(config_repo, "middle", [(None, "three"), (alice, "four")])
    open_pr(github, "middle")
    refused = preview_at(svc, 2, head, state="failure")
    assert f"commit {middle[:12]}: no signature" in refused["reason"]
    assert "1 of the pull request's 2 commits" in refused["reason"]
