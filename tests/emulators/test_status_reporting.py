"""The product's commit-status error path, which the emulator's old 201 for any SHA never reached.

GitHub refuses a status on a SHA the repository does not have (422). That happens when the
service deploys from a mirror that has commits GitHub lacks: the sync must still succeed and the
refusal must be logged, without any secret.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import ALL_SECRETS, GIT_TOKEN, run_cli


@pytest.fixture
def unrelated_github() -> Iterator[GitHubEmulator]:
    """acme/config on GitHub without the commits of the repository the service deploys from."""
    gh = GitHubEmulator(token=GIT_TOKEN)
    gh.add_repo("acme", "config", repo_id=4242, default_branch="master")
    gh.add_commit("acme", "config", "f" * 40)
    with gh.serve() as server:
        gh.url = server.url  # type: ignore[attr-defined]
        yield gh


def test_a_refused_status_is_logged_and_the_sync_still_succeeds(
        app_env: dict[str, str], config_repo: WorkRepo, sesam: SesamEmulator,
        unrelated_github: GitHubEmulator) -> None:
    env = {**app_env, "GITHUB_API_URL": unrelated_github.url,  # type: ignore[attr-defined]
           "GITHUB_USER": "acme", "GITHUB_PROJECT": "config",
           "LOG_LEVEL": "warning"}  # the CLI shows log lines only when asked to
    result = run_cli(env, "sync")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert sesam.put_count == 1
    posts = [r for r in unrelated_github.requests if r.method == "POST" and "/statuses/" in r.path]
    assert posts and all(r.status == 422 for r in posts)
    assert unrelated_github.statuses("acme", "config", config_repo.head) == []
    assert "commit status not posted" in output and "422" in output
    assert not any(secret in output for secret in ALL_SECRETS)
