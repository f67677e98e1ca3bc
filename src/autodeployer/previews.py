"""Pull-request previews: the plan of a PR's merge result against the live target, where reviewers look.

A signed `pull_request` delivery (or, with webhooks off, the poll of open pull requests) for a PR into
an app's branch queues a preview. The preview service plans `refs/pull/N/merge` with `plans.py`: it
writes nothing to the target or the store and takes neither the app's worker nor its apply lock, so a
long plan never delays a deploy. It runs on its own task; per pull request only the newest head is
planned (events arriving meanwhile collapse into one) and at most once per `min_interval`.

The outcome goes to one comment per app on the PR, found again by a hidden marker and edited in place,
and to a commit status `autodeployer/<app>/plan` on the PR's head. GitHub failing to take either is
logged and recorded on the preview; the deploy path never sees it. After a sync changed an app's
target, its open previews are planned again against the new live state (this class is a Reporter).

The host is behind `reviews.ReviewsClient`: GitHub's pull requests (`pull_requests.py`) and GitLab's
merge requests (`providers/gitlab_reviews.py`, a note instead of a comment, `refs/merge-requests/<iid>/
merge`, and the head planned alone, said so in the note, when GitLab has no merge ref for it), Gitea's
and Forgejo's pull requests (`providers/gitea_reviews.py`: no test merge there, so the head is always
planned alone and the comment says so) and Bitbucket Server's (`providers/bitbucket_reviews.py`,
`refs/pull-requests/<id>/merge`, the head `/from` when Bitbucket has no merge for it).
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config.loader import AppConfig
from .errors import AutodeployerError
from .hooks import client_for
from .logs import get_logger
from .model import CommitInfo, Reason, Result, SyncResult, Trigger
from .plans import PlanReport, plan_revision
from .providers import provider_client_for
from .providers.bitbucket import BitbucketServerClient
from .providers.bitbucket_reviews import BitbucketReviewsClient
from .providers.gitea import GiteaClient
from .providers.gitea_reviews import GiteaReviewsClient
from .providers.gitlab import GitLabClient
from .providers.gitlab_reviews import GitLabReviewsClient
from .pull_requests import PullRequestsClient
from .reconcile import Reconciler
from .reviews import OpenPull, PullRequestEvent, ReviewsClient
from .runtime import Runtime
from .store import Store

PLANNED_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})
COMMENT_DIFF_LIMIT = 20000  # characters of diff in a comment; the rest is on the status page
MAX_PROBLEMS = 20  # problems listed in a comment of a refused plan
MIN_INTERVAL = 0.5  # seconds between two plans of the same pull request
MERGE_WAIT = (0.5, 1.0, 2.0, 4.0)  # GitHub computes the test merge after a push: waits while it is unknown
_HEAD_ALONE = ("The merge request {why}: its head is planned alone, not the merge result, so changes on the "
               "target branch since it forked are not in this plan.")
_NO_TEST_MERGE = ("{host} makes no test merge of a pull request: its head is planned alone, not the merge result, "
                  "so changes on the target branch since it forked are not in this plan.")


def marker(app: str) -> str:
    """The hidden line that identifies our comment for `app` (never the author alone: tokens are shared)."""
    return f"<!-- autodeployer:plan app={app} -->"


@dataclass
class Preview:
    """The newest preview of one pull request for one app, as the status page and the API show it."""

    app: str
    number: int
    head_sha: str
    is_fork: bool = False
    revision: str = ""  # the merge commit planned
    live_revision: str | None = None
    summary: str = "queued"
    state: str = "pending"  # success (deployable) or failure (would be refused, or cannot be planned)
    reason: str | None = None
    exit_code: int | None = None
    plan_text: str = ""
    planned_at: float | None = None
    duration: float | None = None
    comment_id: int | None = None
    comment_error: str | None = None
    status_error: str | None = None
    problems: list[str] = field(default_factory=list)  # what a refusal names (file, entity, message)
    published_at: float | None = None  # when GitHub was last told (or failed to be told) about this plan
    note: str | None = None  # what was planned instead of the host's test merge, and why (GitLab conflicts)
    provider: str = "github"

    @property
    def label(self) -> str:
        """How the host itself writes the reference: GitLab's merge requests are !N, pull requests #N."""
        return f"!{self.number}" if self.provider == "gitlab" else f"#{self.number}"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preview:
        """A preview as `to_json` wrote it (the store keeps them so); KeyError or TypeError when it is not one."""
        fields = {**{k: v for k, v in data.items() if k in _STORED}, "is_fork": bool(data.get("fork")),
                  "plan_text": str(data.get("plan") or "")}
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app, "number": self.number, "head_sha": self.head_sha, "fork": self.is_fork,
            "revision": self.revision, "live_revision": self.live_revision, "summary": self.summary,
            "state": self.state, "reason": self.reason, "exit_code": self.exit_code, "planned_at": self.planned_at,
            "published_at": self.published_at,
            "duration": self.duration, "comment_id": self.comment_id, "comment_error": self.comment_error,
            "status_error": self.status_error, "plan": self.plan_text, "problems": self.problems,
            "note": self.note, "provider": self.provider, "label": self.label,
        }


