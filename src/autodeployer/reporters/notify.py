"""Notifications: a JSON POST to NOTIFY_URL when a sync fails, is refused, or recovers.

With NOTIFY_ON=all every applied sync is announced too. A Slack incoming-webhook URL gets a Slack
message instead of the plain JSON document. The reporter remembers, per app and in this process only,
the last result it saw and when it last sent each failure, so:

* the same failure (same app, event, revision and reason) is delivered at most once per
  NOTIFY_REPEAT seconds, however often the app retries (an undelivered one is tried again). The
  reason is the error's first line and the problems, with what changes from one attempt to the next
  masked (paths such as a command's temporary directory, ids, timings): a command that prints a new
  temporary path at every failure is still one failure, while a new revision or another reason is
  news;
* the first successful sync after a failure is announced as "recovered", and clears that memory, so a
  later failure is news again;
* after a restart (or when another replica takes the app over) the memory is empty: a failure that
  persists is announced once more, and a recovery from a failure only the previous process saw is
  not announced.

NOTIFY_URL is a secret (Slack puts its credential in the path), so it is never logged: log lines name
only its host. Delivery is one POST with a 5 s timeout; a failure is logged and never stops a sync.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config.loader import AppConfig, ServiceSettings
from ..logs import get_logger
from ..model import CommitInfo, HealthNotice, Result, SyncResult, Trigger

TIMEOUT = 5.0
MAX_PROBLEMS = 20  # listed in one notification; the rest are counted
_SLACK_PATH = re.compile(r"^/services/[^/]+/[^/]+/[^/]+/?$")
#: What each result is to notifications: a failure (announced, under the result's name), a success (may
#: announce a recovery), or neither (a dry run, an attempt that has not ended): None.
HEALTH: dict[Result, str | None] = {
    Result.RUNNING: None, Result.SYNCED: "success", Result.NO_CHANGE: "success", Result.PLANNED: None,
    Result.REFUSED: "failure", Result.FAILED: "failure", Result.INTERRUPTED: None,
    Result.HELD: None,  # a policy at work, not a failure: the page, status and commit status say it
}
_FAILURES = tuple(r for r, health in HEALTH.items() if health == "failure")
_SUCCESSES = tuple(r for r, health in HEALTH.items() if health == "success")
#: Every event: a failing result's own name, "recovered", "applied". Its icon (Slack) and headline.
EVENTS: dict[str, tuple[str, str]] = {
    Result.FAILED.value: (":x:", "sync failed"),
    Result.REFUSED.value: (":no_entry:", "commit refused"),
    "recovered": (":white_check_mark:", "recovered: in sync again"),
    "applied": (":rocket:", "deployed: {summary}"),
    # health after deploy (rollout/): HealthNotice.event
    "degraded": (":warning:", "degraded after deploy"),
    "rolled-back": (":rewind:", "degraded after deploy, rolled back"),
    "rollback-failed": (":x:", "degraded after deploy, rollback failed"),
    "rollback-degraded": (":rotating_light:", "degraded after deploy, and so is the rollback"),
}


def is_slack(url: str) -> bool:
    """Slack incoming webhooks live on hooks.slack.com under /services/T.../B.../secret."""
    parts = urlsplit(url)
    return (parts.hostname or "").lower() == "hooks.slack.com" or bool(_SLACK_PATH.match(parts.path))


def event_for(result: Result, previous: Result | None, notify_on: str) -> str | None:
    """Which event a result is, given the app's previous result; None when nothing is to be said."""
    if result in _FAILURES:
        return result.value
    if result in _SUCCESSES and previous in _FAILURES:
        return "recovered"
    if result is Result.SYNCED and notify_on == "all":
        return "applied"
    return None


