"""The status page: server-rendered HTML for people, built only from the API's status and history rows.

Those rows never hold a secret, so neither can the page. Templates live in ``web/templates`` and are
rendered with autoescaping on; CSS and the refresh script are inline, so the page needs no build step
and no external asset (it is often opened on machines without internet access).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from ..errors import StoreUnavailable
from ..model import Reason, Result, Status
from ..status import history_row
from ..store import HistoryRow
from .api import Api

REFRESH_SECONDS = 5
PAGE_HISTORY = 30  # syncs shown on an app page (the API serves more)
MAX_HISTORY = 200
MAX_DIFF_LINES = 2000  # per sync; the API has the full diff
OPEN_DIFFS = 3  # the newest diffs are expanded, older ones folded
MAX_PROBLEMS = 5  # problems, and warnings, per app on the overview
# Targets whose last sync may have left warnings that stay true until someone acts ("would prune"
# an app that is no longer in Git): the overview reads their latest history row even when they are
# in sync. Other apps' rows are read only when they failed, so the overview of hundreds of synced
# apps costs no query per app.
STANDING_WARNINGS = frozenset({"marathon"})

# Badge texts of app statuses and of history results, both spelled once, in model.py.
BADGES = {**{r.value: r.label for r in Result}, **{st.value: st.label for st in Status}}
TROUBLE = frozenset(st.value for st in Status if st.trouble)  # statuses whose error and problems are shown
_FAILED_RESULTS = (Result.FAILED.value, Result.REFUSED.value)


# --------------------------------------------------------------------------- formatting
def short_sha(sha: str | None) -> str:
    return sha[:7] if sha else ""


def reason_label(value: str | None) -> str:
    """A stored Reason as people read it (a value this version does not know, as it is)."""
    reason = Reason.parse(value)
    return reason.label if reason else value or ""


def absolute_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else ""


def relative_time(ts: float | None, now: float) -> str:
    """'12 s ago' / 'in 3 min': rendered on the server, fresh at every refresh."""
    if ts is None:
        return "never"
    delta = now - ts
    span = abs(delta)
    if span < 1:
        return "now"
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (float("inf"), "d", 86400)):
        if span < limit:
            amount = f"{int(span // size)} {unit}"
            return f"{amount} ago" if delta > 0 else f"in {amount}"
    return ""  # unreachable


def diff_class(line: str) -> str:
    """CSS class of one line of Plan.render(): entity headlines unindented, unified diffs indented."""
    if not line.startswith("    "):
        return {"+": "head add", "-": "head del", "~": "head chg"}.get(line[:1], "head")
    body = line[4:]
    if body.startswith(("+++", "---")):
        return "file"
    if body.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(body[:1], "ctx")


def diff_lines(diff: str) -> tuple[list[tuple[str, str]], int]:
    """(class, text) pairs for the first MAX_DIFF_LINES lines, and how many lines were left out."""
    lines = diff.splitlines()
    shown = [(diff_class(line), line) for line in lines[:MAX_DIFF_LINES]]
    return shown, max(0, len(lines) - MAX_DIFF_LINES)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("autodeployer.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        short_sha=short_sha, absolute=absolute_time, iso=iso_time, duration=duration,
        badge=lambda status: BADGES.get(status or "pending", status),
        reason=reason_label,
    )
    # The templates ask these instead of spelling statuses and results themselves.
    env.globals.update(trouble_statuses=TROUBLE, in_sync=(Result.SYNCED.value, Result.NO_CHANGE.value),
                       synced=Status.SYNCED.value)
    return env


# --------------------------------------------------------------------------- views
def _history_view(raw: dict[str, Any], index: int) -> dict[str, Any]:
    lines, hidden = diff_lines(raw.get("diff") or "")
    commit = (raw.get("details") or {}).get("commit") or {}
    return {**raw, "diff_lines": lines, "diff_hidden": hidden, "commit": commit, "open": index < OPEN_DIFFS}


def _limit(request: Request) -> int:
    try:
        return min(MAX_HISTORY, max(1, int(request.query_params.get("limit", PAGE_HISTORY))))
    except ValueError:
        return PAGE_HISTORY


def _counts(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return sorted(counts.items())


def trouble_notes(row: dict[str, Any], latest: HistoryRow | None) -> dict[str, Any]:
    """The headline of a failed or refused app, the rest of its problems, and the latest warnings.

    A refusal's error only says that the commit is not deployable; its first problem says where
    (file, entity, line), so that becomes the headline and the error is left out."""
    problems = list(latest.problems) if latest is not None and row["status"] in TROUBLE else []
    warnings = list(latest.warnings) if latest is not None else []
    headline = row.get("last_error") if row["status"] in TROUBLE else None
    if row["status"] == Status.REFUSED and problems:
        headline = problems.pop(0)
    return {
        "headline": headline,
        "refused": row["status"] == Status.REFUSED and headline is not None,
        "problems": problems[:MAX_PROBLEMS],
        "more_problems": max(0, len(problems) - MAX_PROBLEMS),
        "warnings": warnings[:MAX_PROBLEMS],
        "more_warnings": max(0, len(warnings) - MAX_PROBLEMS),
    }


class Pages:
    """Renders `/` and `/apps/{app}`; each response carries its own CSP nonce for the inline script."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.env = make_environment()

    def _render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """Every page also gets `coordination` (the /api/replicas view: owners' heartbeats, and why this
        replica is not applying)."""
        nonce = secrets.token_urlsafe(16)
        now = time.time()
        html = self.env.get_template(template).render(
            nonce=nonce, now=now, ago=lambda ts: relative_time(ts, now), refresh=REFRESH_SECONDS,
            coordination=self.api.coordination(), **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=_headers(nonce))

    async def index(self, request: Request) -> HTMLResponse:
        rows = self.api.rows()
        notes = {row["name"]: self._notes(row) for row in rows}
        return self._render("index.html", apps=rows, counts=_counts(rows), notes=notes)

    def _latest(self, name: str) -> HistoryRow | None:
        """The app's newest finished attempt (an attempt in flight has no problems or warnings yet)."""
        try:
            rows = self.api.store.history(name, 2)
        except StoreUnavailable:  # a shared store out of reach: the overview still shows the last known state
            return None
        return next((r for r in rows if r.result != Result.RUNNING), None)

    def _notes(self, row: dict[str, Any]) -> dict[str, Any]:
        """What the overview says beyond the badge: why a failed or refused app is stuck, and the warnings
        of the last sync of a target whose warnings stand (e.g. apps that would be pruned)."""
        trouble = row["status"] in TROUBLE
        if not trouble and row["target"] not in STANDING_WARNINGS:
            return trouble_notes(row, None)
        latest = self._latest(row["name"])
        if latest is not None and trouble and latest.result not in _FAILED_RESULTS:
            latest = None  # the state and the newest row disagree (a newer attempt is being recorded)
        return trouble_notes(row, latest)

    async def app(self, request: Request) -> HTMLResponse:
        name = request.path_params["app"]
        row = next((r for r in self.api.rows() if r["name"] == name), None)
        if row is None:
            return self._render("missing.html", status_code=404, name=name)
        try:
            rows = self.api.store.history(name, _limit(request))
        except StoreUnavailable as exc:
            return self._render("app.html", app=row, history=[], history_error=str(exc),
                                notes=trouble_notes(row, None))
        latest = next((r for r in rows if r.result != Result.RUNNING), None)
        history = [history_row(h) for h in rows]
        return self._render("app.html", app=row, history=[_history_view(h, i) for i, h in enumerate(history)],
                            notes=trouble_notes(row, latest), previews=self._previews(name))

    def _previews(self, name: str) -> list[dict[str, Any]]:
        previews = self.api.previews
        return [p.to_json() for p in previews.previews(name)] if previews is not None else []

    async def preview(self, request: Request) -> HTMLResponse:
        """The full plan of one pull request's preview (the comment links here when it is cut)."""
        name, number = request.path_params["app"], request.path_params["number"]
        found = self.api.previews.preview(name, number) if self.api.previews is not None else None
        if found is None:
            return self._render("missing.html", status_code=404, name=f"{name} (no open preview #{number})")
        lines = [(diff_class(line), line) for line in found.plan_text.splitlines()]  # all of it: the full plan
        return self._render("preview.html", app=name, p=found.to_json(), diff_lines=lines)


def _headers(nonce: str) -> dict[str, str]:
    """No external loads, no framing; only our own inline script and same-origin refresh fetches."""
    return {
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
            f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def page_routes(api: Api) -> list[Route]:
    pages = Pages(api)
    return [
        Route("/", pages.index, methods=["GET"]),
        Route("/apps/{app}", pages.app, methods=["GET"]),
        Route("/apps/{app}/previews/{number:int}", pages.preview, methods=["GET"]),
    ]
