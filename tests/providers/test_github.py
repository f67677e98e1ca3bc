"""GitHub through the same harness as the other hosts, for the push->synced figure they are compared
with (the GitHub path itself is tested in tests/web/test_webhook.py)."""

from __future__ import annotations

import time

import httpx

from autodeployer_emulators.github import GitHubEmulator

from ..helpers import WEBHOOK_SECRET, free_port, stripped, wait_for
from .conftest import LATENCIES, commit


def test_github_push_latency_for_comparison(service, app_env, github: GitHubEmulator, config_repo, sesam):
    port = free_port()
    env = {**app_env, "GITHUB_API_URL": github.url, "WEBHOOK_SECRET": WEBHOOK_SECRET,  # type: ignore[attr-defined]
           "SYNC_INTERVAL": "3600", "HEAD_CHECK": "git", "PORT": str(port), "PUBLIC_URL": f"http://127.0.0.1:{port}"}
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    wait_for(lambda: github.hooks("acme", "config"), what="hook registration")
    before, after = commit(config_repo, "fresh")
    started = time.monotonic()
    [delivery] = github.push("acme", "config", "refs/heads/master", before, after)
    assert delivery.status_code == 202
    wait_for(lambda: "fresh" in stripped(sesam.entities()), what="GitHub push applied")
    LATENCIES.setdefault("github", []).append(time.monotonic() - started)
    assert LATENCIES["github"][-1] < 5
