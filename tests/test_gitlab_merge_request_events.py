"""GitLab `Merge Request Hook` deliveries into the pull-request event previews plan (pure parsing)."""

from __future__ import annotations

from typing import Any

from autodeployer.providers.base import Ignored
from autodeployer.providers.gitlab import GitLabProvider
from autodeployer.reviews import PullRequestEvent, ReviewDelivery

HEAD, OLD = "a" * 40, "b" * 40


def delivery(action: str, **attributes: Any) -> dict[str, Any]:
    attrs = {"iid": 7, "action": action, "target_branch": "master", "source_branch": "feature",
             "source_project_id": 11, "target_project_id": 11, "last_commit": {"id": HEAD}, **attributes}
    return {"object_kind": "merge_request", "project": {"path_with_namespace": "group/sub/config"},
            "object_attributes": attrs}


def parse(payload: dict[str, Any]) -> Any:
    return GitLabProvider().parse("Merge Request Hook", payload)


def test_actions_in_githubs_words() -> None:
    for action, expected in (("open", "opened"), ("reopen", "reopened"), ("close", "closed"), ("merge", "closed")):
        assert parse(delivery(action)) == ReviewDelivery(PullRequestEvent(
            "group/sub/config", 7, expected, "master", HEAD, "group/sub/config", False, "gitlab"))
    updated = parse(delivery("update", oldrev=OLD))
    assert isinstance(updated, ReviewDelivery) and updated.event is not None
    assert updated.event.action == "synchronize"


def test_updates_without_new_commits_and_other_actions_change_no_plan() -> None:
    assert isinstance(parse(delivery("update")), Ignored)  # a title or label change: no oldrev
    approved = parse(delivery("approved"))
    assert isinstance(approved, Ignored) and "approved" in approved.reason


def test_a_fork_is_named_and_a_malformed_payload_names_the_field() -> None:
    fork = parse(delivery("open", source_project_id=99))
    assert isinstance(fork, ReviewDelivery) and fork.event is not None
    assert fork.event.is_fork and fork.event.head_repo == "project 99"
    missing = parse(delivery("open", last_commit=None))
    assert missing == ReviewDelivery(None, "merge_request payload without object_attributes.last_commit.id")
    assert parse({"object_kind": "merge_request"}) == ReviewDelivery(
        None, "merge_request payload without object_attributes or project")