def payload(app: AppConfig, result: SyncResult, event: str, commit: CommitInfo | None,
            public_url: str | None) -> dict[str, Any]:
    """The JSON document: everything an on-call person needs, and no secret (results are redacted)."""
    finished = result.started_at + result.duration
    problems = [str(p) for p in result.problems]
    return {
        "app": app.name,
        "event": event,
        "result": result.result.value,
        "reason": result.reason.value if result.reason else None,
        "revision": result.revision,
        "trigger": result.trigger.value,
        "summary": result.summary,
        "error": result.error,
        "problems": problems,
        "commit_message": commit.message if commit else None,
        "commit_author": commit.author if commit else None,
        "target": app.target.kind,
        "branch": app.source.branch,
        "tag": app.source.tag,
        "url": f"{public_url}/apps/{app.name}" if public_url else None,
        "timestamp": datetime.fromtimestamp(finished or time.time(), UTC).isoformat(),
        "text": headline(app, result, event, commit),
    }


def health_payload(app: AppConfig, notice: HealthNotice, public_url: str | None) -> dict[str, Any]:
    """The same document as a sync's, for a health event: the evidence is the error, the bad revision
    the revision, and `rollback_to` where the app went back to."""
    sha = notice.revision[:7]
    back = f" to {notice.rollback_to[:7]}" if notice.rollback_to else ""
    return {
        "app": app.name, "event": notice.event, "result": "degraded", "reason": "health",
        "revision": notice.revision, "rollback_to": notice.rollback_to, "trigger": "health",
        "summary": notice.description, "error": notice.description + (f" ({notice.detail})" if notice.detail else ""),
        "problems": list(notice.evidence), "evidence": list(notice.evidence),
        "commit_message": None, "commit_author": None, "target": app.target.kind,
        "branch": app.source.branch, "tag": app.source.tag,
        "url": f"{public_url}/apps/{app.name}" if public_url else None,
        "timestamp": datetime.now(UTC).isoformat(),
        "text": f"{app.name}: {EVENTS[notice.event][1]} at {sha}{back}",
    }


def headline(app: AppConfig, result: SyncResult, event: str, commit: CommitInfo | None) -> str:
    sha = (result.revision or "")[:7]
    what = EVENTS[event][1].format(summary=result.summary)
    at = f" at {sha}" if sha else ""
    message = f" ({commit.message})" if commit and commit.message else ""
    return f"{app.name}: {what}{at}{message}"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(doc: dict[str, Any]) -> dict[str, Any]:
    """The same facts as Slack blocks; `text` is the fallback for notifications and old clients."""
    icon = EVENTS[doc["event"]][0]
    text = f"{icon} {_slack_escape(doc['text'])}"
    title = f"<{doc['url']}|{_slack_escape(doc['app'])}>" if doc["url"] else f"*{_slack_escape(doc['app'])}*"
    lines = [f"{icon} {title}: *{doc['event']}* ({_slack_escape(doc['result'])})"]
    if doc["error"]:
        lines.append(f"```{_slack_escape(doc['error'][:2500])}```")
    elif doc["summary"]:
        lines.append(_slack_escape(doc["summary"]))
    problems = doc["problems"][:MAX_PROBLEMS]
    if problems:
        lines.append("\n".join(f"• {_slack_escape(p)}" for p in problems))
        if len(doc["problems"]) > len(problems):
            lines.append(f"… and {len(doc['problems']) - len(problems)} more")
    context = [f"target {doc['target']}", f"branch {doc['branch']}", f"trigger {doc['trigger']}"]
    if doc["revision"]:
        context.insert(0, f"revision `{doc['revision'][:12]}`")
    if doc["commit_message"]:
        context.append(_slack_escape(doc["commit_message"]))
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)[:3000]}]},
        ],
    }


