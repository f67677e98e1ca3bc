"""Push webhooks of every Git host: verify, filter, de-duplicate, queue, answer at once.

The request never waits for a sync: a verified push to a followed branch only wakes the app's
worker, which resolves the branch head itself (deliveries can be late or out of order); the commit a
delivery names is only fetched ahead of that head check (headstart.py).

The host is recognised from the headers (`providers.recognise`) or named by the path
(`/webhook/<provider>`; Bitbucket Cloud only at `/webhook/bitbucket/<path token>`). Every host gets
the same limits: body size, read timeout, the byte budget, replay de-duplication by delivery id,
202 before any sync. GitHub's handling (a delivery with no other host's headers) is unchanged;
other hosts' payloads go through their provider's `parse`.
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

from ..headstart import commit_hint
from ..logs import get_logger
from ..model import Trigger
from ..previews import PreviewService
from ..providers import PROVIDERS, Provider, recognise
from ..providers.base import Ignored, Malformed, Parsed, Ping, token_matches
from ..providers.bitbucket import BitbucketCloudProvider, cloud_path_token
from ..reviews import ReviewDelivery
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
        provider = self._provider(request)
        if provider is None or provider.name != "github":
            return await self._handle_other(request, provider)
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

    def _provider(self, request: Request) -> Provider | None:
        """The host named by the path, else recognised from the headers, else GitHub (as before);
        None for a path naming no host."""
        token = request.path_params.get("token")
        if token is not None:
            return BitbucketCloudProvider(str(token))
        named = request.path_params.get("provider")
        if named is not None:
            return next((p for name, p in PROVIDERS.items() if name == str(named).lower()), None)
        return recognise(request.headers) or PROVIDERS["github"]

    async def _handle_other(self, request: Request, provider: Provider | None) -> Response:
        """A delivery of GitLab, Gitea/Forgejo or Bitbucket: same limits and answers as GitHub's;
        logged with the host's event and delivery id, and never the path token of Bitbucket Cloud."""
        event, delivery = "", ""
        if provider is None:
            named = request.path_params.get("provider")
            verdict = Verdict(404, "unknown-provider",
                              {"error": f"no Git host is called {named!r}; expected one of {', '.join(PROVIDERS)}"})
        else:
            event, delivery = provider.event(request.headers), provider.delivery_key(request.headers)[1]
            verdict = await self._verdict(request, event, provider)
        self._observe(event or "unknown", verdict.result)
        log = self._log.warning if verdict.status == 401 else self._log.info
        path = request.url.path
        if "token" in request.path_params:
            path = path.rsplit("/", 1)[0] + "/<token>"
        reason = (verdict.body or {}).get("reason")
        log("webhook delivery", path=path, provider=provider.name if provider else None, host_event=event or None,
            delivery=delivery or None, result=verdict.result, status=verdict.status,
            **({"reason": reason} if reason else {}))
        if verdict.status == 204:
            return Response(status_code=204)
        return JSONResponse(verdict.body or {"result": verdict.result}, status_code=verdict.status)

    def _authorised(self, request: Request, provider: Provider) -> bool | None:
        """For a host that sends a token instead of a signature: whether it matches (constant time);
        None for a host that signs the body (checked while it streams in)."""
        given = provider.token(request.headers)
        if given is None:
            return None
        accepted = ([cloud_path_token(secret) for secret in self._secrets]
                    if isinstance(provider, BitbucketCloudProvider) else self._secrets)
        return token_matches(given, accepted)

    async def _read(self, request: Request, header: str | None = None, *,
                    authorised: bool | None = None) -> bytes | bytearray | None:
        """The raw body, capped and within the read timeout, if its signature matches (or, for a
        token-authenticated host, `authorised` says its token did); None if not."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge
        signed = (header or "").startswith("sha256=") if authorised is None else authorised
        if not signed:
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
            return await self._read_signed(request, header, length, trusted=authorised is True)

    async def _read_signed(self, request: Request, header: str | None, length: int | None, *,
                           trusted: bool = False) -> bytes | bytearray | None:
        """A signature can only be checked over the whole body, so a signed one is read whole, but never
        copied: a declared length is allocated once and filled in place; the chunks of an undeclared one
        are joined only once verified. One bad body costs its own size, bounded by the byte budget.
        `trusted`: the sender's token was already checked, there is no signature to compute."""
        check = SignatureCheck([] if trusted else self._secrets)
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
            return body if trusted or check.matches(header) else None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge
            chunks.append(chunk)
            check.update(chunk)
        return b"".join(chunks) if trusted or check.matches(header) else None

    async def _verdict(self, request: Request, event: str, provider: Provider | None = None) -> Verdict:
        """`provider` None: GitHub, exactly as always; else that host's headers, auth and parser."""
        header = request.headers.get("x-hub-signature-256") if provider is None else provider.signature(request.headers)
        authorised = None if provider is None else self._authorised(request, provider)
        try:
            body = await self._read(request, header, authorised=authorised)
        except TimeoutError:
            return Verdict(408, "too-slow", {"error": f"body not received within {self._read_timeout:g} s"})
        except BodyTooLarge:
            return Verdict(413, "too-large", {"error": "payload too large"})
        except ClientDisconnect:
            return Verdict(400, "disconnected", {"error": "client disconnected"})
        if body is None:
            what = "signature" if authorised is None else "token"
            return Verdict(401, "unauthorized", {"error": f"invalid or missing {what}"})
        payload = _decode(request.headers.get("content-type", ""), body)
        if isinstance(payload, Verdict):
            return payload
        if not event:
            header_name = EVENT_HEADERS[provider.name if provider else "github"]
            return Verdict(400, "bad-request", {"error": f"missing {header_name} header"})
        if provider is None:
            key = (request.headers.get("x-github-hook-id", ""), request.headers.get("x-github-delivery", ""))
        else:
            hook, delivery = provider.delivery_key(request.headers)
            key = (f"{provider.name}:{hook}", delivery)
        if key[1] and key in self._seen:
            return Verdict(200, "duplicate", {"result": "duplicate delivery ignored"})
        if provider is None:
            verdict = self._dispatch(event, payload)
        else:
            verdict = self._dispatch_parsed(provider.name, provider.parse(event, payload))
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
        # fetched while the head is checked, never trusted as it (a tag's `after` may name the tag object)
        hint = None if ref.startswith("refs/tags/") else commit_hint(payload.get("after"))
        for app in apps:
            self._scheduler.trigger(app, Trigger.WEBHOOK, hint)
        return Verdict(202, "accepted", {"result": "queued", "apps": apps})

    def _dispatch_parsed(self, provider: str, parsed: Parsed) -> Verdict:
        """Wake the apps of this host that follow a pushed ref; say why when there are none."""
        if isinstance(parsed, Ping):
            return Verdict(200, "ping", {"result": "pong"})
        if isinstance(parsed, Ignored):
            return Verdict(202, "ignored", {"result": "ignored", "reason": parsed.reason})
        if isinstance(parsed, Malformed):
            return Verdict(400, "bad-request", {"error": parsed.reason})
        if isinstance(parsed, ReviewDelivery):
            return self._review(parsed)
        apps: list[str] = []
        reasons: list[str] = []
        hints: dict[str, str | None] = {}
        for push in parsed:
            branch = push.ref if push.ref.startswith("refs/tags/") else push.ref.removeprefix("refs/heads/")
            if push.deleted:
                reasons.append(f"{push.repository}@{branch} deleted")
                continue
            found = [app for app in self._scheduler.apps_following(push.repository, branch)
                     if self._provider_of(app) == provider and app not in apps]
            if not found:
                reasons.append(f"no {provider} app follows {push.repository}@{branch}")
            hint = None if push.ref.startswith("refs/tags/") else commit_hint(push.after)
            hints.update((app, hint) for app in found)
            apps += found
        if not apps:
            return Verdict(202, "ignored", {"result": "ignored", "reason": "; ".join(reasons)})
        for app in apps:
            self._scheduler.trigger(app, Trigger.WEBHOOK, hints.get(app))
        return Verdict(202, "accepted", {"result": "queued", "apps": apps})

    def _review(self, parsed: ReviewDelivery) -> Verdict:
        """A merge request of another host: to the preview service when previews are on."""
        if self._previews is None:
            return Verdict(202, "ignored", {"result": "ignored",
                                            "reason": "merge request events are used by previews only (PREVIEWS=true)"})
        if parsed.event is None:
            return Verdict(400, "bad-request", {"error": parsed.problem or "malformed merge request payload"})
        seen = self._previews.submit(parsed.event)
        return Verdict(seen.status, seen.result, seen.body)

    def _provider_of(self, app: str) -> str | None:
        """The app's Git host (a delivery from another host never syncs it, even with the same path)."""
        worker = self._scheduler.workers.get(app)
        return worker.reconciler.app.source.provider if worker else None


#: The header naming the event, per host (for the "missing ... header" answer).
EVENT_HEADERS = {"github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event", "gitea": "X-Gitea-Event",
                 "bitbucket": "X-Event-Key"}


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