_STORED = frozenset({"app", "number", "head_sha", "revision", "live_revision", "summary", "state", "reason",
                     "exit_code", "planned_at", "duration", "comment_id", "comment_error", "status_error", "problems",
                     "published_at", "note", "provider"})


@dataclass(frozen=True)
class Verdict:
    """What the webhook answers for a delivery the preview service looked at."""

    status: int
    result: str
    body: dict[str, Any]


class PreviewService:
    """Plans pull requests on its own queue; see the module's docstring."""

    def __init__(
        self,
        reconcilers: Mapping[str, Reconciler],
        clients: Mapping[str, ReviewsClient | None],
        *,
        forks: bool = False,
        public_url: str | None = None,
        min_interval: float = MIN_INTERVAL,
        merge_wait: tuple[float, ...] = MERGE_WAIT,
        store: Store | None = None,
    ) -> None:
        self._reconcilers = dict(reconcilers)
        self._clients = dict(clients)
        self._forks = forks
        self._public_url = public_url
        self._min_interval = min_interval
        self._merge_wait = merge_wait
        self._previews: dict[tuple[str, int], Preview] = {}
        self._pending: dict[tuple[str, int], PullRequestEvent] = {}
        self._queue: asyncio.Queue[tuple[str, int]] | None = None
        self._last_run: dict[tuple[str, int], float] = {}
        self._idle = asyncio.Event()
        self._log = get_logger(component="previews")
        self._store = store
        self._unsaved: set[tuple[str, int]] = set()  # newer here than in the store: queued, being planned, refused

    # ------------------------------------------------------------------ the store
    # Previews are kept in the store (its `previews` table): they outlive a restart (the next deploy re-plans
    # them, as before it) and replicas sharing PostgreSQL show each other's. The service's own copies are the
    # ones it is working on; the store is what every replica shows once a preview is planned.
    def load(self) -> int:
        """Take the previews the store kept (at start); how many. A store that cannot be read: none."""
        loaded = 0
        for app in self._reconcilers:
            for preview in self._stored(app):
                self._previews.setdefault((app, preview.number), preview)
                loaded += 1
        return loaded

    def _stored(self, app: str) -> list[Preview]:
        """The app's previews in the store; none when it cannot be read, and one that is not readable skipped."""
        if self._store is None:
            return []
        try:
            rows = self._store.previews(app)
        except Exception as exc:  # sqlite3 or psycopg errors, StoreUnavailable: previews are not worth a failure
            self._log.warning("stored previews not read", app=app, error=f"{type(exc).__name__}: {exc}")
            return []
        found = []
        for data in rows:
            try:
                found.append(Preview.from_json(data))
            except (KeyError, TypeError, ValueError) as exc:
                self._log.warning("a stored preview is not readable; skipped", app=app, error=str(exc))
        return found

    def _save(self, preview: Preview) -> None:
        key = (preview.app, preview.number)
        if self._store is None:
            return
        try:
            self._store.save_preview(preview.app, preview.number, preview.to_json())
            self._unsaved.discard(key)
        except Exception as exc:
            self._unsaved.add(key)
            self._log.warning("preview not stored", app=preview.app, number=preview.number,
                              error=f"{type(exc).__name__}: {exc}")

    def _forget(self, app: str, number: int) -> bool:
        """Delete the stored preview; whether there was one."""
        self._unsaved.discard((app, number))
        if self._store is None:
            return False
        try:
            return self._store.delete_preview(app, number)
        except Exception as exc:
            self._log.warning("stored preview not deleted", app=app, number=number,
                              error=f"{type(exc).__name__}: {exc}")
            return False

    # ------------------------------------------------------------------ intake
    def _queue_of(self) -> asyncio.Queue[tuple[str, int]]:
        if self._queue is None:  # created inside the running loop
            self._queue = asyncio.Queue()
        return self._queue

    def apps_for(self, repo: str, base_ref: str, provider: str = "github") -> list[str]:
        """Apps of `provider` following `base_ref` of `repo` (the PR's base) whose previews can be posted."""
        ref = f"refs/heads/{base_ref}"
        return [name for name, r in self._reconcilers.items()
                if (r.app.source.repo_full_name or "").lower() == repo.lower() and r.app.source.ref == ref
                and (r.app.source.provider or "github") == provider]

    def receive(self, payload: Mapping[str, Any]) -> Verdict:
        """A verified `pull_request` delivery: queue, drop or ignore it, at once (the plan runs later)."""
        try:
            event = PullRequestEvent.from_payload(payload)
        except ValueError as exc:
            return Verdict(400, "bad-request", {"error": str(exc)})
        return self.submit(event)

    def submit(self, event: PullRequestEvent) -> Verdict:
        apps = self.apps_for(event.repo, event.base_ref, event.provider)
        if not apps:
            return Verdict(202, "ignored", {"result": "ignored",
                                            "reason": f"no app follows {event.repo}@{event.base_ref}"})
        if event.action == "closed":
            dropped = [app for app in apps if self.drop(app, event.number)]
            return Verdict(202, "accepted", {"result": "preview dropped", "apps": dropped})
        if event.action not in PLANNED_ACTIONS:
            return Verdict(202, "ignored", {"result": "ignored", "reason": f"action {event.action} changes no plan"})
        if event.is_fork and not self._forks:
            self._log.info("fork pull request not planned (PREVIEW_FORKS=false)", number=event.number,
                           head_repo=event.head_repo)
            return Verdict(202, "ignored", {"result": "ignored",
                                            "reason": "pull request from a fork; set PREVIEW_FORKS=true to plan it"})
        for app in apps:
            self._enqueue(app, event)
        return Verdict(202, "accepted", {"result": "preview queued", "apps": apps})

    def _enqueue(self, app: str, event: PullRequestEvent) -> None:
        key = (app, event.number)
        if key not in self._previews:
            self._previews[key] = Preview(app, event.number, event.head_sha, event.is_fork,
                                          provider=event.provider)
            self._unsaved.add(key)
        fresh = key not in self._pending
        self._pending[key] = event  # the newest head wins
        self._idle.clear()
        if fresh:
            self._queue_of().put_nowait(key)

    def drop(self, app: str, number: int) -> bool:
        """A closed pull request: no preview any more (its comment stays on the PR as the last word)."""
        self._pending.pop((app, number), None)
        self._last_run.pop((app, number), None)
        stored = self._forget(app, number)
        return self._previews.pop((app, number), None) is not None or stored

    def previews(self, app: str) -> list[Preview]:
        """The app's previews as every replica shows them: the planned ones from the store, and this process's
        own that are queued or that the store refused (without a store: this process's own)."""
        own = {p.number: p for p in self._previews.values() if p.app == app}
        if self._store is None:
            return sorted(own.values(), key=lambda p: p.number)
        shown = {preview.number: preview for preview in self._stored(app)}
        for number, preview in own.items():
            if (app, number) in self._unsaved:  # newer than the store's; one saved and gone was dropped elsewhere
                shown[number] = preview
        return sorted(shown.values(), key=lambda p: p.number)

    def preview(self, app: str, number: int) -> Preview | None:
        return next((p for p in self.previews(app) if p.number == number), None)

    # ------------------------------------------------------------------ freshness (a Reporter)
    async def started(self, app: AppConfig, revision: str, trigger: Trigger) -> None:
        return None

    async def finished(self, app: AppConfig, result: SyncResult, commit: CommitInfo | None) -> None:
        """A sync that changed the target makes every open preview of the app stale: plan them again."""
        if result.result is not Result.SYNCED:
            return
        repo = self._reconcilers[app.name].app.source.repo_full_name or ""
        for preview in self.previews(app.name):  # another replica's too (a shared store): this one deployed
            self._log.info("re-planning preview: the live target changed", app=app.name, number=preview.number)
            self._previews.setdefault((app.name, preview.number), preview)  # its comment id, for the edit
            self._enqueue(app.name, PullRequestEvent(repo, preview.number, "refresh", "", preview.head_sha, "",
                                                     preview.is_fork, app.source.provider or "github"))

    # ------------------------------------------------------------------ the queue
    async def run(self) -> None:
        """The preview task: one plan at a time, never on an app's worker."""
        queue = self._queue_of()
        while True:
            if not self._pending:
                self._idle.set()
            key = await queue.get()
            wait = self._last_run.get(key, -1e9) + self._min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # events arriving meanwhile replace the pending one
            event = self._pending.pop(key, None)
            if event is None or key not in self._previews:
                continue  # dropped (closed) meanwhile
            self._last_run[key] = time.monotonic()
            try:
                await self._preview(key[0], event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a preview must not stop the others (or the service)
                self._log.exception("preview failed", app=key[0], number=key[1])

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued (tests, benchmarks)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _current(self, app: str, event: PullRequestEvent) -> OpenPull | None:
        """The pull request as GitHub has it now (a delivery may be late), once its test merge is known."""
        client = self._clients.get(app)
        if client is None:
            return None
        pull = await client.get(event.number)
        for delay in self._merge_wait:
            if pull.state != "open" or pull.mergeable is not None:
                break
            await asyncio.sleep(delay)  # GitHub is still computing refs/pull/N/merge
            pull = await client.get(event.number)
        return pull

    async def _preview(self, app: str, event: PullRequestEvent) -> None:
        key = (app, event.number)
        preview = self._previews[key]
        head = event.head_sha
        try:
            pull = await self._current(app, event)
        except AutodeployerError as exc:
            pull = None
            self._log.warning("pull request not read; planning the delivery's head", app=app, number=event.number,
                              error=str(exc))
        if pull is not None:
            if pull.state != "open":
                self.drop(app, event.number)
                return
            head = pull.head_sha or head
        started = time.perf_counter()
        report, preview.note = await self._plan_request(app, event.number, pull)
        self._record(preview, report, head, time.perf_counter() - started)
        if self._previews.get(key) is not preview:
            return  # closed while it was planned: nothing more to say on the PR
        await self._publish(app, preview)
        preview.published_at = time.time()
        self._save(preview)

    async def _plan_request(self, app: str, number: int, pull: OpenPull | None) -> tuple[PlanReport, str | None]:
        """The plan of the host's test merge; on a host that offers it (GitLab), the plan of the head alone
        when there is no test merge (the request conflicts with its base, or the ref is missing), with a
        note saying so. The note is None when the merge result was planned."""
        client = self._clients.get(app)
        merge_ref = client.merge_ref(number) if client is not None else f"refs/pull/{number}/merge"
        head_ref = client.head_ref(number) if client is not None else None
        if head_ref is not None and not getattr(client, "test_merge", True):  # Gitea: no merge ref at all
            return await self._plan(app, number, head_ref, None), _NO_TEST_MERGE.format(host="Gitea")
        if head_ref is not None and pull is not None and pull.mergeable is False:
            return await self._plan(app, number, head_ref, None), _HEAD_ALONE.format(why="conflicts with its target")
        report = await self._plan(app, number, merge_ref, pull.merge_sha if pull is not None else None)
        if head_ref is None or report.reason is not Reason.SOURCE_UNAVAILABLE:
            return report, None
        self._log.info("no test merge to plan; planning the head alone", app=app, number=number,
                       error=report.reasons[0] if report.reasons else None)
        return await self._plan(app, number, head_ref, None), _HEAD_ALONE.format(why="has no merge ref (yet)")

    async def _plan(self, app: str, number: int, ref: str, merge_sha: str | None) -> PlanReport:
        """The plan of `ref`; when the ref still names an older test merge than the one the API reported
        (GitHub updates it asynchronously), fetched again after a short wait."""
        report = await plan_revision(self._reconcilers[app], ref, into=f"refs/autodeployer/pull/{number}", pull=True)
        for delay in self._merge_wait:
            if not merge_sha or not report.revision or report.revision == merge_sha:
                break
            await asyncio.sleep(delay)
            report = await plan_revision(self._reconcilers[app], ref, into=f"refs/autodeployer/pull/{number}",
                                         pull=True)
        return report

    def _record(self, preview: Preview, report: PlanReport, head: str, duration: float) -> None:
        """Everything shown (comment, status, page, API) passes the app's redactor, as history rows do."""
        self._unsaved.add((preview.app, preview.number))  # shown from here until it is stored
        redact = self._reconcilers[preview.app].redact
        preview.head_sha, preview.revision, preview.live_revision = head, report.revision, report.live_revision
        preview.summary, preview.exit_code = redact(report.summary()), report.exit_code
        preview.state = "failure" if report.reasons or report.plan is None else "success"
        preview.reason = redact(report.first_reason) if report.first_reason else None
        preview.plan_text = redact(report.plan.render() if report.plan is not None else "\n".join(report.reasons))
        preview.problems = [redact(p) for p in report.problems]
        preview.planned_at, preview.duration = time.time(), duration
        self._log.info("preview planned", app=preview.app, number=preview.number, head=head[:12],
                       state=preview.state, summary=preview.summary, duration_ms=round(duration * 1000, 1))

    # ------------------------------------------------------------------ telling GitHub
    def link(self, preview: Preview) -> str | None:
        if not self._public_url:
            return None
        return f"{self._public_url}/apps/{preview.app}/previews/{preview.number}"

    def comment_body(self, preview: Preview) -> str:
        return comment_markdown(preview, report_markdown(preview, self.link(preview)))

    async def _publish(self, app: str, preview: Preview) -> None:
        client = self._clients.get(app)
        if client is None:
            preview.comment_error = preview.status_error = "no API access to the Git host for this app (its token)"
            return
        preview.comment_error = await self._upsert_comment(client, preview)
        preview.status_error = await self._post_status(client, preview)

    async def _upsert_comment(self, client: ReviewsClient, preview: Preview) -> str | None:
        """One comment per app and PR: edited in place, found by its marker when not known yet."""
        body = self.comment_body(preview)
        try:
            if preview.comment_id is None:
                preview.comment_id = await client.find_comment(preview.number, marker(preview.app))
            if preview.comment_id is not None and await client.update_comment(preview.number, preview.comment_id,
                                                                               body):
                return None
            preview.comment_id = await client.create_comment(preview.number, body)
            return None
        except AutodeployerError as exc:
            self._log.warning("preview comment not posted", app=preview.app, number=preview.number, error=str(exc))
            return str(exc)

    async def _post_status(self, client: ReviewsClient, preview: Preview) -> str | None:
        description = preview.summary if preview.state == "success" else f"would be refused: {preview.reason}"
        try:
            await client.create_status(preview.head_sha, preview.state, f"autodeployer/{preview.app}/plan",
                                       description, self.link(preview))
            return None
        except AutodeployerError as exc:
            self._log.warning("preview status not posted", app=preview.app, number=preview.number, error=str(exc))
            return str(exc)

    # ------------------------------------------------------------------ polling fallback
    async def poll(self, interval: float) -> None:
        """With webhooks off: list open pull requests every `interval` seconds with If-None-Match, so an
        idle repository costs 304s (free of rate limit); new heads are queued, vanished PRs dropped."""
        etags: dict[tuple[str, str], str | None] = {}
        while True:
            for app, reconciler in self._reconcilers.items():
                client = self._clients.get(app)
                if client is None or not reconciler.app.source.ref.startswith("refs/heads/"):
                    continue  # an app following a tag has no pull requests
                await self._poll_app(app, client, reconciler.app.source.ref.removeprefix("refs/heads/"), etags)
            await asyncio.sleep(interval)

    async def _poll_app(self, app: str, client: ReviewsClient, base: str,
                        etags: dict[tuple[str, str], str | None]) -> None:
        key = (app, base)
        try:
            pulls, etags[key] = await client.list_open(base, etags.get(key))
        except AutodeployerError as exc:
            self._log.warning("open pull requests not listed", app=app, error=str(exc))
            return
        except (KeyError, TypeError, ValueError) as exc:  # an answer of an unexpected shape: the loop goes on
            self._log.warning("open pull requests not understood", app=app, error=f"{type(exc).__name__}: {exc}")
            return
        if pulls is None:
            return
        numbers = {p.number for p in pulls}
        shown = {p.number: p for p in self.previews(app)}
        for number in shown.keys() - numbers:
            self.drop(app, number)
        for pull in pulls:
            known = self._previews.get((app, pull.number)) or shown.get(pull.number)
            if known is None or known.head_sha != pull.head_sha:
                self.submit(PullRequestEvent.from_pull(client.repo, pull, "synchronize" if known else "opened",
                                                       client.provider))


def report_markdown(preview: Preview, link: str | None) -> str:
    """The plan part of the comment, shaped like `autodeployer plan --format markdown`, from the preview's
    recorded plan text (so the comment, the API and the status page show the same thing)."""
    lines = [f"**{preview.app}**: {preview.summary} at `{preview.revision[:12] or '?'}`"]
    if preview.state == "success" and preview.plan_text:
        # The plan's diff lines are indented under their headline; GitHub colours a `diff` fence by the
        # first character of a line, so they go to the margin here.
        body = "\n".join(line[4:] if line.startswith("    ") else line for line in preview.plan_text.splitlines())
        cut = len(body) > COMMENT_DIFF_LIMIT
        body = body[:COMMENT_DIFF_LIMIT]
        fence = _fence(body)  # the PR's content must not be able to close the block and write markdown
        lines += ["", f"<details><summary>{preview.app}: {html.escape(preview.summary)}</summary>", "",
                  f"{fence}diff", body, fence]
        if cut:
            lines.append(f"(truncated{'; full plan: ' + link if link else ''})")
        lines.append("</details>")
    elif preview.state == "failure":
        lines += [""] + [f"- {_code(problem)}" for problem in preview.problems[:MAX_PROBLEMS]]
        if len(preview.problems) > MAX_PROBLEMS:
            lines.append(f"- … {len(preview.problems) - MAX_PROBLEMS} more{': ' + link if link else ''}")
    return "\n".join(lines)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text` (CommonMark closes only on one as long)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _code(text: str) -> str:
    """Inline code that any backticks in `text` cannot end early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    return f"{ticks} {text} {ticks}" if longest else f"`{text}`"


def comment_markdown(preview: Preview, plan_part: str) -> str:
    live = (preview.live_revision or "")[:12] or "nothing deployed yet"
    verdict = "deployable" if preview.state == "success" else "would be refused"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(preview.planned_at or time.time()))
    what = f"Head `{preview.head_sha[:12]}` alone" if preview.note else f"Merge of `{preview.head_sha[:12]}`"
    note = ["", f"> {preview.note}"] if preview.note else []
    return "\n".join([
        marker(preview.app),
        f"### autodeployer plan for `{preview.app}`: {verdict}",
        *note,
        "",
        plan_part,
        "",
        f"<sub>{what} planned against live revision `{live}` at {when}.</sub>",
    ])




def preview_service(runtime: Runtime) -> PreviewService:
    """The preview service of a runtime: its reconcilers, one host client per app (GitHub's, or GitLab's
    merge requests), and told about every sync (so a deploy re-plans the app's open previews)."""
    settings = runtime.config.service
    clients: dict[str, ReviewsClient | None] = {}
    for name, reconciler in runtime.reconcilers.items():
        clients[name] = reviews_client(reconciler.app, runtime)
    service = PreviewService(runtime.reconcilers, clients, forks=settings.preview_forks,
                             public_url=settings.public_url, store=runtime.store)
    service.load()
    for reconciler in runtime.reconcilers.values():
        reconciler.reporters.append(service)
    return service


def reviews_client(app: AppConfig, runtime: Runtime) -> ReviewsClient | None:
    """The app's host client for previews: GitLab's merge requests, else GitHub's pull requests (None
    without API access; Gitea and Bitbucket Server through `_other_reviews_client`)."""
    if app.source.provider == "gitlab":
        host = provider_client_for(app.source, runtime.http)
        return GitLabReviewsClient(host) if isinstance(host, GitLabClient) else None
    if app.source.provider in ("gitea", "bitbucket"):
        return _other_reviews_client(app, runtime)
    if app.source.provider not in (None, "github"):
        return None
    client = client_for(app, runtime.http)
    return PullRequestsClient(client) if client is not None else None


def _other_reviews_client(app: AppConfig, runtime: Runtime) -> ReviewsClient | None:
    """Gitea's / Forgejo's pull requests, or Bitbucket Server's (None without API access)."""
    host = provider_client_for(app.source, runtime.http)
    if isinstance(host, GiteaClient):
        return GiteaReviewsClient(host)
    if isinstance(host, BitbucketServerClient):
        return BitbucketReviewsClient(host)
    return None


Job = Callable[[], Coroutine[Any, Any, None]]


def preview_jobs(service: PreviewService, runtime: Runtime, *, webhooks: bool) -> list[Job]:
    """The background jobs: the preview queue, and the poll of open pull requests when webhooks are off."""
    jobs: list[Job] = [service.run]
    if not webhooks:
        interval = min((r.app.policy.interval for r in runtime.reconcilers.values()), default=60.0)

        async def poll() -> None:
            await service.poll(interval)

        jobs.append(poll)
    return jobs
