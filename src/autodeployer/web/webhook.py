"""GitHub push webhooks: verify, filter, de-duplicate, queue, answer at once.

The request never waits for a sync: a verified push to a followed branch only wakes the app's
worker, which resolves the branch head itself (deliveries can be late or out of order).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..logs import get_logger
from ..model import Trigger
from ..previews import PreviewService
from ..scheduling import Scheduler

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
READ_TIMEOUT = 30.0  # GitHub gives up on a delivery after 10 s; a sender this slow is not GitHub
# Bytes of signed-but-unverified bodies buffered at once, whatever a sender's concurrency: one body of
# the largest size plus 1 MB, so two large bodies are never held together (each is read whole before
# its signature can be checked), while small ones (a push is a few kB) never wait behind a large one.
READ_BUDGET = MAX_BODY + 1024 * 1024
SECRET_FILE = "webhook-secret"


class BodyTooLarge(Exception):
    pass


class ByteBudget:
    """At most `limit` bytes reserved at once; a reservation waits until it fits (first fit, so small
    reservations pass a large one that is waiting). Released synchronously: cancellation cannot leak."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        amount = max(0, min(amount, self.limit))
        while self.used + amount > self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self.used += amount
        try:
            yield
        finally:
            self.used -= amount
            for waiter in self._waiters:  # each one checks again whether it fits now
                if not waiter.done():
                    waiter.set_result(None)


def sign(secret: str, body: bytes | bytearray) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class SignatureCheck:
    """X-Hub-Signature-256 computed while the body streams in, for each accepted secret, so a body whose
    signature is wrong is refused without ever being joined into one buffer."""

    def __init__(self, secrets_: Sequence[str]) -> None:
        self._macs = [hmac.new(secret.encode(), digestmod=hashlib.sha256) for secret in secrets_]

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def matches(self, header: str | None) -> bool:
        if not header or not header.startswith("sha256=") or len(header) != 71:
            return False
        matched = False
        for mac in self._macs:
            # no early exit: every secret is compared, so timing says nothing about which one matched
            matched |= hmac.compare_digest(header.encode(), ("sha256=" + mac.hexdigest()).encode())
        return matched


def signature_valid(header: str | None, body: bytes | bytearray, secrets_: Sequence[str]) -> bool:
    """Constant-time check of X-Hub-Signature-256 against each accepted secret."""
    check = SignatureCheck(secrets_)
    check.update(body)
    return check.matches(header)


def load_or_create_secret(state_dir: Path) -> str:
    """A strong secret kept in STATE_DIR (owner-only) and reused across restarts."""
    directory = state_dir / "secrets"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SECRET_FILE
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)
    return value


class SeenDeliveries:
    """Bounded memory of accepted (hook id, delivery GUID) pairs."""

    def __init__(self, size: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._size = size

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def add(self, key: tuple[str, str]) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)


@dataclass
class Verdict:
    status: int
    result: str  # for metrics and logs: accepted, ignored, duplicate, ping, unauthorized, ...
    body: dict[str, Any] | None = None


DeliveryObserver = Callable[[str, str], None]  # (event, result)


