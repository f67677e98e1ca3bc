"""Outgoing webhook deliveries, sent the way GitHub sends them.

The one thing the emulated GitHub does on its own: POST a payload to a hook's URL (JSON or form
body, HMAC over the exact bytes, no automatic retries) and record the attempt for the deliveries
API. Kept apart from the routes because tests trigger it in-process too (``push()``, ``ping()``).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from autodeployer_emulators.github.state import (
    _SHA_RE,
    MAX_PAYLOAD_BYTES,
    ZENS,
    ZERO_SHA,
    DeliveryRecord,
    GitHubState,
    Hook,
    RepoState,
    _iso,
    _Outgoing,
    _subscribed,
    _synthetic_commit,
    encode_body,
    sign_sha1,
    sign_sha256,
)


class GitHubDelivery(GitHubState):
    """Webhook deliveries on top of :class:`GitHubState`."""

    # ---------------------------------------------------------------- building deliveries

    def _ping_outgoing(self, root: str, repo: RepoState, hook: Hook) -> _Outgoing:
        api, web = root + self.api_prefix, self._web_url(root)
        payload = {
            "zen": secrets.choice(ZENS),
            "hook_id": hook.id,
            "hook": self._hook_json(api, repo, hook),
            "repository": self._repo_json(root, repo),
            "sender": self._user_json(api, web, repo.owner),
        }
        return self._hook_outgoing(repo, hook, "ping", payload, str(uuid.uuid4()))

    def _hook_outgoing(
        self, repo: RepoState, hook: Hook, event: str, payload: dict[str, Any], guid: str
    ) -> _Outgoing:
        return self._outgoing(
            url=hook.config["url"],
            event=event,
            payload=payload,
            secret=hook.config.get("secret"),
            content_type=hook.config["content_type"],
            guid=guid,
            hook_id=hook.id,
            target_id=repo.id,
            verify_tls=hook.config["insecure_ssl"] == "0",
        )

    def _outgoing(
        self,
        *,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: str | None,
        content_type: str,
        guid: str,
        hook_id: int | None,
        target_id: int | None,
        verify_tls: bool = True,
        signature_override: str | None = None,
        omit_signature: bool = False,
    ) -> _Outgoing:
        """Section 4 headers; signatures are computed over the exact body bytes that are sent."""
        body, mime = encode_body(payload, content_type)
        if len(body) > MAX_PAYLOAD_BYTES:
            raise ValueError("webhook payloads are capped at 25 MB")
        headers = {
            "Accept": "*/*",
            "Content-Type": mime,
            "User-Agent": f"GitHub-Hookshot/{self._hookshot}",
            "X-GitHub-Delivery": guid,
            "X-GitHub-Event": event,
        }
        if hook_id is not None:
            headers["X-GitHub-Hook-ID"] = str(hook_id)
            headers["X-GitHub-Hook-Installation-Target-Type"] = "repository"
        if target_id is not None:
            headers["X-GitHub-Hook-Installation-Target-ID"] = str(target_id)
        if not omit_signature:
            if secret:
                headers["X-Hub-Signature"] = sign_sha1(secret, body)
                headers["X-Hub-Signature-256"] = sign_sha256(secret, body)
            if signature_override is not None:
                headers["X-Hub-Signature-256"] = signature_override
        return _Outgoing(url, event, guid, hook_id, target_id, headers, body, payload, verify_tls)

    def _redelivery_outgoing(self, record: DeliveryRecord) -> _Outgoing:
        """Same GUID and payload; re-signed with the hook's current config if the hook still exists,
        otherwise the recorded request is replayed byte for byte."""
        key = self._hook_repo.get(record.hook_id) if record.hook_id is not None else None
        if key is not None:
            repo = self._repos[key]
            hook = repo.hooks[record.hook_id or 0]
            return self._hook_outgoing(repo, hook, record.event, record.payload, record.guid)
        transport = ("host", "content-length", "connection", "accept-encoding")
        headers = {k: v for k, v in record.request_headers.items() if k.lower() not in transport}
        return _Outgoing(
            record.url, record.event, record.guid, record.hook_id, record.repository_id,
            headers, record.request_body, record.payload,
        )

    # ---------------------------------------------------------------- sending

    def _spawn(self, outgoing: _Outgoing, redelivery: bool = False) -> None:
        """Deliver in the background so the triggering HTTP response is not held up."""
        thread = threading.Thread(
            target=self._send, args=(outgoing, redelivery), name="gh-delivery", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _send(self, out: _Outgoing, redelivery: bool = False) -> DeliveryRecord:
        """One POST, never retried; anything but a 2xx within the timeout is a failure."""
        timeout = self.delivery_timeout
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        request_headers = dict(out.headers)
        response_headers: dict[str, str] = {}
        response_body = b""
        try:
            with httpx.Client(timeout=timeout, trust_env=False, verify=out.verify_tls,
                              follow_redirects=False) as client:
                request = client.build_request(
                    "POST", out.url, headers=out.headers, content=out.body
                )
                request_headers = {k.decode(): v.decode() for k, v in request.headers.raw}
                response = client.send(request)
                status_code = response.status_code
                response_headers = dict(response.headers)
                response_body = response.content[:65536]
        except httpx.TimeoutException:
            error = "timed out"
        except httpx.HTTPError as exc:
            error = f"We couldn't deliver this payload: {type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        if error is None and duration > timeout:
            error = "timed out"
        return self._record(out, redelivery, status_code, duration, error,
                            request_headers, response_headers, response_body)

    def _record(
        self,
        out: _Outgoing,
        redelivery: bool,
        status_code: int | None,
        duration: float,
        error: str | None,
        request_headers: dict[str, str],
        response_headers: dict[str, str],
        response_body: bytes,
    ) -> DeliveryRecord:
        with self._cond:
            record = DeliveryRecord(
                id=self._next_delivery_id,
                guid=out.guid,
                event=out.event,
                hook_id=out.hook_id,
                repository_id=out.target_id,
                url=out.url,
                status_code=status_code,
                duration=duration,
                error=error,
                request_headers=request_headers,
                request_body=out.body,
                response_headers=response_headers,
                response_body=response_body,
                payload=out.payload,
                delivered_at=_iso(),
                redelivery=redelivery,
            )
            self._next_delivery_id += 1
            self._deliveries.append(record)
            self._update_last_response(record)
            self._cond.notify_all()
            return record

    def _update_last_response(self, record: DeliveryRecord) -> None:
        key = self._hook_repo.get(record.hook_id) if record.hook_id is not None else None
        hook = self._repos[key].hooks.get(record.hook_id or 0) if key else None
        if hook is None:
            return
        if record.ok:
            hook.last_response = {"code": record.status_code, "status": "active", "message": "OK"}
        else:
            hook.last_response = {
                "code": record.status_code,
                "status": "failed",
                "message": record.status,
            }

    # ---------------------------------------------------------------- test-side deliveries

    def push_payload(
        self,
        owner: str,
        repo: str,
        ref: str,
        before: str,
        after: str,
        commits: list[dict[str, Any]] | None = None,
        deleted: bool = False,
        created: bool = False,
        forced: bool = False,
        pusher: str | None = None,
    ) -> dict[str, Any]:
        """Build a section 5.2 push payload without delivering it (for out-of-order tests).

        ``ref`` may be a bare branch name. ``created``/``deleted`` are also implied by a zero
        ``before``/``after``. Without ``commits`` one synthetic commit for ``after`` is used.
        """
        with self._lock:
            state = self._repo(owner, repo)
            root, login = self.base_url, pusher or state.owner
            api, web = root + self.api_prefix, self._web_url(root)
            html = f"{web}/{state.full_name}"
            ref = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
            deleted = deleted or after == ZERO_SHA
            created = created or before == ZERO_SHA
            if commits is None:
                commits = [] if deleted else [{"id": after}]
            full = [self._commit_json(html, login, c) for c in commits]
            head = full[-1] if full else None
            if head is None and not deleted:
                head = self._commit_json(html, login, {"id": after})
            state.pushed_at = time.time()
            return {
                "ref": ref,
                "before": before,
                "after": after,
                "repository": self._repo_json(root, state, push_style=True),
                "pusher": {"name": login, "email": f"{login}@users.noreply.github.com"},
                "sender": self._user_json(api, web, login),
                "created": created,
                "deleted": deleted,
                "forced": forced,
                "base_ref": None,
                "compare": f"{html}/compare/{before[:12]}...{after[:12]}",
                "commits": full,
                "head_commit": head,
            }

    @staticmethod
    def _commit_json(html: str, login: str, commit: Mapping[str, Any]) -> dict[str, Any]:
        sha = commit["id"]
        now = datetime.now(UTC).isoformat(timespec="seconds")
        person = {"name": login, "email": f"{login}@users.noreply.github.com", "username": login}
        return {
            "id": sha,
            "tree_id": commit.get("tree_id", hashlib.sha1(f"tree-{sha}".encode()).hexdigest()),
            "distinct": commit.get("distinct", True),
            "message": commit.get("message", "Update configuration"),
            "timestamp": commit.get("timestamp", now),
            "url": f"{html}/commit/{sha}",
            "author": {**person, **commit.get("author", {})},
            "committer": {**person, **commit.get("committer", {})},
            "added": list(commit.get("added", [])),
            "removed": list(commit.get("removed", [])),
            "modified": list(commit.get("modified", [])),
        }

    def push(
        self,
        owner: str,
        repo: str,
        ref: str,
        before: str,
        after: str,
        commits: list[dict[str, Any]] | None = None,
        deleted: bool = False,
        created: bool = False,
        forced: bool = False,
        pusher: str | None = None,
    ) -> list[DeliveryRecord]:
        """Simulate a push: deliver one event (one GUID) synchronously to every active hook
        subscribed to ``push`` or ``*``. Branch heads are not changed; use :meth:`set_head`."""
        payload = self.push_payload(
            owner, repo, ref, before, after, commits, deleted, created, forced, pusher
        )
        guid = str(uuid.uuid4())
        with self._lock:
            state = self._repo(owner, repo)
            state.last_push = payload
            for commit in payload["commits"]:
                sha = str(commit["id"]).lower()
                if _SHA_RE.match(sha) and self._commit(state, sha) is None:
                    state.commits[sha] = _synthetic_commit(state.owner, sha, commit["message"])
            targets = [
                self._hook_outgoing(state, h, "push", payload, guid)
                for h in sorted(state.hooks.values(), key=lambda h: h.id)
                if h.active and _subscribed(h.events, "push")
            ]
        return [self._send(out) for out in targets]

    def ping(self, owner: str, repo: str, hook_id: int) -> DeliveryRecord:
        """Send a ``ping`` to one hook synchronously (``/pings`` over HTTP sends in background)."""
        with self._lock:
            state = self._repo(owner, repo)
            out = self._ping_outgoing(self.base_url, state, state.hooks[hook_id])
        return self._send(out)

    def deliver_raw(
        self,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: str | None,
        content_type: str = "json",
        guid: str | None = None,
        signature_override: str | None = None,
        omit_signature: bool = False,
        *,
        hook_id: int | None = None,
        target_id: int | None = None,
    ) -> DeliveryRecord:
        """Deliver an arbitrary event for fault injection (bad/missing signature, reused GUID, stale
        payloads). ``hook_id`` defaults to a stored hook with this URL, else the payload's
        ``hook_id``; ``target_id`` defaults to ``payload["repository"]["id"]``."""
        with self._lock:
            if hook_id is None:
                hooks = (h for s in self._repos.values() for h in s.hooks.values())
                by_url = (h.id for h in hooks if h.config["url"] == url)
                hook_id = next(by_url, payload.get("hook_id"))
            repository = payload.get("repository")
            if target_id is None and isinstance(repository, dict):
                target_id = repository.get("id")
        out = self._outgoing(
            url=url,
            event=event,
            payload=payload,
            secret=secret,
            content_type=content_type,
            guid=guid or str(uuid.uuid4()),
            hook_id=hook_id,
            target_id=target_id,
            signature_override=signature_override,
            omit_signature=omit_signature,
        )
        return self._send(out)

    def redeliver(self, guid: str, hook_id: int | None = None) -> DeliveryRecord:
        """Re-send the most recent delivery with this GUID (and hook), keeping the GUID."""
        with self._lock:
            record = next(
                (d for d in reversed(self._deliveries)
                 if d.guid == guid and (hook_id is None or d.hook_id == hook_id)),
                None,
            )
            if record is None:
                raise KeyError(f"no delivery with GUID {guid}")
            out = self._redelivery_outgoing(record)
        return self._send(out, redelivery=True)

