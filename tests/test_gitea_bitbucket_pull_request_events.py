"""Gitea / Forgejo `pull_request` and Bitbucket Server `pr:*` deliveries into the pull-request event
previews plan (pure parsing, through the providers the webhook uses)."""

from __future__ import annotations

from typing import Any

from autodeployer.providers.base import Ignored
from autodeployer.providers.bitbucket import BitbucketProvider
from autodeployer.providers.gitea import GiteaProvider
from autodeployer.reviews import PullRequestEvent, ReviewDelivery

HEAD, OLD = "a" * 40, "b" * 40


def gitea(action: str, *, head_repo_id: int = 5, **pull: Any) -> dict[str, Any]:
    repo = {"id": 5, "full_name": "acme/config"}
    fork = {"id": head_repo_id, "full_name": "acme/config" if head_repo_id == 5 else "someone/config"}
    body = {"number": 3, "state": "open", "head": {"ref": "feature", "sha": HEAD, "repo_id": head_repo_id,
                                                   "repo": fork},
            "base": {"ref": "master", "sha": OLD, "repo_id": 5, "repo": repo}, **pull}
    return {"action": action, "number": 3, "pull_request": body, "repository": repo}


def bitbucket(**pull: Any) -> dict[str, Any]:
    def ref(branch: str, sha: str, key: str = "ACME") -> dict[str, Any]:
        return {"id": f"refs/heads/{branch}", "displayId": branch, "latestCommit": sha,
                "repository": {"slug": "config", "project": {"key": key}}}

    body = {"id": 9, "state": "OPEN", "fromRef": ref("feature", HEAD), "toRef": ref("master", OLD), **pull}
    return {"eventKey": "pr:opened", "pullRequest": body}


def test_gitea_actions_in_githubs_words_under_either_event_name() -> None:
    provider = GiteaProvider()
    for event, action, expected in (("pull_request", "opened", "opened"), ("pull_request", "reopened", "reopened"),
                                    ("pull_request_sync", "synchronized", "synchronize"),
                                    ("pull_request", "closed", "closed")):
        assert provider.parse(event, gitea(action)) == ReviewDelivery(PullRequestEvent(
            "acme/config", 3, expected, "master", HEAD, "acme/config", False, "gitea"))
    edited = provider.parse("pull_request", gitea("edited"))
    assert isinstance(edited, Ignored) and "edited" in edited.reason


def test_gitea_fork_and_malformed_payloads() -> None:
    provider = GiteaProvider()
    fork = provider.parse("pull_request", gitea("opened", head_repo_id=77))
    assert isinstance(fork, ReviewDelivery) and fork.event is not None
    assert fork.event.is_fork and fork.event.head_repo == "someone/config"
    headless = gitea("opened")
    headless["pull_request"]["head"] = {"ref": "feature"}
    assert provider.parse("pull_request", headless) == ReviewDelivery(
        None, "pull_request payload without pull_request.head.sha")
    assert provider.parse("pull_request", {"action": "opened"}) == ReviewDelivery(
        None, "pull_request payload without pull_request or repository")


def test_bitbucket_events_in_githubs_words() -> None:
    provider = BitbucketProvider()
    for event, expected in (("pr:opened", "opened"), ("pr:from_ref_updated", "synchronize"),
                            ("pr:reopened", "reopened"), ("pr:merged", "closed"), ("pr:declined", "closed"),
                            ("pr:deleted", "closed")):
        assert provider.parse(event, bitbucket()) == ReviewDelivery(PullRequestEvent(
            "ACME/config", 9, expected, "master", HEAD, "ACME/config", False, "bitbucket"))
    retargeted = provider.parse("pr:modified", {**bitbucket(), "previousTarget": {"id": "refs/heads/old"}})
    assert isinstance(retargeted, ReviewDelivery) and retargeted.event is not None
    assert retargeted.event.action == "synchronize"
    assert isinstance(provider.parse("pr:modified", bitbucket()), Ignored)  # a title: no new target
    assert isinstance(provider.parse("pr:reviewer:approved", bitbucket()), Ignored)
    assert isinstance(provider.parse("pullrequest:created", bitbucket()), Ignored)  # Cloud: out of scope


def test_bitbucket_fork_and_malformed_payloads() -> None:
    provider = BitbucketProvider()
    source = {"id": "refs/heads/f", "displayId": "f", "latestCommit": HEAD,
              "repository": {"slug": "config", "project": {"key": "~SOMEONE"}}}
    fork = provider.parse("pr:opened", bitbucket(fromRef=source))
    assert isinstance(fork, ReviewDelivery) and fork.event is not None
    assert fork.event.is_fork and fork.event.head_repo == "~SOMEONE/config"
    stale = provider.parse("pr:opened", bitbucket(fromRef={"displayId": "f"}))
    assert stale == ReviewDelivery(None, "pr:opened payload without pullRequest.fromRef.latestCommit")
    assert provider.parse("pr:opened", {}) == ReviewDelivery(None, "pr:opened payload without pullRequest")
