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
from .model import Plan
from .reconcile import Reconciler

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
            "changes": [] if plan is None else [
                {"action": c.action.value, "kind": c.kind, "id": c.id, "diff": c.diff} for c in plan.changes],
            "warnings": [] if plan is None else plan.warnings,
            "notices": [] if plan is None else plan.notices,
        }


async def _resolve(reconciler: Reconciler, revision: str | None) -> str:
    """A full sha for `revision`; the branch head when None. Names (branch, tag, refs/pull/N/merge)
    are fetched into a private ref so the mirror's branch ref is left as the reconcile knows it."""
    source = reconciler.source
    if revision is None:
        return await source.fetch(await source.head())
    if re.fullmatch(r"[0-9a-fA-F]{4,40}", revision):
        return await source.resolve(revision)
    await source.ensure_mirror()
    await source._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin", f"+{revision}:{_PLAN_REF}")
    done = await source._git("rev-parse", "--verify", f"{_PLAN_REF}^{{commit}}")
    return done.stdout.decode().strip()


async def plan_revision(reconciler: Reconciler, revision: str | None = None) -> PlanReport:
    """The plan of `revision` (default: the branch head) against the live target; writes nothing."""
    report = PlanReport(app=reconciler.app.name)
    try:
        report.live_revision = reconciler.store.get_state(reconciler.app.name).last_synced_revision
        report.revision = await _resolve(reconciler, revision)
        await reconciler._check_signatures(report.revision, reconciler.store.get_state(reconciler.app.name))
        tree = await reconciler.source.read(report.revision)
        planned = await reconciler._plan(tree, reconciler.store.get_state(reconciler.app.name), None)
        report.plan = reconciler._guard(planned.plan)
    except AutodeployerError as exc:
        report.reasons.append(str(exc))
    return report


def render_text(report: PlanReport) -> str:
    lines = [f"{report.app}: {report.summary()} at {report.revision[:12] or '?'}"]
    if report.plan is not None and not report.plan.empty:
        lines.append(report.plan.render())
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
