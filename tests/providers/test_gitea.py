"""Gitea/Forgejo end to end: the hook by the CLI, HMAC deliveries (native hex and GitHub-compatible
headers), commit statuses, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from autodeployer_emulators.gitea import GiteaEmulator

from ..helpers import WEBHOOK_SECRET, stripped, wait_for
from .conftest import Host, commit, provider_env, run_scenario


def gitea_host(gitea: GiteaEmulator, app_env: dict[str, str]) -> Host:
    return Host(
        "gitea", gitea, "acme/config",
        push=lambda ref, before, after, **kw: gitea.push("acme/config", ref, before, after, **kw),
        states=lambda sha: [s["status"] for s in gitea.statuses("acme/config", sha)],
        success="success", env=provider_env(app_env, "gitea", gitea.api_url),
    )


def test_gitea_push_end_to_end(service, app_env, gitea, config_repo, sesam, state_dir):
    run_scenario(gitea_host(gitea, app_env), service, config_repo, sesam, state_dir)
    first = next(s for s in gitea.sent if s.status_code == 202)
    assert "sha256=" not in first.headers["X-Gitea-Signature"]  # the native header is bare hex
    assert first.headers["X-Forgejo-Signature"] == first.headers["X-Gitea-Signature"]


def test_native_headers_alone_and_each_signature_header_alone(service, app_env, gitea, config_repo, sesam):
    """Only X-Gitea-Signature (no GitHub-compatible headers) verifies; so does X-Forgejo-Signature
    alone, and the GitHub-compatible X-Hub-Signature-256 alone; a forged one of each does not."""
    env = provider_env(app_env, "gitea", gitea.api_url)
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    gitea.add_repo("acme/config", default_branch="master")  # re-added: no hooks, deliveries built by hand
    before, after = commit(config_repo, "native")
    payload = json.dumps({"ref": "refs/heads/master", "before": before, "after": after,
                          "repository": {"full_name": "acme/config"}}).encode()
    good = hmac.new(WEBHOOK_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    base = {"Content-Type": "application/json", "X-Gitea-Event": "push"}
    for index, signature in enumerate(({"X-Gitea-Signature": good}, {"X-Forgejo-Signature": good},
                                       {"X-Hub-Signature-256": f"sha256={good}"})):
        forged = {k: v.replace(good, good[::-1]) for k, v in signature.items()}
        headers = {**base, "X-Gitea-Delivery": f"d-{index}"}
        assert httpx.post(svc.url + "/webhook", content=payload, headers={**headers, **forged}).status_code == 401
        accepted = httpx.post(svc.url + "/webhook", content=payload, headers={**headers, **signature})
        assert accepted.status_code == 202, accepted.text
    wait_for(lambda: "native" in stripped(sesam.entities()), what="native-signed push applied")
    empty = httpx.post(svc.url + "/webhook/gitea", content=payload,
                       headers={**base, "X-Gitea-Signature": "", "X-Hub-Signature-256": "sha256="})
    assert empty.status_code == 401
