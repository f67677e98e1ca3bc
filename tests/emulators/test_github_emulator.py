"""The GitHub emulator over real loopback HTTP: hooks, deliveries, statuses, heads, limits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.github import GitHubEmulator, sign_sha256

TOKEN = "ghp_secret"
SECRET = "s3cr3t-for-tests"
SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny webhook receiver: records each POST and answers from a script of (status, delay)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[tuple[int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append(Received(dict(request.headers), body))
            status, delay = self.script.pop(0) if self.script else (202, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return Response(b"accepted", status_code=status)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.endpoint, methods=["POST"])])
    server = LoopbackServer(app)
    server._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # avoid 40 ms Nagle stalls
    with server:
        rec.url = f"{server.url}/hook"
        yield rec


@pytest.fixture
def gh() -> GitHubEmulator:
    emulator = GitHubEmulator(token=TOKEN)
    emulator.add_repo("acme", "config", repo_id=1234, default_branch="master")
    emulator.set_head("acme", "config", "master", SHA_A)
    for sha in (SHA_B, SHA_C):  # commits the repository has besides its head
        emulator.add_commit("acme", "config", sha)
    return emulator


@pytest.fixture
def api(gh: GitHubEmulator) -> Iterator[httpx.Client]:
    with gh.serve() as server:
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.github+json"}
        base = server.url + gh.api_prefix
        with httpx.Client(base_url=base, headers=headers, trust_env=False) as client:
            yield client
        gh.wait_idle()


def hook_body(url: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "web",
        "active": True,
        "events": ["push"],
        "config": {"url": url, "content_type": "json", "secret": SECRET, "insecure_ssl": "0"},
    }
    body.update(overrides)
    return body


def valid_signature(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-hub-signature-256"], expected)


# ------------------------------------------------------------------ signing and auth


def test_published_signature_vector() -> None:
    assert sign_sha256("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_auth_missing_or_bad_token_is_401(gh: GitHubEmulator, api: httpx.Client) -> None:
    path = "/repos/acme/config/hooks"
    assert api.get(path, headers={"Authorization": ""}).status_code == 401
    bad = api.get(path, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    assert api.get(path, headers={"Authorization": f"token {TOKEN}"}).status_code == 200
    logged = gh.requests[-1].headers["authorization"]
    assert logged == "token ********" and TOKEN not in repr(gh.requests)  # the log masks tokens


def test_missing_hook_scope_is_403_but_statuses_work(gh: GitHubEmulator, api: httpx.Client) -> None:
    gh.token_scopes = {"repo:status"}
    denied = api.get("/repos/acme/config/hooks")
    assert denied.status_code == 403
    assert "admin:repo_hook" in denied.headers["x-accepted-oauth-scopes"]
    assert denied.headers["x-accepted-github-permissions"] == "repository_hooks=read"
    status = api.post(f"/repos/acme/config/statuses/{SHA_A}", json={"state": "pending"})
    assert status.status_code == 201


def test_token_none_disables_auth() -> None:
    gh = GitHubEmulator(token=None)
    gh.add_repo("acme", "config")
    with gh.serve() as server:
        resp = httpx.get(f"{server.url}/repos/acme/config/hooks", trust_env=False)
        assert resp.status_code == 200


def test_unknown_repo_and_route_are_404(api: httpx.Client) -> None:
    assert api.get("/repos/acme/nope/hooks").status_code == 404
    assert api.get("/repos/acme/config/hooks/999").status_code == 404
    assert api.get("/nothing/here").status_code == 404


# ------------------------------------------------------------------ hooks API


def test_create_hook_201_location_shape_and_masked_secret(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    resp = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url))
    assert resp.status_code == 201
    hook = resp.json()
    assert resp.headers["location"] == hook["url"]
    assert hook["url"].endswith(f"/repos/acme/config/hooks/{hook['id']}")
    assert {"type", "id", "name", "active", "events", "config", "created_at", "updated_at", "url",
            "test_url", "ping_url", "deliveries_url", "last_response"} <= hook.keys()
    assert hook["type"] == "Repository" and hook["name"] == "web" and hook["events"] == ["push"]
    assert hook["config"] == {"content_type": "json", "insecure_ssl": "0", "url": receiver.url,
                              "secret": "********"}
    assert hook["last_response"] == {"code": None, "status": "unused", "message": None}
    assert SECRET not in resp.text
    assert gh.hooks("acme", "config")[0]["config"]["secret"] == SECRET


def test_create_hook_defaults(gh: GitHubEmulator, api: httpx.Client) -> None:
    resp = api.post("/repos/acme/config/hooks",
                    json={"active": False, "config": {"url": "http://127.0.0.1:9/a"}})
    assert resp.status_code == 201
    hook = resp.json()
    assert hook["name"] == "web" and hook["events"] == ["push"] and hook["active"] is False
    assert hook["config"] == {
        "content_type": "form", "insecure_ssl": "0", "url": "http://127.0.0.1:9/a"}
    flagged = api.post("/repos/acme/config/hooks", json={
        "active": False, "config": {"url": "http://127.0.0.1:9/b", "insecure_ssl": True}})
    assert flagged.json()["config"]["insecure_ssl"] == "1"
    assert api.post("/repos/acme/config/hooks", json={"config": {"url": "x"}}).status_code == 422
    assert api.post("/repos/acme/config/hooks", content=b"{nope").status_code == 400
    bad_type = {"active": False, "config": {"url": "http://127.0.0.1:9/c", "content_type": "xml"}}
    assert api.post("/repos/acme/config/hooks", json=bad_type).status_code == 422


def test_duplicate_hook_is_422_with_errors(api: httpx.Client) -> None:
    url = "http://127.0.0.1:9/dup"
    first = api.post("/repos/acme/config/hooks", json=hook_body(url, active=False))
    assert first.status_code == 201
    dup = api.post("/repos/acme/config/hooks", json=hook_body(url, active=False))
    assert dup.status_code == 422
    body = dup.json()
    assert body["message"] == "Validation Failed" and "documentation_url" in body
    assert body["errors"][0]["resource"] == "Hook" and body["errors"][0]["code"] == "custom"
    assert "already exists" in body["errors"][0]["message"]
    disjoint = hook_body(url, active=False, events=["pull_request"])
    assert api.post("/repos/acme/config/hooks", json=disjoint).status_code == 201
    wildcard = hook_body(url, active=False, events=["*"])
    assert api.post("/repos/acme/config/hooks", json=wildcard).status_code == 422


def _create_many(api: httpx.Client, n: int) -> list[int]:
    bodies = [hook_body(f"http://127.0.0.1:9/h{i}", active=False) for i in range(n)]
    return [api.post("/repos/acme/config/hooks", json=b).json()["id"] for b in bodies]


def _links(resp: httpx.Response) -> dict[str, str]:
    found = re.finditer(r'<([^>]+)>; rel="(\w+)"', resp.headers.get("link", ""))
    return {m.group(2): m.group(1) for m in found}


def test_pagination_and_link_header(api: httpx.Client) -> None:
    ids = _create_many(api, 101)
    first = api.get("/repos/acme/config/hooks")
    assert len(first.json()) == 30
    assert set(_links(first)) == {"next", "last"}
    collected, url = [], "/repos/acme/config/hooks"
    while url:
        resp = api.get(url)
        collected += [h["id"] for h in resp.json()]
        url = _links(resp).get("next", "")
    assert collected == ids
    middle = api.get("/repos/acme/config/hooks", params={"page": 2})
    assert set(_links(middle)) == {"prev", "next", "first", "last"}
    big = api.get("/repos/acme/config/hooks", params={"per_page": 100})
    assert len(big.json()) == 100 and "page=2" in _links(big)["last"]
    last = api.get(_links(big)["next"])
    assert [h["id"] for h in last.json()] == ids[100:] and set(_links(last)) == {"prev", "first"}
    clamped = api.get("/repos/acme/config/hooks", params={"per_page": 500})
    assert len(clamped.json()) == 100


def test_single_page_has_no_link_header(api: httpx.Client) -> None:
    _create_many(api, 30)
    resp = api.get("/repos/acme/config/hooks")
    assert len(resp.json()) == 30 and "link" not in resp.headers


def test_get_patch_delete_hook(gh: GitHubEmulator, api: httpx.Client) -> None:
    url = "http://127.0.0.1:9/p"
    hook = api.post("/repos/acme/config/hooks", json=hook_body(url, active=False)).json()
    path = f"/repos/acme/config/hooks/{hook['id']}"
    assert api.get(path).json() == hook
    patched = api.patch(path, json={"config": {"url": url + "2"}, "events": ["push", "create"]})
    assert patched.status_code == 200
    # config replaced whole: secret gone and content_type back to the default.
    assert patched.json()["config"] == {
        "content_type": "form", "insecure_ssl": "0", "url": url + "2"}
    assert "secret" not in gh.hooks("acme", "config")[0]["config"]
    edited = api.patch(path, json={"add_events": ["delete", "push"], "remove_events": ["create"],
                                   "active": True}).json()
    assert edited["events"] == ["push", "delete"] and edited["active"] is True
    config = api.patch(f"{path}/config", json={"content_type": "json", "secret": "x"})
    assert config.json() == {"content_type": "json", "insecure_ssl": "0", "url": url + "2",
                             "secret": "********"}
    assert api.get(f"{path}/config").json()["content_type"] == "json"
    assert api.delete(path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.delete(path).status_code == 404


# ------------------------------------------------------------------ deliveries


def test_ping_on_create_is_async_with_correct_headers(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    receiver.script.append((200, 0.6))
    started = time.monotonic()
    hook = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url)).json()
    assert time.monotonic() - started < 0.5  # the response does not wait for the ping
    record = gh.wait_for_delivery("ping", hook["id"])
    assert record.ok and record.status_code == 200
    got = receiver.received[0]
    h = got.headers
    assert h["x-github-event"] == "ping"
    assert str(uuid.UUID(h["x-github-delivery"])) == h["x-github-delivery"] == record.guid
    assert h["x-github-hook-id"] == str(hook["id"])
    assert h["x-github-hook-installation-target-type"] == "repository"
    assert h["x-github-hook-installation-target-id"] == "1234"
    assert re.fullmatch(r"GitHub-Hookshot/[0-9a-f]+", h["user-agent"])
    assert h["content-type"] == "application/json"
    assert valid_signature(h, got.body)
    sha1 = hmac.new(SECRET.encode(), got.body, hashlib.sha1).hexdigest()
    assert h["x-hub-signature"] == "sha1=" + sha1
    payload = json.loads(got.body)
    assert payload["hook_id"] == hook["id"] and payload["zen"]
    assert payload["hook"]["config"]["secret"] == "********"
    assert payload["repository"]["full_name"] == "acme/config" and payload["sender"]["login"]
    assert api.get(f"/repos/acme/config/hooks/{hook['id']}").json()["last_response"] == {
        "code": 200, "status": "active", "message": "OK"}


def test_pings_endpoint_204_triggers_ping(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    hook = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url, active=False)).json()
    assert api.post(f"/repos/acme/config/hooks/{hook['id']}/pings").status_code == 204
    assert gh.wait_for_delivery("ping", hook["id"]).ok


def test_push_json_delivery(gh: GitHubEmulator, api: httpx.Client, receiver: Receiver) -> None:
    hook = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url, active=False)).json()
    api.patch(f"/repos/acme/config/hooks/{hook['id']}", json={"active": True})
    commits = [{"id": SHA_B, "message": "change", "modified": ["nodes/a.yaml"]}]
    [record] = gh.push("acme", "config", "refs/heads/master", SHA_A, SHA_B, commits=commits)
    assert record.ok and record.event == "push" and record.hook_id == hook["id"]
    got = receiver.received[-1]
    assert got.headers["content-type"] == "application/json"
    assert valid_signature(got.headers, got.body)
    assert got.body == record.request_body
    p = json.loads(got.body)
    assert (p["ref"], p["before"], p["after"]) == ("refs/heads/master", SHA_A, SHA_B)
    assert (p["created"], p["deleted"], p["forced"], p["base_ref"]) == (False, False, False, None)
    assert p["repository"]["full_name"] == "acme/config" and p["repository"]["id"] == 1234
    assert p["repository"]["clone_url"].endswith("/acme/config.git")
    assert p["repository"]["default_branch"] == "master"
    assert isinstance(p["repository"]["created_at"], int)
    assert isinstance(p["repository"]["pushed_at"], int)
    assert p["head_commit"]["id"] == SHA_B and p["commits"][0]["modified"] == ["nodes/a.yaml"]
    assert {"id", "tree_id", "distinct", "message", "timestamp", "url", "author", "committer",
            "added", "removed"} <= p["commits"][0].keys()
    assert p["pusher"]["name"] and p["sender"]["login"] and p["compare"]


def test_push_form_delivery_signs_form_bytes(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    body = hook_body(receiver.url, active=False)
    body["config"]["content_type"] = "form"  # type: ignore[index]
    hook = api.post("/repos/acme/config/hooks", json=body).json()
    api.patch(f"/repos/acme/config/hooks/{hook['id']}", json={"active": True})
    [record] = gh.push("acme", "config", "master", SHA_A, SHA_B)
    got = receiver.received[-1]
    assert got.headers["content-type"] == "application/x-www-form-urlencoded"
    assert got.body.startswith(b"payload=") and valid_signature(got.headers, got.body)
    payload = json.loads(parse_qs(got.body.decode())["payload"][0])
    assert payload["after"] == SHA_B and payload == record.payload
    json_sig = sign_sha256(SECRET, json.dumps(payload, separators=(",", ":")).encode())
    assert got.headers["x-hub-signature-256"] != json_sig


def test_no_signature_headers_without_secret(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    body = {"active": False, "config": {"url": receiver.url, "content_type": "json"}}
    hook = api.post("/repos/acme/config/hooks", json=body).json()
    api.patch(f"/repos/acme/config/hooks/{hook['id']}", json={"active": True})
    [record] = gh.push("acme", "config", "master", SHA_A, SHA_B)
    assert record.ok
    headers = receiver.received[-1].headers
    assert "x-hub-signature-256" not in headers and "x-hub-signature" not in headers


def test_push_targets_only_active_subscribed_hooks_with_one_guid(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    def make(suffix: str, events: list[str], active: bool) -> int:
        body = hook_body(f"{receiver.url}?{suffix}", events=events, active=False)
        hook_id = api.post("/repos/acme/config/hooks", json=body).json()["id"]
        api.patch(f"/repos/acme/config/hooks/{hook_id}", json={"active": active})
        return hook_id

    push_hook, star_hook = make("a", ["push"], True), make("b", ["*"], True)
    make("c", ["pull_request"], True)
    make("d", ["push"], False)
    records = gh.push("acme", "config", "master", SHA_A, SHA_B)
    assert [r.hook_id for r in records] == [push_hook, star_hook]
    assert records[0].guid == records[1].guid


def test_deleted_branch_push_has_null_head_commit(gh: GitHubEmulator) -> None:
    payload = gh.push_payload("acme", "config", "master", SHA_A, "0" * 40)
    assert payload["deleted"] is True and payload["head_commit"] is None
    assert payload["commits"] == []
    created = gh.push_payload("acme", "config", "feature", "0" * 40, SHA_B)
    assert created["created"] is True and created["ref"] == "refs/heads/feature"


def test_redeliver_keeps_guid(gh: GitHubEmulator, api: httpx.Client, receiver: Receiver) -> None:
    hook = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url, active=False)).json()
    api.patch(f"/repos/acme/config/hooks/{hook['id']}", json={"active": True})
    receiver.script.append((500, 0.0))
    [failed] = gh.push("acme", "config", "master", SHA_A, SHA_B)
    assert not failed.ok and failed.status_code == 500
    assert failed.status == "Invalid HTTP Response: 500"
    assert len(gh.deliveries) == 1  # never retried automatically
    again = gh.redeliver(failed.guid)
    assert again.ok and again.redelivery and again.guid == failed.guid
    assert receiver.received[-1].headers["x-github-delivery"] == failed.guid
    assert valid_signature(receiver.received[-1].headers, receiver.received[-1].body)

    base = f"/repos/acme/config/hooks/{hook['id']}/deliveries"
    listed = api.get(base).json()
    assert [d["guid"] for d in listed] == [failed.guid, failed.guid]
    assert listed[0]["redelivery"] is True and listed[1]["status"] == "Invalid HTTP Response: 500"
    detail = api.get(f"{base}/{failed.id}").json()
    assert detail["request"]["payload"]["after"] == SHA_B
    assert detail["response"]["payload"] == "accepted"
    assert api.post(f"{base}/{failed.id}/attempts").status_code == 202
    gh.wait_idle()
    assert gh.deliveries[-1].guid == failed.guid and gh.deliveries[-1].redelivery


def test_delivery_timeout_marks_failure(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    gh.delivery_timeout = 0.2
    hook = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url, active=False)).json()
    api.patch(f"/repos/acme/config/hooks/{hook['id']}", json={"active": True})
    receiver.script.append((200, 1.0))
    [record] = gh.push("acme", "config", "master", SHA_A, SHA_B)
    assert not record.ok and record.status_code is None and record.error == "timed out"
    assert record.duration < 0.9
    last = api.get(f"/repos/acme/config/hooks/{hook['id']}").json()["last_response"]
    assert last["status"] == "failed"


def test_tests_endpoint_resends_latest_push(
    gh: GitHubEmulator, api: httpx.Client, receiver: Receiver
) -> None:
    hook = api.post("/repos/acme/config/hooks", json=hook_body(receiver.url, active=False)).json()
    api.patch(f"/repos/acme/config/hooks/{hook['id']}", json={"active": True})
    [first] = gh.push("acme", "config", "master", SHA_A, SHA_B)
    seen = len(gh.deliveries)
    assert api.post(f"/repos/acme/config/hooks/{hook['id']}/tests").status_code == 204
    again = gh.wait_for_delivery("push", hook["id"], start=seen)
    assert again.payload["after"] == SHA_B and again.guid != first.guid


def test_deliver_raw_fault_injection(gh: GitHubEmulator, receiver: Receiver) -> None:
    payload = gh.push_payload("acme", "config", "master", SHA_A, SHA_B)
    bogus = "sha256=" + "0" * 64
    wrong = gh.deliver_raw(receiver.url, "push", payload, SECRET, signature_override=bogus)
    assert receiver.received[-1].headers["x-hub-signature-256"] == "sha256=" + "0" * 64
    gh.deliver_raw(receiver.url, "push", payload, SECRET, omit_signature=True)
    assert "x-hub-signature-256" not in receiver.received[-1].headers
    dup = gh.deliver_raw(receiver.url, "push", payload, SECRET, guid=wrong.guid, hook_id=7)
    h = receiver.received[-1].headers
    assert dup.guid == wrong.guid and h["x-github-hook-id"] == "7"
    assert h["x-github-hook-installation-target-id"] == "1234"
    assert valid_signature(h, receiver.received[-1].body)


# ------------------------------------------------------------------ statuses


def test_statuses_create_list_and_combined(gh: GitHubEmulator, api: httpx.Client) -> None:
    base = "/repos/acme/config"
    assert api.get(f"{base}/commits/{SHA_B}/status").json()["state"] == "pending"  # none yet
    created = api.post(f"{base}/statuses/{SHA_B}", json={
        "state": "pending", "context": "autodeployer/app", "description": "syncing",
        "target_url": "http://127.0.0.1/x"})
    assert created.status_code == 201 and created.headers["location"].endswith(f"/statuses/{SHA_B}")
    assert created.json()["state"] == "pending" and created.json()["context"] == "autodeployer/app"
    assert api.post(f"{base}/statuses/{SHA_B}", json={"state": "bogus"}).status_code == 422
    defaulted = api.post(f"{base}/statuses/{SHA_B}", json={"state": "success"})
    assert defaulted.json()["context"] == "default"
    assert api.get(f"{base}/commits/{SHA_B}/status").json()["state"] == "pending"
    api.post(f"{base}/statuses/{SHA_B}", json={"state": "success", "context": "autodeployer/app"})
    combined = api.get(f"{base}/commits/{SHA_B}/status").json()
    assert (combined["state"], combined["total_count"], combined["sha"]) == ("success", 2, SHA_B)
    api.post(f"{base}/statuses/{SHA_B}", json={"state": "error", "context": "other"})
    assert api.get(f"{base}/commits/{SHA_B}/status").json()["state"] == "failure"
    listed = api.get(f"{base}/commits/{SHA_B}/statuses").json()
    order = ["pending", "success", "success", "error"]
    assert [s["state"] for s in listed] == order[::-1]  # newest first
    assert [s["state"] for s in gh.statuses("acme", "config", SHA_B)] == order
    gh.set_head("acme", "config", "master", SHA_B)
    assert api.get(f"{base}/commits/master/status").json()["state"] == "failure"
    assert api.get(f"{base}/commits/nope/status").status_code == 422


def test_combined_failure_beats_pending(api: httpx.Client) -> None:
    base = "/repos/acme/config"
    api.post(f"{base}/statuses/{SHA_C}", json={"state": "pending", "context": "a"})
    api.post(f"{base}/statuses/{SHA_C}", json={"state": "failure", "context": "b"})
    assert api.get(f"{base}/commits/{SHA_C}/status").json()["state"] == "failure"


# ------------------------------------------------------------------ branch head, rate limits


def test_sha_endpoint_etag_304_and_budget(gh: GitHubEmulator, api: httpx.Client) -> None:
    path, accept = "/repos/acme/config/commits/master", {"Accept": "application/vnd.github.sha"}
    first = api.get(path, headers=accept)
    assert first.status_code == 200 and first.text == SHA_A
    assert first.headers["content-type"].startswith("text/plain")
    for name in ("limit", "remaining", "used", "reset", "resource"):
        assert f"x-ratelimit-{name}" in first.headers
    remaining = int(first.headers["x-ratelimit-remaining"])
    etag = first.headers["etag"]
    cached = api.get(path, headers={**accept, "If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    assert int(cached.headers["x-ratelimit-remaining"]) == remaining  # 304s are free
    assert api.get(path, headers={**accept, "If-None-Match": f'"{SHA_A}"'}).status_code == 304
    gh.set_head("acme", "config", "master", SHA_B)
    moved = api.get(path, headers={**accept, "If-None-Match": etag})
    assert moved.status_code == 200 and moved.text == SHA_B
    assert int(moved.headers["x-ratelimit-remaining"]) == remaining - 1
    assert api.get(path).json()["sha"] == SHA_B  # default media type: a commit object

    gh.set_rate_limit(limit=10, remaining=1)
    assert api.get(path, headers=accept).status_code == 200
    exhausted = api.get(path, headers=accept)
    assert exhausted.status_code == 403 and exhausted.headers["x-ratelimit-remaining"] == "0"
    conditional = {**accept, "If-None-Match": moved.headers["etag"]}
    assert api.get(path, headers=conditional).status_code == 304
    assert api.get("/rate_limit").json()["resources"]["core"]["remaining"] == 0


def test_forced_rate_limits_and_server_errors(gh: GitHubEmulator, api: httpx.Client) -> None:
    path = "/repos/acme/config/commits/master"
    gh.rate_limit_next(status=429, retry_after=7)
    limited = api.get(path)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert api.get(path).status_code == 200
    gh.rate_limit_next(status=403, retry_after=None)
    primary = api.get(path)
    assert primary.status_code == 403 and primary.headers["x-ratelimit-remaining"] == "0"
    assert "retry-after" not in primary.headers
    gh.fail_next(status=502, times=2)
    assert [api.get(path).status_code for _ in range(3)] == [502, 502, 200]
    assert gh.count("GET", "/repos/acme/config/commits") == 6


def test_ghes_prefix_mode(receiver: Receiver) -> None:
    gh = GitHubEmulator(token=TOKEN, api_prefix="/api/v3")
    gh.add_repo("acme", "config", repo_id=1234, default_branch="master")
    assert gh.delivery_timeout == 30.0
    with gh.serve() as server:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, headers=headers, trust_env=False) as client:
            created = client.post("/api/v3/repos/acme/config/hooks", json=hook_body(receiver.url))
            assert created.status_code == 201
            assert created.json()["url"].startswith(f"{server.url}/api/v3/repos/acme/config/hooks/")
            assert created.headers["x-github-enterprise-version"]
            assert client.get("/repos/acme/config/hooks").status_code == 404
            assert client.get("/api/v3/meta").json()["installed_version"]
        assert gh.wait_for_delivery("ping").ok
        assert gh.count("POST", "/repos/acme/config/hooks") == 1
        assert gh.count("POST", "/api/v3/repos/acme/config/hooks") == 1
        gh.wait_idle()
