"""`autodeployer run` with several apps following one repository: their polls share one head check per
interval, counted on the real loopback Git server (protocol-v2 `ls-refs` POSTs)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from autodeployer_emulators.gitserver import GitHttpServer
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import GIT_TOKEN, SESAM_JWT, base_env, history_rows, wait_for

APPS = 6
INTERVAL = 1.0
WINDOW = 4.0


def test_apps_on_one_repository_share_the_head_check(tmp_path: Path, service, git_server: GitHttpServer,
                                                     config_repo, sesam: SesamEmulator, state_dir: Path):
    apps = [{"name": f"env{i}", "source": {"url": git_server.url_for("acme/config.git"), "branch": "master",
                                            "token_env": "GITHUB_TOKEN"},
             "target": {"kind": "sesam", "api_url": sesam.api_url, "jwt_env": "JWT"},  # type: ignore[attr-defined]
             "policy": {"interval": INTERVAL, "drift_interval": 0}}
            for i in range(APPS)]
    config = tmp_path / "apps.yaml"
    config.write_text(yaml.safe_dump({"service": {"state_dir": str(state_dir)}, "apps": apps}))
    service(base_env(GITHUB_TOKEN=GIT_TOKEN, JWT=SESAM_JWT, COMMIT_STATUS="false"), "--config", str(config))
    wait_for(lambda: len({r["app"] for r in history_rows(state_dir)}) == APPS, timeout=30, what="every app synced")
    time.sleep(INTERVAL)  # past the start-up syncs
    git_server.reset_stats()
    time.sleep(WINDOW)
    checks = sum(1 for r in git_server.requests if r.method == "POST" and r.path.endswith("/git-upload-pack"))
    # Unshared, each app checks once per interval: APPS * WINDOW / INTERVAL = 24. Shared: about one per interval.
    assert 1 <= checks <= WINDOW / INTERVAL * 1.5 + 1, checks
