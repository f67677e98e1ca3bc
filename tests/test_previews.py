"""The parts of previews that are pure functions: reading a delivery, and the comment's shape."""

from __future__ import annotations

import pytest

from autodeployer.previews import (
    COMMENT_DIFF_LIMIT,
    Preview,
    PullRequestEvent,
    comment_markdown,
    marker,
    report_markdown,
)

PAYLOAD = {"action": "synchronize", "number": 7, "repository": {"full_name": "acme/config"},
           "pull_request": {"head": {"sha": "a" * 40, "ref": "f", "repo": {"full_name": "bob/config", "fork": True}},
                            "base": {"ref": "master", "sha": "b" * 40}}}


def test_a_delivery_is_normalised_and_a_malformed_one_named():
    event = PullRequestEvent.from_payload(PAYLOAD)
    assert event == PullRequestEvent("acme/config", 7, "synchronize", "master", "a" * 40, "bob/config", True)
    broken = {**PAYLOAD, "pull_request": {**PAYLOAD["pull_request"], "head": {"ref": "f"}}}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"head\.sha"):
        PullRequestEvent.from_payload(broken)
    with pytest.raises(ValueError, match="pull_request"):
        PullRequestEvent.from_payload({"action": "opened"})


def test_a_long_diff_is_cut_with_a_link_and_the_marker_leads_the_comment():
    diff = "\n".join(f"+ pipe p{i}\n    +  \"_id\": \"p{i}\"," for i in range(5000))
    preview = Preview("node", 7, "c" * 40, revision="d" * 40, live_revision="e" * 40, summary="5000 added",
                      state="success", plan_text=diff, planned_at=0.0)
    link = "https://deploy.example.org/apps/node/previews/7"
    body = comment_markdown(preview, report_markdown(preview, link))
    assert body.startswith(marker("node") + "\n")
    assert f"(truncated; full plan: {link})" in body
    assert COMMENT_DIFF_LIMIT < len(body) < COMMENT_DIFF_LIMIT + 1000
    assert '\n+  "_id": "p0",' in body  # diff lines at the margin, so GitHub colours them
    assert "planned against live revision `eeeeeeeeeeee`" in body


def test_a_refused_preview_lists_what_it_names_and_no_diff():
    preview = Preview("node", 7, "c" * 40, revision="d" * 40, summary="no plan; refused: not deployable",
                      state="failure", problems=["pipes/x.conf.json: invalid JSON at line 1"], planned_at=0.0)
    body = comment_markdown(preview, report_markdown(preview, None))
    assert "would be refused" in body and "- `pipes/x.conf.json: invalid JSON at line 1`" in body
    assert "<details>" not in body


def test_content_of_the_pull_request_cannot_break_out_of_the_diff_block():
    hostile = '+ pipe x\n    +  "comment": "```\\n# Approved by security <img src=x>",'
    preview = Preview("node", 7, "c" * 40, revision="d" * 40, summary="1 added", state="success",
                      plan_text=hostile.replace("\\n", "\n"), planned_at=0.0)
    body = report_markdown(preview, None)
    assert "````diff" in body and "\n````\n</details>" in body
    refused = Preview("node", 7, "c" * 40, summary="refused", state="failure", problems=["a `b` c"])
    assert "- `` a `b` c ``" in report_markdown(refused, None)


def test_a_preview_round_trips_through_its_json() -> None:
    """What the store keeps is `to_json()`; `from_json` gives the same preview back (the label is derived)."""
    preview = Preview("node", 4, "a" * 40, is_fork=True, revision="c" * 40, live_revision="d" * 40,
                      summary="1 added", state="success", plan_text="+ pipe x", planned_at=1.5, duration=0.25,
                      comment_id=99, problems=["pipes/x: bad"], published_at=2.0, note="head alone",
                      provider="gitlab")
    assert Preview.from_json(preview.to_json()) == preview
    assert Preview.from_json({**preview.to_json(), "added_by_a_newer_version": 1}) == preview
    with pytest.raises(TypeError):
        Preview.from_json({"number": 4})


def test_replicas_sharing_a_store_show_each_others_previews_and_a_drop_removes_them(tmp_path) -> None:
    """Two preview services on one store (as two replicas on PostgreSQL, or a restart on SQLite): what one
    planned the other shows; queued ones stay with the process that queued them; a drop deletes it for both."""
    from autodeployer.previews import PreviewService
    from autodeployer.store import SQLiteStore

    store = SQLiteStore.in_state_dir(tmp_path)
    first, second = (PreviewService({}, {}, store=store) for _ in range(2))
    planned = Preview("node", 1, "a" * 40, summary="1 added", state="success", planned_at=1.0, published_at=1.0)
    first._previews[("node", 1)] = planned
    first._previews[("node", 2)] = Preview("node", 2, "b" * 40)  # queued: not planned yet
    first._unsaved |= {("node", 1), ("node", 2)}
    first._save(planned)
    assert [p.number for p in first.previews("node")] == [1, 2]
    assert [(p.number, p.summary) for p in second.previews("node")] == [(1, "1 added")]
    assert second.preview("node", 1) == planned and second.preview("node", 2) is None
    assert second.drop("node", 1)  # known only from the store: still a drop
    assert [p.number for p in first.previews("node")] == [2]
    restarted = PreviewService({}, {}, store=store)
    assert restarted.load() == 0 and restarted.previews("node") == []
    store.close()
