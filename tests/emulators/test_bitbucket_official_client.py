"""The Bitbucket Server emulator driven by atlassian-python-api's `Bitbucket` class, an independent
client of Bitbucket Server / Data Center's REST API.

Each test makes, through the library, the calls the product makes (``providers/bitbucket.py``,
``providers/bitbucket_reviews.py``): webhooks (listed page by page: the library follows
`isLastPage`/`nextPageStart`), build statuses, pull requests, their activities and versioned comments,
against a repository linked to a real Git repository on disk. The library has no build-status writer,
so that call goes through its generic `post` (its URL building, auth and error handling).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from atlassian import Bitbucket
from requests import HTTPError

from autodeployer_emulators.bitbucket import BitbucketEmulator
from autodeployer_emulators.gitserver import WorkRepo

TOKEN = "BBDC-official-client-SECRET"
KEY, SLUG = "ACME", "config"


@pytest.fixture
def bb(config_repo: WorkRepo, tmp_path: Path) -> Iterator[BitbucketEmulator]:
    emulator = BitbucketEmulator(token=TOKEN)
    emulator.add_repo(f"{KEY}/{SLUG}", default_branch="master", git_dir=tmp_path / "git" / "acme" / "config.git")
    with emulator.serve():
        yield emulator


def client(emulator: BitbucketEmulator, token: str = TOKEN) -> Bitbucket:
    return Bitbucket(url=emulator.base_url, token=token, timeout=10)


def feature(repo: WorkRepo, name: str, text: str) -> str:
    repo.git("checkout", "-q", "-B", name, "master")
    repo.write({f"{name}.txt": text})
    sha = repo.commit(f"on {name}")
    repo.push(name, force=True)
    repo.git("checkout", "-q", "master")
    return sha


def test_webhooks_paged_created_updated_deleted(bb: BitbucketEmulator) -> None:
    bb.max_page_size = 2
    api = client(bb)
    made = [api.create_webhook(KEY, SLUG, f"autodeployer-{i}", ["repo:refs_changed"], f"http://127.0.0.1:9/h{i}",
                               True, secret=f"s{i}") for i in range(5)]
    assert [h["url"] for h in made] == [f"http://127.0.0.1:9/h{i}" for i in range(5)]
    assert made[0]["events"] == ["repo:refs_changed"] and made[0]["active"] is True
    assert "secret" not in made[0]["configuration"]
    listed = list(api.get_webhooks(KEY, SLUG))  # follows nextPageStart until isLastPage
    assert [h["id"] for h in listed] == [h["id"] for h in made]
    page = api.get(api._url_webhooks(KEY, SLUG), params={"limit": 2, "start": 2})
    assert (page["size"], page["start"], page["limit"], page["isLastPage"], page["nextPageStart"]) == (2, 2, 2,
                                                                                                     False, 4)

    updated = api.update_webhook(KEY, SLUG, made[1]["id"], name="renamed", url="http://127.0.0.1:9/moved",
                                 events=["repo:refs_changed", "pr:opened"], active=True)
    assert (updated["name"], updated["url"]) == ("renamed", "http://127.0.0.1:9/moved")
    again = api.get_webhook(KEY, SLUG, made[1]["id"])
    assert again["events"] == ["repo:refs_changed", "pr:opened"]
    assert bb.hooks(f"{KEY}/{SLUG}")[1]["configuration"]["secret"] == "s1"  # a PUT without it keeps it

    api.delete_webhook(KEY, SLUG, made[0]["id"])
    with pytest.raises(HTTPError) as gone:
        api.get_webhook(KEY, SLUG, made[0]["id"])
    assert gone.value.response.status_code == 404
    assert f"Webhook {made[0]['id']} does not exist." in str(gone.value)
    assert len(list(api.get_webhooks(KEY, SLUG))) == 4


def test_build_statuses(bb: BitbucketEmulator, config_repo: WorkRepo) -> None:
    api = client(bb)
    url = api.resource_url(f"commits/{config_repo.head}", api_root="rest/build-status")
    assert api.post(url, data={"state": "INPROGRESS", "key": "autodeployer/node", "url": "http://127.0.0.1/r/1",
                               "description": "syncing"}) is None  # 204 No Content
    api.post(url, data={"state": "SUCCESSFUL", "key": "autodeployer/node", "url": "http://127.0.0.1/r/1"})
    api.post(url, data={"state": "FAILED", "key": "other", "url": "http://127.0.0.1/r/2"})
    shown = api.get_associated_build_statuses(config_repo.head)
    assert shown["size"] == 2 and shown["isLastPage"] is True
    assert sorted((s["key"], s["state"]) for s in shown["values"]) == [("autodeployer/node", "SUCCESSFUL"),
                                                                       ("other", "FAILED")]
    with pytest.raises(HTTPError) as invalid:
        api.post(url, data={"state": "DONE", "key": "k", "url": "http://127.0.0.1/"})
    assert invalid.value.response.status_code == 400 and "state must be one of" in str(invalid.value)
    with pytest.raises(HTTPError) as missing:
        api.post(api.resource_url(f"commits/{'e' * 40}", api_root="rest/build-status"),
                 data={"state": "SUCCESSFUL", "key": "k", "url": "http://127.0.0.1/"})
    assert missing.value.response.status_code == 404


def test_pull_requests_activities_and_comments(bb: BitbucketEmulator, config_repo: WorkRepo) -> None:
    bb.max_page_size = 2
    api = client(bb)
    heads = [feature(config_repo, f"f{i}", f"{i}\n") for i in range(3)]
    for i in range(3):
        created = api.open_pull_request(KEY, SLUG, KEY, SLUG, f"f{i}", "master", f"T{i}", "")
        assert created["id"] == i + 1
    with pytest.raises(HTTPError) as duplicate:
        api.open_pull_request(KEY, SLUG, KEY, SLUG, "f0", "master", "again", "")
    assert duplicate.value.response.status_code == 409

    pull = api.get_pull_request(KEY, SLUG, 2)
    assert (pull["state"], pull["open"], pull["fromRef"]["latestCommit"]) == ("OPEN", True, heads[1])
    assert (pull["fromRef"]["displayId"], pull["toRef"]["id"]) == ("f1", "refs/heads/master")
    newest_first = list(api.get_pull_requests(KEY, SLUG, state="OPEN", at="refs/heads/master"))
    assert [p["id"] for p in newest_first] == [3, 2, 1]
    oldest_first = list(api.get_pull_requests(KEY, SLUG, state="OPEN", order="oldest", limit=2))
    assert [p["id"] for p in oldest_first] == [1, 2, 3]
    api.decline_pull_request(KEY, SLUG, 2, pull["version"])
    assert api.get_pull_request(KEY, SLUG, 2)["state"] == "DECLINED"
    assert [p["id"] for p in api.get_pull_requests(KEY, SLUG, state="OPEN")] == [3, 1]

    made = [api.add_pull_request_comment(KEY, SLUG, 1, f"<!-- autodeployer --> {i}") for i in range(3)]
    assert [c["version"] for c in made] == [0, 0, 0]
    activities = list(api.get_pull_requests_activities(KEY, SLUG, 1))
    assert [a["action"] for a in activities] == ["COMMENTED"] * 3 + ["OPENED"]
    assert [a["comment"]["text"] for a in activities[:3]] == [c["text"] for c in reversed(made)]
    edited = api.update_pull_request_comment(KEY, SLUG, 1, made[1]["id"], "edited", made[1]["version"])
    assert (edited["text"], edited["version"]) == ("edited", 1)
    assert api.get_pull_request_comment(KEY, SLUG, 1, made[1]["id"])["text"] == "edited"
    with pytest.raises(HTTPError) as stale:
        api.update_pull_request_comment(KEY, SLUG, 1, made[1]["id"], "again", 0)
    assert stale.value.response.status_code == 409 and "out-of-date" in str(stale.value)
    api.delete_pull_request_comment(KEY, SLUG, 1, made[2]["id"], 0)
    with pytest.raises(HTTPError) as gone:
        api.get_pull_request_comment(KEY, SLUG, 1, made[2]["id"])
    assert gone.value.response.status_code == 404
    with pytest.raises(HTTPError) as unknown:
        api.get_pull_request(KEY, SLUG, 99)
    assert unknown.value.response.status_code == 404 and "Pull request does not exist." in str(unknown.value)


def test_wrong_token_and_unknown_repository(bb: BitbucketEmulator) -> None:
    with pytest.raises(HTTPError) as refused:
        list(client(bb, "BBDC-wrong").get_webhooks(KEY, SLUG))
    assert refused.value.response.status_code == 401
    # the library reads the JSON error only when typed as Bitbucket Server types it
    assert "Authentication failed" in str(refused.value)
    with pytest.raises(HTTPError):
        client(bb, "BBDC-wrong").create_webhook(KEY, SLUG, "x", ["repo:refs_changed"], "http://127.0.0.1:9/", True)
    assert bb.hooks(f"{KEY}/{SLUG}") == []
    with pytest.raises(HTTPError) as unknown:
        list(client(bb).get_webhooks(KEY, "missing"))
    assert unknown.value.response.status_code == 404 and "Repository does not exist." in str(unknown.value)