# Text that differs between two attempts failing for the same reason: masked out of the reason.
_VOLATILE = (
    (re.compile(r"\d{4}-\d\d-\d\d[T ][\d:.]+(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"(?<![\w.:/~])(?:~|\.{1,2})?(?:/[^\s/:'\"()\[\],;]+)+/?"), "<path>"),  # absolute paths
    (re.compile(r"\b[0-9a-f]{7,64}\b", re.IGNORECASE), "<id>"),  # revisions, temp suffixes, request ids
    (re.compile(r"\b\d+\.\d+\b"), "<n>"),  # durations, sizes
)


def _mask(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def failure_reason(result: SyncResult) -> str:
    """What identifies a failure beyond its app, result and revision: the error's first line (a
    command's output follows it) and the problems, with volatile text masked."""
    error = (result.error or "").strip()
    parts = [error.splitlines()[0] if error else ""]
    parts += sorted(str(problem).strip().split("\n", 1)[0] for problem in result.problems)
    return _mask("\n".join(parts))


FailureKey = tuple[str, str | None, str]  # (event, revision, reason); the app is the memory's owner


@dataclass
class _AppMemory:
    """What the reporter remembers about one app (in this process only)."""

    previous: Result | None = None
    sent: dict[FailureKey, float] = field(default_factory=dict)  # failure -> monotonic time of delivery


class NotifyReporter:
    """A Reporter that POSTs failed, refused, recovered (and, if asked, applied) syncs to NOTIFY_URL."""

    def __init__(self, http: httpx.AsyncClient, settings: ServiceSettings) -> None:
        if settings.notify_url is None:
            raise ValueError("NotifyReporter needs NOTIFY_URL")
        self._http = http
        self._url = settings.notify_url.get_secret_value()
        self._host = urlsplit(self._url).hostname or "?"
        self._slack = is_slack(self._url)
        self._notify_on = settings.notify_on
        self._repeat = settings.notify_repeat
        self._public_url = settings.public_url
        self._memory: dict[str, _AppMemory] = {}
        self._log = get_logger(component="notify")

    async def started(self, app: AppConfig, revision: str, trigger: Trigger) -> None:
        return None

    async def finished(self, app: AppConfig, result: SyncResult, commit: CommitInfo | None) -> None:
        memory = self._memory.setdefault(app.name, _AppMemory())
        if result.result not in (*_FAILURES, *_SUCCESSES):
            return  # planned (dry run), interrupted: neither news nor a change of health
        event = event_for(result.result, memory.previous, self._notify_on)
        memory.previous = result.result
        if event is None:
            return
        key: FailureKey = (event, result.revision, failure_reason(result))
        failure = result.result in _FAILURES
        if failure and self._repeated(memory, key, app.name):
            return
        if event == "recovered":
            memory.sent.clear()  # the incident is over; the same failure later is news again
        delivered = await self._deliver(app, payload(app, result, event, commit, self._public_url))
        if delivered and failure:
            memory.sent[key] = time.monotonic()  # an undelivered failure is tried again next time

    async def health(self, app: AppConfig, notice: HealthNotice) -> None:
        """A degraded deploy (and what was done about it): always news, sent once by its caller."""
        await self._deliver(app, health_payload(app, notice, self._public_url))

    def _repeated(self, memory: _AppMemory, key: FailureKey, app: str) -> bool:
        """True (and logged) when this failure was delivered less than NOTIFY_REPEAT seconds ago."""
        now = time.monotonic()
        memory.sent = {k: at for k, at in memory.sent.items() if now - at < self._repeat}  # forget expired
        if key not in memory.sent:
            return False
        self._log.info("notification not repeated", app=app, notify_event=key[0],
                       repeat_in=round(self._repeat - (now - memory.sent[key])))
        return True

    async def _deliver(self, app: AppConfig, doc: dict[str, Any]) -> bool:
        body = slack_message(doc) if self._slack else doc
        fields = {"app": app.name, "notify_event": doc["event"], "host": self._host}
        try:
            response = await self._http.post(self._url, json=body, timeout=TIMEOUT)
        except httpx.TimeoutException:
            self._log.warning("notification delivery failed", error=f"timed out after {TIMEOUT:g} s", **fields)
            return False
        except httpx.HTTPError as exc:  # the message may quote the URL: log the kind only
            self._log.warning("notification delivery failed", error=type(exc).__name__, **fields)
            return False
        if not response.is_success:
            self._log.warning("notification delivery failed", error=f"HTTP {response.status_code}", **fields)
            return False
        self._log.info("notification sent", **fields)
        return True
