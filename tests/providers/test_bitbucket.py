"""Bitbucket end to end: Server / Data Center (webhook by the CLI, X-Hub-Signature deliveries, build
statuses, refusals) and Cloud (unsigned, accepted only at /webhook/bitbucket/<path token>)."""

from __future__ import annotations

import httpx

from autodeployer.providers.bitbucket import cloud_path_token
from autodeployer_emulators.bitbucket import BitbucketEmulator

from ..helpers import WEBHOOK_SECRET, stripped, wait_for
from .conftest import Host, commit, provider_env, run_scenario


def bitbucket_host(bitbucket: BitbucketEmulator, app_env: dict[str, str]) -> Host:
    return Host(
        "bitbucket", bitbucket, "ACME/config",
        push=lambda ref, before, after, **kw: bitbucket.push("ACME/config", ref, before, after, **kw),
        states=lambda sha: [s["state"] for s in bitbucket.build_statuses(sha)],
        success="SUCCESSFUL", env=provider_env(app_env, "bitbucket", bitbucket.api_url),
    )


def test_bitbucket_server_push_end_to_end(service, app_env, bitbucket, config_repo, sesam, state_dir):
    run_scenario(bitbucket_host(bitbucket, app_env), service, config_repo, sesam, state_dir)
    first = next(s for s in bitbucket.sent if s.status_code == 202)
    assert first.headers["X-Hub-Signature"].startswith("sha256=") and "X-Request-Id" in first.headers


def test_bitbucket_cloud_only_with_the_path_token(service, app_env, bitbucket, config_repo, sesam, state_dir):
    env = provider_env(app_env, "bitbucket", bitbucket.api_url)
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    puts = sesam.put_count
    _, after = commit(config_repo, "cloudy")
    token = cloud_path_token(WEBHOOK_SECRET)
    assert token not in WEBHOOK_SECRET and WEBHOOK_SECRET not in token
    cloud = svc.url + "/webhook/bitbucket/"
    for url in (svc.url + "/webhook", svc.url + "/webhook/bitbucket", cloud + token[:-1] + "x", cloud + WEBHOOK_SECRET):
        refused = bitbucket.cloud_push(url, "acme/config", "master", after)
        assert refused.status_code == 401, (url, refused.response)
    accepted = bitbucket.cloud_push(svc.url + "/webhook/bitbucket/" + token, "acme/config", "master", after)
    assert accepted.status_code == 202 and "queued" in accepted.response, accepted.response
    wait_for(lambda: "cloudy" in stripped(sesam.entities()), what="Bitbucket Cloud push applied")
    assert sesam.put_count == puts + 1
    other = bitbucket.cloud_push(svc.url + "/webhook/bitbucket/" + token, "acme/other", "master", after)
    assert other.status_code == 202 and "ignored" in other.response
    assert token not in svc.log()  # the path token is a credential: logged as <token>
