"""DEPLOY_TOKEN with GIT_USERNAME: an HTTPS access token of that user, over the loopback Git server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from autodeployer_emulators.gitserver import GitHttpServer

from ..helpers import GIT_TOKEN


def test_deploy_token_with_git_username_goes_as_that_user_never_in_a_url(tmp_path: Path, app_env: dict[str, str],
                                                                         git_server: GitHttpServer, sesam):
    """The later generations' HTTPS form: DEPLOY_TOKEN is the access token of GIT_USERNAME. The CLI
    runs as a real process and `ps` is sampled all along: the token is in no command line."""
    env = {k: v for k, v in app_env.items() if k not in ("GIT_URL", "GITHUB_TOKEN")}
    env.update(GIT_REPO=git_server.url_for("acme/config.git"), DEPLOY_TOKEN=GIT_TOKEN, GIT_USERNAME="robot",
               LOG_LEVEL="DEBUG")
    proc = subprocess.Popen([sys.executable, "-m", "autodeployer", "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples: list[str] = []
    while proc.poll() is None:
        samples.append(subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "orders" in {e["_id"] for e in sesam.entities()}
    users = {r.user for r in git_server.requests if r.authenticated}
    assert users == {"robot"}
    assert any("autodeployer" in s for s in samples)  # the sampling saw the process
    for where, text in [("ps", "\n".join(samples)), ("stdout", out), ("stderr", err)]:
        assert GIT_TOKEN not in text, f"the token leaked into {where}"
    assert not any("robot:" in s or "@127.0.0.1" in s for s in samples)  # no credentials in a URL