class WebhookReceiver:
    def __init__(
        self,
        secrets_: Sequence[str],
        scheduler: Scheduler,
        *,
        observer: DeliveryObserver | None = None,
        max_body: int = MAX_BODY,
        read_timeout: float = READ_TIMEOUT,
        previews: PreviewService | None = None,
    ) -> None:
        if not secrets_:
            raise ValueError("a webhook secret is required; there is no unsigned mode")
        self._secrets = list(secrets_)
        self._scheduler = scheduler
        self._seen = SeenDeliveries()
        self._observe = observer or (lambda event, result: None)
        self._max_body = max_body
        self._read_timeout = read_timeout
        self._reading = ByteBudget(max(READ_BUDGET, max_body))
        self._log = get_logger(component="webhook")
        self._previews = previews  # pull_request deliveries go there (PREVIEWS=true)

    async def handle(self, request: Request) -> Response:
        event = request.headers.get("x-github-event", "")
        verdict = await self._verdict(request, event)
        self._observe(event or "unknown", verdict.result)
        # A refused signature is someone probing the endpoint or a secret out of step (e.g. another
        # STATE_DIR registered the hook): worth a warning. Neither the header nor the secret is logged.
        log = self._log.warning if verdict.status == 401 else self._log.info
        log(
            "webhook delivery",
            path=request.url.path,
            github_event=event or None,
            delivery=request.headers.get("x-github-delivery"),
            result=verdict.result,
            status=verdict.status,
        )
        if verdict.status == 204:
            return Response(status_code=204)
        return JSONResponse(verdict.body or {"result": verdict.result}, status_code=verdict.status)

    async def _read(self, request: Request) -> bytes | bytearray | None:
        """The raw body, capped and within the read timeout, if its signature matches; None if not."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge
        header = request.headers.get("x-hub-signature-256")
        if not (header or "").startswith("sha256="):
            size = 0  # will be refused as unsigned: count it (for 413) but never buffer it
            async with asyncio.timeout(self._read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self._max_body:
                        raise BodyTooLarge
            return None
        length = int(declared) if declared and declared.isdigit() else None
        async with asyncio.timeout(self._read_timeout) as deadline, self._reading.hold(length or self._max_body):
            # Waiting for room and reading each get the full timeout: a trickling sender holds the room
            # for one timeout at most, and the body queued behind it still has time to arrive.
            deadline.reschedule(asyncio.get_running_loop().time() + self._read_timeout)
            return await self._read_signed(request, header, length)

    async def _read_signed(self, request: Request, header: str | None, length: int | None) -> bytes | bytearray | None:
        """A signature can only be checked over the whole body, so a signed one is read whole, but never
        copied: a declared length is allocated once and filled in place; the chunks of an undeclared one
        are joined only once verified. One bad body costs its own size, bounded by the byte budget."""
        check = SignatureCheck(self._secrets)
        if length is not None:
            body = bytearray(length)
            view, size = memoryview(body), 0
            async for chunk in request.stream():
                if size + len(chunk) > length:
                    raise BodyTooLarge
                view[size:size + len(chunk)] = chunk
                size += len(chunk)
                check.update(chunk)
            view.release()
            del body[size:]  # a body shorter than declared (the server normally refuses it first)
            return body if check.matches(header) else None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge
            chunks.append(chunk)
            check.update(chunk)
        return b"".join(chunks) if check.matches(header) else None

    async def _verdict(self, request: Request, event: str) -> Verdict:
        try:
            body = await self._read(request)
        except TimeoutError:
            return Verdict(408, "too-slow", {"error": f"body not received within {self._read_timeout:g} s"})
        except BodyTooLarge:
            return Verdict(413, "too-large", {"error": "payload too large"})
        except ClientDisconnect:
            return Verdict(400, "disconnected", {"error": "client disconnected"})
        if body is None:
            return Verdict(401, "unauthorized", {"error": "invalid or missing signature"})
        payload = _decode(request.headers.get("content-type", ""), body)
        if isinstance(payload, Verdict):
            return payload
        if not event:
            return Verdict(400, "bad-request", {"error": "missing X-GitHub-Event header"})
        key = (request.headers.get("x-github-hook-id", ""), request.headers.get("x-github-delivery", ""))
        if key[1] and key in self._seen:
            return Verdict(200, "duplicate", {"result": "duplicate delivery ignored"})
        verdict = self._dispatch(event, payload)
        if key[1] and verdict.status < 400:
            self._seen.add(key)  # only accepted deliveries: a refused one may be redelivered
        return verdict

    def _dispatch(self, event: str, payload: dict[str, Any]) -> Verdict:
        if event == "ping":
            return Verdict(200, "ping", {"result": "pong"})
        if event == "pull_request" and self._previews is not None:
            seen = self._previews.receive(payload)
            return Verdict(seen.status, seen.result, seen.body)
        if event != "push":
            return Verdict(204, "ignored-event")
        ref = payload.get("ref")
        repository = payload.get("repository")
        repo = repository.get("full_name") if isinstance(repository, dict) else None
        if not isinstance(ref, str) or not isinstance(repo, str):
            return Verdict(400, "bad-request", {"error": "push payload without ref or repository.full_name"})
        if payload.get("deleted"):
            return Verdict(202, "ignored", {"result": "ignored", "reason": "branch deleted"})
        if ref.startswith("refs/tags/"):
            branch = ref  # apps following a tag (TAG) are matched on the full ref
        elif ref.startswith("refs/heads/"):
            branch = ref.removeprefix("refs/heads/")
        else:
            return Verdict(202, "ignored", {"result": "ignored", "reason": f"not a branch or tag: {ref}"})
        apps = self._scheduler.apps_following(repo, branch)
        if not apps:
            return Verdict(202, "ignored", {"result": "ignored", "reason": f"no app follows {repo}@{branch}"})
        for app in apps:
            self._scheduler.trigger(app, Trigger.WEBHOOK)
        return Verdict(202, "accepted", {"result": "queued", "apps": apps})


def _decode(content_type: str, body: bytes | bytearray) -> dict[str, Any] | Verdict:
    media = content_type.split(";")[0].strip().lower()
    try:
        if media == "application/json":
            payload = json.loads(body)
        elif media == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
            if "payload" not in fields:
                return Verdict(400, "bad-request", {"error": "form delivery without a payload field"})
            payload = json.loads(fields["payload"][0])
        else:
            return Verdict(415, "unsupported-media-type", {"error": f"unsupported content type {media or 'none'}"})
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Verdict(400, "bad-request", {"error": "malformed payload"})
    if not isinstance(payload, dict):
        return Verdict(400, "bad-request", {"error": "payload is not a JSON object"})
    return payload
