"""DEPLOY_TOKEN with GIT_USERNAME: an HTTPS access token of that user, over the loopback Git server."""

from __future__ import annotations

from pathlib import Path

from autodeployer_emulators.gitserver import GitHttpServer

from ..helpers import GIT_TOKEN


def test_deploy_token_with_git_username_goes_as_that_user_never_in_a_url(tmp_path: Path, app_env: dict[str, str],
                                                                         git_server: GitHttpServer, sesam):
    """The later generations' HTTPS form: DEPLOY_TOKEN is the access token of GIT_USERNAME."""
    from ..helpers import run_cli

    env = {k: v for k, v in app_env.items() if k not in ("GIT_URL", "GITHUB_TOKEN")}
    env.update(GIT_REPO=git_server.url_for("acme/config.git"), DEPLOY_TOKEN=GIT_TOKEN, GIT_USERNAME="robot",
               LOG_LEVEL="DEBUG")
    done = run_cli(env, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "orders" in {e["_id"] for e in sesam.entities()}
    users = {r.user for r in git_server.requests if r.authenticated}
    assert users == {"robot"}
    assert GIT_TOKEN not in done.stdout + done.stderr
