"""Read-only plans of any revision against the live target (`autodeployer plan`, later PR previews).

A plan never writes to the target or the store and never takes the app lock: it resolves the
revision in the mirror (fetching a branch, tag or pull ref by name when missing), reads the tree,
runs the target's plan and the reconcile's guards, and returns a typed report."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import AutodeployerError
from .model import Plan, Reason
from .reconcile import Reconciler, reason_for

EXIT_NO_CHANGE, EXIT_CHANGES, EXIT_REFUSED = 0, 1, 2
_PLAN_REF = "refs/autodeployer/plan"


@dataclass
class PlanReport:
    """The outcome of planning one app at one revision."""

    app: str
    revision: str = ""
    live_revision: str | None = None
    plan: Plan | None = None
    reasons: list[str] = field(default_factory=list)
    reason: Reason | None = None  # the kind of the first reason (refused, source unavailable, ...)
    ref: str | None = None  # the name asked for (a branch, tag or pull ref), when not a sha
    command: dict[str, Any] | None = None  # the command target: what its deploy command would receive
    problems: list[str] = field(default_factory=list)  # what a refusal names: file, entity, message

    @property
    def first_reason(self) -> str | None:
        """One line for a status: the first problem (it names the file), else the first reason's first line."""
        if self.problems:
            return self.problems[0]
        return self.reasons[0].split("\n")[0] if self.reasons else None

    @property
    def exit_code(self) -> int:
        if self.reasons or self.plan is None:
            return EXIT_REFUSED
        return EXIT_NO_CHANGE if self.plan.empty else EXIT_CHANGES

    def summary(self) -> str:
        head = self.plan.summary() if self.plan is not None else "no plan"
        return f"{head}; refused: {'; '.join(self.reasons)}" if self.reasons else head

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "app": self.app, "revision": self.revision, "live_revision": self.live_revision,
            "exit_code": self.exit_code, "summary": self.summary(), "reasons": self.reasons,
            "reason": self.reason.value if self.reason else None, "ref": self.ref, "command": self.command,
            "problems": self.problems,
            "changes": [] if plan is None else [
                {"action": c.action.value, "kind": c.kind, "id": c.id, "diff": c.diff} for c in plan.changes],
            "warnings": [] if plan is None else plan.warnings,
            "notices": [] if plan is None else plan.notices,
        }


async def _resolve(reconciler: Reconciler, revision: str | None, into: str = _PLAN_REF) -> str:
    """A full sha for `revision`; the branch head when None. Names (branch, tag, refs/pull/N/merge)
    are fetched into the private ref `into` so the mirror's branch ref is left as the reconcile knows it."""
    source = reconciler.source
    if revision is None:
        return await source.fetch(await source.head())
    if re.fullmatch(r"[0-9a-fA-F]{4,40}", revision):
        return await source.resolve(revision)
    return await source.fetch_ref(revision, into)


async def plan_revision(reconciler: Reconciler, revision: str | None = None, *, into: str = _PLAN_REF,
                        pull: bool = False) -> PlanReport:
    """The plan of `revision` (default: the branch head) against the live target; writes nothing.

    `into`: the private ref a named revision is fetched into (previews use one per pull request, so two
    of them planned at once never move each other's ref). `pull`: the revision is a pull request's (its
    test merge, or its head): VERIFY_COMMITS checks the PR's own commits, not the unsigned merge."""
    report = PlanReport(app=reconciler.app.name)
    if revision is not None and not re.fullmatch(r"[0-9a-fA-F]{4,40}", revision):
        report.ref = revision
    try:
        report.live_revision = reconciler.store.get_state(reconciler.app.name).last_synced_revision
        report.revision = await _resolve(reconciler, revision, into)
        if pull and reconciler.signatures is not None:
            await reconciler.signatures.check_pull(reconciler.source.mirror, report.revision, report.live_revision)
        else:
            await reconciler.check_signatures(report.revision)
        tree = await reconciler.source.read(report.revision)
        report.plan = await reconciler.plan_tree(tree)
        if reconciler.app.target.kind == "command":
            report.command = await _command_input(reconciler, report)
    except AutodeployerError as exc:
        report.reasons.append(str(exc))
        report.reason = reason_for(exc)
        report.problems = [str(p) for p in getattr(exc, "problems", [])]
    return report


async def _command_input(reconciler: Reconciler, report: PlanReport) -> dict[str, Any]:
    """What the deploy command would receive: the revision, the followed ref and the paths under
    SYNC_ROOT that differ from the live revision. Nothing is exported and nothing is run."""
    live = report.live_revision
    paths = await reconciler.source.changed_paths(live, report.revision) if live else None
    return {"revision": report.revision, "ref": reconciler.app.source.ref, "changed_paths": paths,
            "runs": report.plan is not None and not report.plan.empty}


def render_text(report: PlanReport) -> str:
    lines = [f"{report.app}: {report.summary()} at {report.revision[:12] or '?'}"]
    if report.plan is not None and not report.plan.empty:
        lines.append(report.plan.render())
    if report.command is not None:
        paths = report.command["changed_paths"]
        shown = ", ".join(paths) if paths else "none" if paths is not None else "all (nothing live yet)"
        lines.append(f"deploy command would receive {report.command['revision'][:12]} of {report.command['ref']}; "
                     f"changed paths: {shown}")
    return "\n".join(lines)


def render_markdown(report: PlanReport, *, limit: int = 60000, link: str | None = None) -> str:
    """A summary line, then a collapsed block with the diff; beyond `limit` characters the diff is cut."""
    lines = [f"**{report.app}**: {report.summary()} at `{report.revision[:12] or '?'}`"]
    if report.plan is not None and not report.plan.empty:
        body = report.plan.render()
        cut = len(body) > limit
        body = body[:limit]
        lines += ["", f"<details><summary>{report.app}: {report.plan.summary()}</summary>", "", "```diff", body, "```"]
        if cut:
            lines.append(f"(truncated{'; full plan: ' + link if link else ''})")
        lines.append("</details>")
    return "\n".join(lines)


def render_json(reports: list[PlanReport]) -> str:
    return json.dumps({"apps": [r.to_json() for r in reports]}, indent=2, sort_keys=True)
